import { accessSync, constants as fsConstants } from 'node:fs';
import * as path from 'node:path';
import { hostname } from 'node:os';
import { CofferError, InterruptedError, UsageError, formatErrorLine } from '../../errors.js';
import { acquireBackupLock, defaultLockDir, type HeldLock } from '../../ops/lock.js';
import { listAllDatabases } from '../../ops/all-databases.js';
import { writeBackupMetrics, type BackupRunMetrics } from '../../observe/metrics.js';
import { Notifier } from '../../observe/notify.js';
import { readRecipientsFile } from '../../crypto/age.js';
import { runBackup, type BackupResult } from '../../pipeline/backup.js';
import type { DumpKind } from '../../pg/pg-dump.js';
import { parseConnectionString, databaseOf } from '../../pg/connection.js';
import { resolvePgTools } from '../../pg/tools.js';
import { openStore } from '../../store/open.js';
import { Progress } from '../../observe/progress.js';
import { formatBytes } from '../../observe/log.js';
import { checkDatabaseName, resolveS3Settings } from '../../config/settings.js';
import { cluster, compression, count, database, duration, objectLockMode, period, recipient, repository, size, text, tier, url } from '../../config/parsers.js';
import { flag, list, value, type Values } from '../../config/options.js';
import type { CliContext } from '../context.js';
import { isPhysicalBackup, runPhysicalBackupCommand } from './backup-physical.js';
import type { PhysicalBackupResult } from '../../physical/backup.js';
import { defineCommand } from '../command.js';
import { DEFAULT_REPOSITORY, REPOSITORY, pgPassword, retentionPolicy, s3Options } from '../option-groups.js';
import type { Tier } from '../../catalog/layout.js';
import { DEFAULT_KEEP, retainUntil } from '../../retention/policy.js';

const options = {
  to: value('--to <repository>', 's3://bucket/prefix, file:///path or a directory', repository, { default: DEFAULT_REPOSITORY, aliases: [REPOSITORY] }),
  db: list('--db <name>', 'database to back up (repeatable; default PGDATABASE)', database),
  dbname: value('--dbname <conninfo>', 'libpq connection string or URI (password is never put on a command line)', text),
  pgPassword,
  recipient: list('--recipient <age1…>', 'age recipient (public key); repeatable', recipient, { aliases: [{ key: 'recipients', env: 'COFFER_RECIPIENTS' }] }),
  recipientsFile: list('--recipients-file <file>', 'file of age recipients, one per line; repeatable', text),
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
  wait: value('--wait <duration>', 'if another run holds the lock, wait up to this long (default: exit 6 at once)', duration),
  lockDir: value('--lock-dir <dir>', 'host lock directory (default $XDG_RUNTIME_DIR/coffer, /run/lock/coffer or TMPDIR/coffer-locks-<uid>)', text),
  metricsFile: value('--metrics-file <path>', 'write Prometheus textfile-collector metrics here after every run', text),
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
};

/** What happened to one database of the run. */
interface Outcome {
  database: string;
  result?: BackupResult;
  error?: unknown;
  durationMs: number;
}

/**
 * `coffer backup`: one backup per database, each under its own lock (host lock file plus a
 * PostgreSQL advisory lock). A database that fails does not stop the others; the run then exits
 * with the first failure's code. Metrics, pings and webhooks report every run, success or not.
 */
export const backup = defineCommand({
  name: 'backup',
  summary: 'dump one or more databases, compress, encrypt and store them',
  options,
  run: runBackupCommand,
});

async function runBackupCommand(flags: Values<typeof options>, ctx: CliContext): Promise<BackupResult[] | PhysicalBackupResult[]> {
  const env = ctx.env;
  // Everything is validated before touching the database or the repository.
  const s3 = resolveS3Settings(flags, env);
  const recipients = [...flags.recipient];
  for (const f of flags.recipientsFile) {
    recipients.push(...(await readRecipientsFile(f)));
  }
  if (recipients.length === 0) {
    throw new UsageError('no recipients: backups are always encrypted', { hint: 'pass --recipient age1… or --recipients-file FILE, or set recipients/recipientsFile in coffer.yaml (create a key with `coffer keygen`)' });
  }
  if (flags.schemaOnly && flags.dataOnly) throw new UsageError('--schema-only and --data-only cannot be combined');
  const kind: DumpKind = flags.schemaOnly ? 'schema-only' : flags.dataOnly ? 'data-only' : 'custom';
  if (flags.disableTriggers && kind !== 'data-only') {
    throw new UsageError('--disable-triggers applies to --data-only backups only', { hint: 'a full backup restores its tables, data and constraints in order; add --data-only, or drop --disable-triggers' });
  }
  // Object lock: each object is retained for its tier's keep period (policy.ts rounds up).
  const lockMode = flags.objectLockMode;
  const keepPolicy = retentionPolicy(flags);
  const retentionFor = lockMode ? (t: Tier, now: Date) => ({ mode: lockMode, retainUntil: retainUntil(keepPolicy, t, now) }) : undefined;
  const tier: Tier | undefined = flags.tier ?? (flags.label !== undefined ? 'manual' : undefined);
  const conn = parseConnectionString(flags.dbname);
  // pgPassword: from COFFER_PGPASSWORD(_FILE) or the file's pgPassword(File) (config layer).
  if (flags.pgPassword !== undefined && conn.password === undefined) conn.password = flags.pgPassword;
  // --cluster alone does not make a backup physical: wal-push shares it through the file's top level.
  if (isPhysicalBackup(flags)) return runPhysicalBackupCommand(flags, { recipients, tier, retentionFor, conn, s3 }, ctx);
  if (flags.attach.length > 0) throw new UsageError('--attach applies to physical backups (--physical, --data-dir, --tar-command)', { hint: 'a logical backup can store roles beside the dump with --globals' });
  const compression = flags.compress;
  if (kind !== 'custom' && compression.kind === 'pgdump-gzip') {
    throw new UsageError('--compress gzip applies to custom-format dumps only; use zstd or none with --schema-only/--data-only');
  }
  if (flags.allDatabases && flags.db.length > 0) throw new UsageError('--all-databases and --db cannot be combined');
  // --db names are checked as they are read; the default one here.
  const explicitDbs = flags.db.length > 0 ? flags.db : [databaseOf(conn, undefined, env) ?? env.PGUSER ?? env.USER ?? ''];
  if (!flags.allDatabases && flags.db.length === 0) checkDatabaseName(explicitDbs[0]!);
  const tools = resolvePgTools({
    binDir: flags.pgBin,
    pgDumpCommand: flags.pgDumpCommand,
    pgDumpallCommand: flags.pgDumpallCommand,
    psqlCommand: flags.psqlCommand,
  });
  const waitMs = flags.wait?.ms ?? 0;
  const lockDir = path.resolve(ctx.cwd, flags.lockDir ?? defaultLockDir(env));
  const metricsFile = flags.metricsFile === undefined ? undefined : path.resolve(ctx.cwd, flags.metricsFile);
  if (metricsFile !== undefined) {
    try {
      accessSync(path.dirname(metricsFile), fsConstants.W_OK);
    } catch {
      throw new UsageError(`--metrics-file ${flags.metricsFile}: its directory does not exist or is not writable`, {
        hint: 'point it into the node_exporter textfile directory, e.g. /var/lib/prometheus/node-exporter/coffer.prom',
      });
    }
  }
  const notifier = new Notifier({ notifyUrl: flags.notify, webhookUrl: flags.webhook, log: ctx.log });

  const store = await openStore(flags.to, s3);
  notifier.start();
  const results: BackupResult[] = [];
  const outcomes: Outcome[] = [];
  let fatal: unknown;
  try {
    const dbs = flags.allDatabases ? await listAllDatabases(tools, conn, { env, signal: ctx.signal }) : explicitDbs;
    if (flags.allDatabases) ctx.log.info('databases to back up', { databases: dbs.join(',') });
    for (const database of dbs) {
      const started = Date.now();
      const progress = new Progress(`backup ${database}`, ctx.stderrIsTty);
      let lock: HeldLock | undefined;
      try {
        lock = await acquireBackupLock({
          repository: store.location,
          database,
          lockDir,
          runId: ctx.log.runId,
          tools,
          conn,
          env,
          waitMs,
          signal: ctx.signal,
          log: ctx.log,
        });
        const r = await runBackup({
          store,
          tools,
          conn,
          database,
          recipients,
          compression,
          kind,
          tier,
          retentionFor,
          label: flags.label,
          partSize: flags.partSize,
          maxParts: flags.maxParts,
          excludeTableData: flags.excludeTableData,
          disableTriggers: flags.disableTriggers,
          globals: flags.globals,
          env,
          signal: ctx.signal,
          log: ctx.log,
          onProgress: (b) => progress.update(b),
        });
        results.push(r);
        outcomes.push({ database, result: r, durationMs: Date.now() - started });
      } catch (err) {
        outcomes.push({ database, error: err, durationMs: Date.now() - started });
        if (dbs.length > 1) ctx.log.error(`backup of ${JSON.stringify(database)} failed: ${formatErrorLine(err)}`, { database });
        if (err instanceof InterruptedError || ctx.signal.aborted) {
          fatal = err;
          break;
        }
      } finally {
        progress.stop();
        await lock?.release();
      }
    }
  } catch (err) {
    fatal = err;
  } finally {
    store.close();
  }

  const failed = outcomes.filter((o) => o.error !== undefined);
  const error = fatal ?? (failed.length === 0 ? undefined : failed.length === 1 && outcomes.length === 1 ? failed[0]!.error : summaryError(failed, outcomes.length));
  if (ctx.signal.aborted) {
    // Stopped: exit within seconds. The failure ping first (it is what alerts), then the rest.
    notifier.stopping();
    if (error !== undefined) await notifier.failure(formatErrorLine(error));
  }
  await report(ctx, store.location, outcomes, notifier, metricsFile);
  // The backups that were made are reported even when others of the run failed.
  if (flags.json && (results.length > 0 || error === undefined)) ctx.stdout(`${JSON.stringify(results.map((r) => r.manifest), null, 2)}\n`);
  else if (!flags.json && ctx.stdoutIsTty) {
    for (const r of results) {
      const w = r.manifest.warnings?.length ?? 0;
      ctx.stdout(`${r.manifest.id}  ${r.manifest.database}  ${r.manifest.tier}  ${formatBytes(r.manifest.dump.size)}${w > 0 ? `  ${w} warning(s): see the log and the manifest` : ''}\n`);
    }
  }
  if (error !== undefined) {
    if (!ctx.signal.aborted) await notifier.failure(formatErrorLine(error));
    throw error;
  }
  await notifier.success();
  return results;
}

/** One error for a run where some of several databases failed: the first failure's kind. */
function summaryError(failed: Outcome[], total: number): Error {
  const first = failed[0]!.error;
  const names = failed.map((o) => JSON.stringify(o.database)).join(', ');
  const msg = `${failed.length} of ${total} database backups failed: ${names} (each is logged above; the others succeeded)`;
  if (first instanceof CofferError) return new CofferError(first.kind, msg, { hint: formatErrorLine(first) });
  return new Error(msg, { cause: first });
}

/** Metrics file and webhooks for every database of the run; never throws. */
async function report(ctx: CliContext, repository: string, outcomes: Outcome[], notifier: Notifier, metricsFile: string | undefined): Promise<void> {
  const now = Date.now() / 1000;
  for (const o of outcomes) {
    await notifier.webhook({
      event: o.error === undefined ? 'backup.success' : 'backup.failure',
      database: o.database,
      repository,
      host: hostname(),
      runId: ctx.log.runId,
      id: o.result?.manifest.id ?? null,
      tier: o.result?.manifest.tier ?? null,
      bytes: o.result?.manifest.dump.size ?? null,
      durationSeconds: o.durationMs / 1000,
      error: o.error === undefined ? null : formatErrorLine(o.error),
    });
  }
  if (metricsFile === undefined || outcomes.length === 0) return;
  const rows: BackupRunMetrics[] = outcomes.map((o) => ({
    repository,
    database: o.database,
    success: o.error === undefined,
    finishedAt: o.result ? Date.parse(o.result.manifest.finishedAt) / 1000 : now,
    durationSeconds: o.durationMs / 1000,
    bytes: o.result?.manifest.dump.size ?? 0,
  }));
  try {
    await writeBackupMetrics(metricsFile, rows);
  } catch (err) {
    ctx.log.warn(`could not write the metrics file: ${formatErrorLine(err)}`);
  }
}
