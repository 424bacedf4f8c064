import { cluster, compression, count, database, duration, objectLockMode, period, recipient, repository, size, text, tier, url } from '../../config/parsers.js';
import { flag, list, value } from '../../config/options.js';
import { defineCommand } from '../command.js';
import { DEFAULT_REPOSITORY, REPOSITORY, hookOptions, sourceSelectOptions, metricsFileOption, pgPassword, s3Options, signingKeyOption } from '../option-groups.js';
import { DEFAULT_KEEP } from '../../retention/policy.js';

export const options = {
  to: value('--to <repository>', 's3://bucket/prefix, file:///path or a directory', repository, { default: DEFAULT_REPOSITORY, aliases: [REPOSITORY] }),
  db: list('--db <name>', 'database to back up (repeatable; default PGDATABASE)', database),
  dbname: value('--dbname <conninfo>', 'libpq connection string or URI (password is never put on a command line)', text),
  pgPassword,
  recipient: list('--recipient <age1…>', 'age recipient (public key); repeatable', recipient, { aliases: [{ key: 'recipients', env: 'COFFER_RECIPIENTS' }] }),
  recipientsFile: list('--recipients-file <file>', 'file of age recipients, one per line; repeatable', text),
  ...signingKeyOption,
  label: value('--label <text>', 'label recorded in the manifest (implies --tier manual)', text),
  tier: value('--tier <tier>', 'daily, weekly, monthly or manual (default: decided from what exists)', tier),
  compress: value('--compress <method>', 'zstd[:level] (default zstd:1), gzip[:level] or none', compression, { default: 'zstd:1' }),
  partSize: value('--part-size <size>', 'multipart part size (default: from the database size)', size),
  maxParts: value('--max-parts <n>', 'provider limit on multipart parts (default 10000)', count(10_000), { default: '10000' }),
  schemaOnly: flag('--schema-only', 'plain SQL, schema only'),
  dataOnly: flag('--data-only', 'plain SQL, data only'),
  disableTriggers: flag('--disable-triggers', 'with --data-only: pg_dump --disable-triggers, so the data loads despite foreign-key cycles (loaded by a superuser)'),
  excludeTableData: list('--exclude-table-data <pattern>', 'pg_dump --exclude-table-data (repeatable)', text),
  globals: flag('--globals', 'also store pg_dumpall --globals-only (roles, tablespaces)'),
  noIndex: flag('--no-index', 'full backups with zstd: no archive index (compress with zstd -T0): selective restores then download the whole backup'),
  pgBin: value('--pg-bin <dir>', 'directory of pg_dump/psql', text),
  pgDumpCommand: value('--pg-dump-command <command>', 'command prefix to run pg_dump (no shell), e.g. "docker compose exec -T db pg_dump"', text),
  pgDumpallCommand: value('--pg-dumpall-command <command>', 'command prefix to run pg_dumpall', text),
  psqlCommand: value('--psql-command <command>', 'command prefix to run psql', text),
  json: flag('--json', 'print the manifests as JSON on stdout'),
  objectLockMode: value('--object-lock-mode <mode>', "write each object with S3 object-lock retention (governance or compliance) for its tier's keep period", objectLockMode),
  keepDaily: value('--keep-daily <period>', 'retention of daily backups (object lock), e.g. 14d', period, { default: DEFAULT_KEEP.daily }),
  keepWeekly: value('--keep-weekly <period>', 'retention of weekly backups (object lock), e.g. 8w', period, { default: DEFAULT_KEEP.weekly }),
  keepMonthly: value('--keep-monthly <period>', 'retention of monthly backups (object lock), e.g. 12mo', period, { default: DEFAULT_KEEP.monthly }),
  keepManual: value('--keep-manual <period>', 'retention of manual backups (object lock), e.g. 90d', period, { default: DEFAULT_KEEP.manual }),
  allDatabases: flag('--all-databases', 'back up every connectable non-template database (postgres only if it holds user objects)'),
  parallel: value('--parallel <n>', 'back up this many databases at once (with several --db or --all-databases; each has its own lock and manifest)', count(64), { default: '1' }),
  wait: value('--wait <duration>', 'if another run holds the lock, wait up to this long (default: exit 6 at once)', duration),
  lockDir: value('--lock-dir <dir>', 'host lock directory (default $XDG_RUNTIME_DIR/coffer, /run/lock/coffer-<uid> or TMPDIR/coffer-locks-<uid>)', text),
  ...metricsFileOption('after every run'),
  notify: value('--notify <url>', 'healthchecks.io-style ping URL: URL/start, URL on success, URL/fail on failure', url),
  webhook: value('--webhook <url>', 'POST a JSON summary here per database, on success and on failure', url),
  physical: flag('--physical', 'online physical backup of the whole cluster: pg_basebackup -Ft -X fetch (needs --cluster; the role needs REPLICATION)'),
  cluster: value('--cluster <name>', 'name of the cluster whose physical backups these are (--physical, --data-dir, --tar-command)', cluster),
  dataDir: value('--data-dir <dir>', "archive a STOPPED cluster's data directory (or a Docker volume's mount point) with tar", text),
  tarCommand: value('--tar-command <command>', 'command writing the tar of a stopped data directory to stdout, instead of local tar (no shell), e.g. "docker run --rm -v db_data:/data alpine tar -C /data -cf - ."', text),
  pgBasebackupCommand: value('--pg-basebackup-command <command>', 'command prefix to run pg_basebackup (no shell)', text),
  fastCheckpoint: flag('--fast-checkpoint', 'with --physical: start the base backup at once (an immediate checkpoint) instead of after a spread one'),
  attach: list('--attach <file>', 'with a physical backup: also store this file, encrypted (repeatable), e.g. a migration script', text),
  ...s3Options,
  ...hookOptions,
  ...sourceSelectOptions,
};

/**
 * `coffer backup`: one backup per database, each under its own lock (host lock file plus a
 * PostgreSQL advisory lock). A database that fails does not stop the others; the run then exits
 * with the first failure's code. Metrics, pings and webhooks report every run, success or not.
 */
export const backup = defineCommand({
  name: 'backup',
  summary: 'dump one or more databases, compress, encrypt and store them',
  options,
  run: async (values, ctx, config) => (await import('../run/backup.js')).runBackupCommand(values, ctx, config),
});
