import { count, database, sql, text } from '../../config/parsers.js';
import { flag, list, value } from '../../config/options.js';
import { defineCommand } from '../command.js';
import { hookOptions, metricsFileOption, serverOptions, sourceOptions } from '../option-groups.js';
import { physicalRestoreOptions } from './restore-physical.js';

export const restoreOptions = {
  ...sourceOptions,
  ...serverOptions,
  targetDb: value('--target-db <name>', 'the database to create', database),
  replace: flag('--replace', 'if the target exists, keep it aside as <name>__before_<time> and put the restore in its place'),
  smoke: list('--smoke <sql>', 'query to run on the restored database; a failure fails the restore (repeatable)', sql),
  noOwner: flag('--no-owner', 'pg_restore --no-owner'),
  noPrivileges: flag('--no-privileges', 'pg_restore --no-privileges'),
  // No declared default (1): --into-existing refuses a --jobs that was set.
  jobs: value('--jobs <n>', 'parallel pg_restore jobs (spools the archive to a private temp file)', count(64)),
  spoolDir: value('--spool-dir <dir>', 'where to spool for --jobs (default: TMPDIR)', text),
  withGlobals: flag('--with-globals', "apply the backup's roles first (backups taken with --globals)"),
  output: value('--output <file>', 'write the decrypted archive to a file instead of restoring', text),
  intoExisting: value('--into-existing <db>', 'load a data-only backup (latest: the newest data-only one) into this existing database, which holds the schema: one transaction, materialized views refreshed', database),
  json: flag('--json', 'print the summary as JSON on stdout'),
  // Per run, not per configuration: command line only.
  table: list('--table <name>', 'restore only this table, view, sequence or foreign table (exact name, any schema; with its data, indexes, constraints, owned sequences); repeatable', text, { configurable: false }),
  schema: list('--schema <name>', 'restore only the objects of this schema (exact name); with --table, only tables in it; repeatable', text, { configurable: false }),
  excludeTable: list('--exclude-table <name>', 'leave out this table (exact name) and what depends on it; repeatable', text, { configurable: false }),
  listFile: value('--list-file <file>', 'restore only the entries of this pg_restore --list file (pg_restore -L), in archive order', text, { configurable: false }),
  downloadWhole: flag('--download-whole', 'a selective restore of a backup with an archive index downloads the whole backup anyway (checked end to end) instead of only the selected data'),
  sanitize: value('--sanitize <file.sql>', 'run this SQL (in one transaction of coffer\'s: no BEGIN/COMMIT in it) in the scratch database before the rename: masking, truncating, dropping; then the materialized views are refreshed; a failure fails the restore', text, { configurable: false }),
  ...physicalRestoreOptions,
  ...hookOptions,
};

export const restore = defineCommand({
  name: 'restore',
  summary: 'restore a backup into a fresh database (atomically), then run smoke checks',
  options: restoreOptions,
  run: async (values, ctx) => (await import('../run/restore.js')).runRestoreCommand(values, ctx),
});

export const verifyOptions = {
  ...sourceOptions,
  pgBin: value('--pg-bin <dir>', 'directory of pg_restore', text),
  pgRestoreCommand: value('--pg-restore-command <command>', 'command prefix to run pg_restore', text),
  json: flag('--json', 'print results as JSON on stdout'),
};

export const verify = defineCommand({
  name: 'verify',
  summary: 'download, check sha256, decrypt to the last byte and read the archive TOC',
  options: verifyOptions,
  run: async (values, ctx) => (await import('../run/restore.js')).runVerifyCommand(values, ctx),
});

export const drillOptions = {
  ...sourceOptions,
  ...serverOptions,
  smoke: list('--smoke <sql>', 'query to run on the restored database (repeatable)', sql),
  jobs: value('--jobs <n>', 'parallel pg_restore jobs', count(64), { default: '1' }),
  resultFile: value('--result-file <file>', 'also write the JSON result here', text),
  record: flag('--record', 'store the drill record in the repository (<database>/drills/), where status finds it to predict restore times (needs write access to that prefix)'),
  ...metricsFileOption("with the drill's time and result (not for a --file drill)"),
};

export const drill = defineCommand({
  name: 'drill',
  summary: 'restore drill: restore into a scratch database, check, record, drop',
  options: drillOptions,
  run: async (values, ctx) => (await import('../run/restore.js')).runDrillCommand(values, ctx),
});
