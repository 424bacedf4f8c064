import * as path from 'node:path';
import { hostname } from 'node:os';
import { CofferError, InterruptedError, UsageError, formatErrorLine } from '../../errors.js';
import { acquireBackupLock, defaultLockDir, type HeldLock } from '../../ops/lock.js';
import { listAllDatabases } from '../../ops/all-databases.js';
import { metricsFilePath, writeBackupMetrics, type BackupRunMetrics } from '../../observe/metrics.js';
import { Notifier } from '../../observe/notify.js';
import { checkRecipientMix, readRecipientsFile } from '../../crypto/age.js';
import { library } from '../../crypto/keys.js';
import { isX25519Recipient } from '../../crypto/x25519.js';
import { readSigningKeyFile } from '../../trust/signing-key.js';
import { manifestSigner } from '../../trust/manifest-trust.js';
import { runBackup, type BackupResult } from '../../pipeline/backup.js';
import type { DumpKind } from '../../pg/pg-dump.js';
import { parseConnectionString, databaseOf } from '../../pg/connection.js';
import { resolvePgTools } from '../../pg/tools.js';
import { probeServer, type ServerInfo } from '../../pg/server.js';
import { openStore } from '../../store/open.js';
import { Progress } from '../../observe/progress.js';
import { formatBytes, withFields } from '../../observe/log.js';
import { checkDatabaseName, resolveS3Settings } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import type { CliContext } from '../context.js';
import type { LoadedConfig } from '../command.js';
import { chooseSources, sourcesFailed } from '../sources.js';
import { isPhysicalBackup, runPhysicalBackupCommand } from './backup-physical.js';
import type { PhysicalBackupResult } from '../../physical/backup.js';
import { repositoryText, retentionPolicy } from '../option-groups.js';
import { withHooks } from '../../ops/hooks.js';
import type { Tier } from '../../catalog/layout.js';
import { retainUntil } from '../../retention/policy.js';
import type { options } from '../commands/backup.js';

/** What happened to one database of the run. */
interface Outcome {
  database: string;
  result?: BackupResult;
  error?: unknown;
  durationMs: number;
}

/** `coffer backup`, between its `--before` and `--after` hooks (src/ops/hooks.ts); with `--source`/`--all-sources`, once per source. */
export async function runBackupCommand(flags: Values<typeof options>, ctx: CliContext, config?: Pick<LoadedConfig, 'sources' | 'forSource'>): Promise<Array<BackupResult | PhysicalBackupResult>> {
  const sources = chosenSources(flags, config);
  const vars = {
    COMMAND: 'backup',
    REPOSITORY: sources ? '' : repositoryText(flags.to),
    DATABASES: flags.allDatabases ? '' : flags.db.join(','),
    ALL_DATABASES: flags.allDatabases ? '1' : '0',
    ...(sources ? { SOURCES: sources.map((x) => x.name).join(',') } : {}),
    RUN_ID: ctx.log.runId,
  };
  // age's mixing rule is configuration: refused for every source before the first one runs (a
  // source whose recipients file cannot be read fails on its own turn, as before).
  for (const s of sources ?? []) {
    const recipients = [...s.flags.recipient];
    for (const f of s.flags.recipientsFile) recipients.push(...(await readRecipientsFile(f).catch(() => [])));
    try {
      checkRecipientMix(recipients);
    } catch (err) {
      throw err instanceof UsageError ? new UsageError(`source ${JSON.stringify(s.name)}: ${err.message}`, { hint: err.hint }) : err;
    }
  }
  return withHooks({ before: flags.before, after: flags.after }, vars, { env: ctx.env, signal: ctx.signal, log: ctx.log }, () => (sources ? backupSources(sources, ctx) : backupCommand(flags, ctx)), (r) => ({
    BACKUPS: r.map((x) => x.manifest.id).join(','),
    DATABASES_BACKED_UP: r.map((x) => ('database' in x.manifest ? x.manifest.database : x.manifest.cluster)).join(','),
  }), (r) => {
    const made = r.map((x) => `${x.manifest.id} (${'database' in x.manifest ? `database ${x.manifest.database}` : `cluster ${x.manifest.cluster}`})`).join(', ');
    return `${r.length === 1 ? `the backup ${made} is` : `the backups ${made} are`} committed and complete`;
  });
}

/** The sources asked for, resolved ({@link chooseSources}); two may not share a ping URL. */
function chosenSources(flags: Values<typeof options>, config: Pick<LoadedConfig, 'sources' | 'forSource'> | undefined): Array<{ name: string; flags: Values<typeof options> }> | undefined {
  const chosen = chooseSources<Values<typeof options>>(flags, config);
  if (!chosen) return undefined;
  // A ping URL is one check: two sources pinging it would report the last one's outcome only.
  const byUrl = new Map<string, string>();
  for (const c of chosen) {
    const url = c.flags.notify;
    if (url === undefined) continue;
    const other = byUrl.get(url);
    if (other !== undefined) {
      throw new UsageError(`sources ${JSON.stringify(other)} and ${JSON.stringify(c.name)} share one --notify URL: a later success would hide an earlier failure`, { hint: 'give each source its own notify: (one check per source), under sources:' });
    }
    byUrl.set(url, c.name);
  }
  return chosen;
}

/**
 * Backs up each source in turn (its own connection, databases, repository and keys). One that
 * fails does not stop the next; the run then fails naming every source that failed, with the
 * first failure's exit code. A stop signal ends the run after the source under way.
 */
async function backupSources(sources: Array<{ name: string; flags: Values<typeof options> }>, ctx: CliContext): Promise<Array<BackupResult | PhysicalBackupResult>> {
  const results: Array<BackupResult | PhysicalBackupResult> = [];
  const failed: Array<{ name: string; error: unknown }> = [];
  for (const s of sources) {
    if (ctx.signal.aborted) break;
    const log = withFields(ctx.log, { source: s.name });
    log.info('source started', { repository: repositoryText(s.flags.to) });
    try {
      results.push(...(await backupCommand(s.flags, { ...ctx, log })));
      log.info('source done');
    } catch (err) {
      failed.push({ name: s.name, error: err });
      log.error(`source ${JSON.stringify(s.name)} failed: ${formatErrorLine(err)}`);
      if (err instanceof InterruptedError || ctx.signal.aborted) throw err;
    }
  }
  if (failed.length > 0) throw sourcesFailed(failed, sources.length, results.length > 0 ? '; the others were backed up' : '');
  return results;
}

async function backupCommand(flags: Values<typeof options>, ctx: CliContext): Promise<BackupResult[] | PhysicalBackupResult[]> {
  const env = ctx.env;
  // Everything is validated before touching the database or the repository.
  const s3 = resolveS3Settings(flags, env);
  const recipients = [...flags.recipient];
  for (const f of flags.recipientsFile) {
    recipients.push(...(await readRecipientsFile(f)));
  }
  checkRecipientMix(recipients);
  if (recipients.length === 0) {
    throw new UsageError('no recipients: backups are always encrypted', { hint: 'pass --recipient age1… or --recipients-file FILE, or set recipients/recipientsFile in coffer.yaml (create a key with `coffer keygen`)' });
  }
  // The signing key is read (and its mode checked) before anything is dumped or written.
  const signer = flags.signingKey !== undefined ? manifestSigner(await readSigningKeyFile(path.resolve(ctx.cwd, flags.signingKey))) : undefined;
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
  if (isPhysicalBackup(flags)) return runPhysicalBackupCommand(flags, { recipients, tier, retentionFor, conn, s3, signer }, ctx);
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
  const metricsFile = metricsFilePath(flags.metricsFile, ctx.cwd);
  const notifier = new Notifier({ notifyUrl: flags.notify, webhookUrl: flags.webhook, log: ctx.log, signal: ctx.signal });

  // The age library (a good part of a start-up), when needed (X25519 recipients do without it:
  // src/crypto/x25519.ts), is loaded while the databases are listed and locked.
  if (!recipients.every(isX25519Recipient)) library().catch(() => undefined);
  const store = await openStore(flags.to, s3);
  notifier.start();
  const results: BackupResult[] = [];
  const outcomes: Outcome[] = [];
  let fatal: unknown;
  try {
    // A database named twice is backed up once.
    const dbs = flags.allDatabases ? await listAllDatabases(tools, conn, { env, signal: ctx.signal }) : [...new Set(explicitDbs)];
    if (flags.allDatabases) ctx.log.info('databases to back up', { databases: dbs.join(',') });
    const parallel = Math.min(flags.parallel, Math.max(1, dbs.length));
    const lock = (database: string): Promise<HeldLock> =>
      acquireBackupLock({ repository: store.location, database, lockDir, runId: ctx.log.runId, advisory: { tools, conn }, env, waitMs, signal: ctx.signal, log: ctx.log });
    // Each database's lock is taken while the one before it is backed up (the next in the queue
    // is locked ahead by whoever takes a database), so a run over many databases does not wait
    // for a connection between two of them. A lock taken ahead and not used (the run stopped)
    // is released at the end.
    // The server is probed for it through the lock's session as soon as the lock is held.
    const locks = new Map<number, Promise<{ held: HeldLock; probe?: Promise<ServerInfo> }>>();
    const lockAhead = (i: number): Promise<{ held: HeldLock; probe?: Promise<ServerInfo> }> => {
      let p = locks.get(i);
      if (!p) {
        p = lock(dbs[i]!).then((held) => {
          if (!held.ask) return { held };
          const probe = probeServer(tools, conn, dbs[i]!, { env, signal: ctx.signal, ask: held.ask });
          probe.catch(() => undefined);
          return { held, probe };
        });
        p.catch(() => undefined);
        locks.set(i, p);
      }
      return p;
    };
    let next = 0;
    const releases: Array<Promise<void>> = [];
    const backupOne = async (i: number): Promise<void> => {
      const database = dbs[i]!;
      const started = Date.now();
      // Stored bytes until pg_dump's own bytes are seen; those against the database size, an estimate.
      // One progress line on a terminal: with several databases at once, the log says how each goes.
      const progress = new Progress(`backup ${database}`, { tty: ctx.stderrIsTty && parallel === 1, log: ctx.log, fields: { task: 'backup', database } });
      let dumpSeen = false;
      let held: HeldLock | undefined;
      try {
        const pending = lockAhead(i);
        if (next < dbs.length && fatal === undefined) lockAhead(next);
        const ahead = await pending;
        held = ahead.held;
        const r = await runBackup({
          store,
          tools,
          conn,
          database,
          ask: held.ask,
          probe: ahead.probe,
          recipients,
          signer,
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
          index: !flags.noIndex,
          env,
          signal: ctx.signal,
          log: ctx.log,
          onProgress: (b) => {
            if (!dumpSeen) progress.update(b);
          },
          onDumpProgress: (b, databaseSize) => {
            if (!dumpSeen) progress.setTotal(databaseSize > 0 ? databaseSize : undefined, true);
            dumpSeen = true;
            progress.update(b);
          },
        });
        results.push(r);
        outcomes.push({ database, result: r, durationMs: Date.now() - started });
      } catch (err) {
        outcomes.push({ database, error: err, durationMs: Date.now() - started });
        if (dbs.length > 1) ctx.log.error(`backup of ${JSON.stringify(database)} failed: ${formatErrorLine(err)}`, { database });
        if (err instanceof InterruptedError || ctx.signal.aborted) fatal ??= err;
      } finally {
        progress.stop();
        locks.delete(i);
        // Released while the next database starts (its lock is its own); awaited before the run ends.
        if (held) releases.push(held.release());
      }
    };
    // `parallel` workers take the databases in order; a stop ends the run after the ones under way.
    const worker = async (): Promise<void> => {
      while (next < dbs.length && fatal === undefined) await backupOne(next++);
    };
    await Promise.all(Array.from({ length: parallel }, worker));
    for (const p of locks.values()) releases.push(p.then((l) => l.held.release(), () => undefined));
    await Promise.all(releases);
    // Reported in the order the databases were named, whatever order they finished in.
    const order = (d: string): number => dbs.indexOf(d);
    results.sort((a, b) => order(a.manifest.database) - order(b.manifest.database));
    outcomes.sort((a, b) => order(a.database) - order(b.database));
  } catch (err) {
    fatal = err;
  } finally {
    store.close();
  }

  const failed = outcomes.filter((o) => o.error !== undefined);
  const error = fatal ?? (failed.length === 0 ? undefined : failed.length === 1 && outcomes.length === 1 ? failed[0]!.error : summaryError(failed, outcomes.length));
  // Stopped: exit within seconds (the notifier follows the run's signal and keeps to its stop
  // budget). The failure ping first (it is what alerts), then the rest.
  if (ctx.signal.aborted && error !== undefined) await notifier.failure(formatErrorLine(error));
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
