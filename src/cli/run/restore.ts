import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { hostname } from 'node:os';
import * as path from 'node:path';
import { writeFileAtomic } from '../../atomic-write.js';
import { library } from '../../crypto/keys.js';
import { isX25519Identity } from '../../crypto/x25519.js';
import { readIdentityFile } from '../../crypto/age.js';
import { CofferError, exitCodeOf, formatErrorLine, UsageError } from '../../errors.js';
import { findBackup, listBackups, withoutReplaced, type BackupEntry, type BackupKind } from '../../catalog/catalog.js';
import { drillKey, newBackupId, parseBackupSelector } from '../../catalog/layout.js';
import { DRILL_FORMAT, drillRecordOf, encodeDrillRecord, type DrillResult } from '../../catalog/drill-record.js';
export type { DrillResult } from '../../catalog/drill-record.js';
import { resolveS3Settings } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import { parseConnectionString, type ConnectionSpec } from '../../pg/connection.js';
import { resolvePgTools, type PgTools } from '../../pg/tools.js';
import { PgAdmin } from '../../pg/admin.js';
import { runRestore, type RestoreSummary } from '../../pipeline/restore.js';
import { isSelective, parseListFile, type SelectionSpec } from '../../pipeline/selection.js';
import { restoreToFile, type RestoreSource } from '../../pipeline/restore-source.js';
import { runLoadDataOnly, type LoadSummary } from '../../pipeline/load-data.js';
import { runVerify, type VerifyResult } from '../../pipeline/verify.js';
import { hasIndex } from '../../pipeline/ranged-source.js';
import { openStore } from '../../store/open.js';
import { readTrustedSigners } from '../../trust/allowed-signers.js';
import { RepositoryTrust, untrustedError } from '../../trust/manifest-trust.js';
import type { ObjectStore } from '../../store/object-store.js';
import { Progress } from '../../observe/progress.js';
import { formatBytes } from '../../observe/log.js';
import { metricsFilePath, writeDrillMetrics } from '../../observe/metrics.js';
import type { CliContext } from '../context.js';
import { repositoryText, sourceRepository, type serverOptions, type sourceOptions } from '../option-groups.js';
import { withHooks } from '../../ops/hooks.js';
import { refuseWithoutPhysical, runPhysicalRestoreCommand } from './restore-physical.js';
import type { PhysicalRestoreSummary } from '../../physical/restore.js';
import type { restoreOptions, verifyOptions, drillOptions } from '../commands/restore.js';

/** Options of every command that reads a backup. */
type SourceValues = Values<typeof sourceOptions>;
/** Options of every command that restores into a server. */
type ServerValues = Values<typeof serverOptions>;

export async function loadIdentities(flags: SourceValues): Promise<string[]> {
  const files = flags.identity;
  if (files.length === 0) {
    throw new UsageError('no identity: restoring needs the age identity (private key) file', { hint: 'pass --identity FILE, set identity: in coffer.yaml, or COFFER_IDENTITY (or COFFER_IDENTITY_FILE)' });
  }
  const ids: string[] = [];
  for (const f of files) ids.push(...(await readIdentityFile(f)));
  return ids;
}

function tools(flags: { pgBin: string | undefined; pgRestoreCommand: string | undefined; psqlCommand?: string | undefined }): PgTools {
  return resolvePgTools({
    binDir: flags.pgBin,
    pgRestoreCommand: flags.pgRestoreCommand,
    psqlCommand: flags.psqlCommand,
  });
}

/** The target server: `--dbname` (COFFER_RESTORE_DBNAME, `restore: dbname:`), plus pgPassword. */
function serverConnection(flags: ServerValues): ConnectionSpec {
  const conn = parseConnectionString(flags.dbname);
  if (flags.pgPassword !== undefined && conn.password === undefined) conn.password = flags.pgPassword;
  return conn;
}

/** What every run into a server shares: the keys, the programs, the server and the run's context. */
function intoServer(flags: ServerValues & { maintenanceDb: string; pgBin: string | undefined; pgRestoreCommand: string | undefined; psqlCommand?: string | undefined }, identities: string[], ctx: CliContext) {
  return { identities, tools: tools(flags), conn: serverConnection(flags), maintenanceDb: flags.maintenanceDb, env: ctx.env, signal: ctx.signal, log: ctx.log };
}

/** Opens the repository (unless --file) and finds the backup. */
export async function withSource<T>(flags: SourceValues, ctx: CliContext, fn: (source: RestoreSource) => Promise<T>, defaultKind?: BackupKind): Promise<T> {
  if (flags.file !== undefined) {
    if (flags.from !== undefined || flags.backup !== undefined) throw new UsageError('--file cannot be combined with --from or --backup');
    if (flags.trustedSigners !== undefined) ctx.log.warn('--trusted-signers checks manifests in a repository: the origin of a --file copy is not checked');
    return fn({ kind: 'file', path: path.resolve(ctx.cwd, flags.file) });
  }
  const selector = parseBackupSelector(flags.backup ?? 'latest');
  const kind = flags.kind ?? (selector === 'latest' ? defaultKind : undefined);
  if (flags.kind !== undefined && selector !== 'latest') throw new UsageError('--kind chooses among the latest backups; it cannot be combined with --backup ID');
  const database = flags.db;
  const trusted = flags.trustedSigners !== undefined ? await readTrustedSigners(path.resolve(ctx.cwd, flags.trustedSigners)) : undefined;
  const store = await openStore(sourceRepository(flags.from), resolveS3Settings(flags, ctx.env));
  try {
    const trust = trusted ? new RepositoryTrust(store, trusted, ctx.signal) : undefined;
    const entry = await findBackup(store, {
      database,
      selector,
      kind,
      signal: ctx.signal,
      ...(trust ? { untrustedBecause: (e: BackupEntry) => trust.untrustedBecause(e), onSkip: (why: string) => ctx.log.warn(`skipping an untrusted backup: ${why}`) } : {}),
    });
    if (trust) ctx.log.info('backup origin checked', { id: entry.id, signers: trusted!.file });
    ctx.log.info('backup selected', { id: entry.id, database: entry.database, kind: entry.manifest.kind === 'custom' ? 'full' : entry.manifest.kind, tier: entry.tier, size: entry.manifest.dump.size, label: entry.manifest.label ?? undefined });
    return await fn({ kind: 'repository', store, entry });
  } finally {
    store.close();
  }
}

/**
 * Runs `fn` with its progress shown (a line on a terminal, log lines otherwise), stopped in every
 * case. The total is the stored object's size (the manifest's, or the file's); none for a ranged
 * selective restore, which fetches only part of it: no percentage rather than a wrong one.
 */
async function withProgress<T>(label: string, ctx: CliContext, source: RestoreSource, ranged: boolean, fn: (onProgress: (bytes: number) => void) => Promise<T>): Promise<T> {
  const total = ranged ? undefined : await storedSize(source);
  const fields = { task: label, ...(source.kind === 'repository' ? { database: source.entry.database, backup: source.entry.id } : { file: source.path }) };
  const progress = new Progress(label, { tty: ctx.stderrIsTty, log: ctx.log, fields, total });
  try {
    return await fn((n) => progress.update(n));
  } finally {
    progress.stop();
  }
}

/** The bytes a whole restore reads: the stored dump's size (manifest), or the file's; undefined if the file cannot be read (the restore says why). */
async function storedSize(source: RestoreSource): Promise<number | undefined> {
  if (source.kind === 'repository') return source.entry.manifest.dump.size;
  return fsp.stat(source.path).then(
    (st) => (st.isFile() ? st.size : undefined),
    () => undefined,
  );
}

/** `coffer restore`, between its `--before` and `--after` hooks (src/ops/hooks.ts). */
export async function runRestoreCommand(flags: Values<typeof restoreOptions>, ctx: CliContext): Promise<RestoreSummary | LoadSummary | PhysicalRestoreSummary | { output: string; bytes: number }> {
  const vars = {
    COMMAND: 'restore',
    REPOSITORY: flags.file !== undefined ? '' : repositoryText(sourceRepository(flags.from)),
    FILE: flags.file ?? '',
    BACKUP: flags.backup ?? 'latest',
    DATABASE: flags.db ?? '',
    TARGET: flags.targetDb ?? flags.intoExisting ?? '',
    RUN_ID: ctx.log.runId,
  };
  return withHooks({ before: flags.before, after: flags.after }, vars, { env: ctx.env, signal: ctx.signal, log: ctx.log }, () => restoreCommand(flags, ctx), (r) => ({
    ...('backupId' in r && r.backupId ? { BACKUP: r.backupId } : {}),
    ...('target' in r && typeof r.target === 'string' ? { TARGET: r.target } : {}),
  }), (r) => ('output' in r ? `the restore to ${r.output} is complete` : 'target' in r && typeof r.target === 'string' ? `the restore into ${JSON.stringify(r.target)} is complete` : 'the restore is complete'));
}

/** `coffer restore`: into a fresh database (atomically), or `--output` to a file. */
async function restoreCommand(flags: Values<typeof restoreOptions>, ctx: CliContext): Promise<RestoreSummary | LoadSummary | PhysicalRestoreSummary | { output: string; bytes: number }> {
  if (flags.physical && (flags.table.length > 0 || flags.schema.length > 0 || flags.excludeTable.length > 0 || flags.listFile !== undefined || flags.sanitize !== undefined)) {
    throw new UsageError('--physical restores a whole cluster; --table, --schema, --exclude-table, --list-file and --sanitize are for logical backups');
  }
  if (flags.physical) return runPhysicalRestoreCommand(flags, await loadIdentities(flags), ctx);
  refuseWithoutPhysical(flags);
  if (flags.trustedSigners === undefined && flags.file === undefined) {
    ctx.log.warn('the origin of the backup is not checked: no trusted signers; pass --trusted-signers FILE (or COFFER_TRUSTED_SIGNERS_FILE) to restore only backups signed by your backup hosts');
  }
  if (flags.intoExisting !== undefined) return runLoadCommand(flags, ctx);
  const selection = await selectionOf(flags, ctx);
  const sanitize = flags.sanitize === undefined ? undefined : await readableFile('--sanitize', path.resolve(ctx.cwd, flags.sanitize));
  const identities = await loadIdentities(flags);
  // The age library, when needed (X25519 identities do without it: src/crypto/x25519.ts), is
  // loaded while the repository is listed and the server asked (it opens the backup after them).
  if (!identities.every(isX25519Identity)) library().catch(() => undefined);
  if (flags.output !== undefined) {
    if (flags.targetDb !== undefined) throw new UsageError('--output and --target-db cannot be combined');
    if (isSelective(selection) || sanitize !== undefined) throw new UsageError('--output writes the whole archive; it cannot be combined with --table, --schema, --exclude-table, --list-file or --sanitize', { hint: 'pg_restore -L/-t on the written file selects from it' });
    const out = path.resolve(ctx.cwd, flags.output);
    return withSource(flags, ctx, (source) =>
      withProgress('restore', ctx, source, false, async (onProgress) => {
        const r = await restoreToFile({ source, identities, env: ctx.env, signal: ctx.signal, log: ctx.log, onProgress }, out);
        ctx.log.info('archive written', { file: out, bytes: r.bytes, format: r.format });
        return { output: out, bytes: r.bytes };
      }),
    );
  }
  if (flags.targetDb === undefined) throw new UsageError('--target-db is required (the new database to restore into)', { hint: 'or --output FILE to write the archive to a file' });
  const target = flags.targetDb;
  const jobs = flags.jobs ?? 1;
  const base = intoServer(flags, identities, ctx);
  const smoke = [...flags.smoke];
  const summary = await withSource(flags, ctx, (source) =>
    // A selective restore of an indexed backup fetches only the ranges it needs (pipeline/ranged-source.ts).
    withProgress('restore', ctx, source, isSelective(selection) && !flags.downloadWhole && source.kind === 'repository' && hasIndex(source.entry.manifest), (onProgress) =>
      runRestore({
        ...base,
        source,
        target,
        replace: flags.replace,
        smoke,
        noOwner: flags.noOwner,
        noPrivileges: flags.noPrivileges,
        jobs,
        spoolDir: flags.spoolDir,
        withGlobals: flags.withGlobals,
        onProgress,
        selection,
        sanitize,
        wholeDownload: flags.downloadWhole,
      }),
    ),
  );
  report(summary, flags.json, ctx);
  return summary;
}

/**
 * `coffer restore --into-existing DB`: a data-only backup (latest: the newest data-only one)
 * loaded into an existing database that holds the schema, in one transaction, materialized
 * views refreshed.
 */
async function runLoadCommand(flags: Values<typeof restoreOptions>, ctx: CliContext): Promise<LoadSummary> {
  const database = flags.intoExisting!;
  const clash = (
    [
      ['--target-db', flags.targetDb !== undefined],
      ['--output', flags.output !== undefined],
      ['--replace', flags.replace],
      ['--jobs', flags.jobs !== undefined],
      ['--with-globals', flags.withGlobals],
      ['--smoke', flags.smoke.length > 0],
      ['--table', flags.table.length > 0],
      ['--schema', flags.schema.length > 0],
      ['--exclude-table', flags.excludeTable.length > 0],
      ['--list-file', flags.listFile !== undefined],
      ['--sanitize', flags.sanitize !== undefined],
    ] as const
  ).find(([, given]) => given);
  if (clash) {
    throw new UsageError(`--into-existing cannot be combined with ${clash[0]}`, { hint: '--into-existing loads a data-only backup into an existing database, in one transaction' });
  }
  const base = intoServer(flags, await loadIdentities(flags), ctx);
  const summary = await withSource(
    flags,
    ctx,
    (source) =>
      withProgress('load', ctx, source, false, (onProgress) =>
        runLoadDataOnly({
          ...base,
          source,
          database,
          noOwner: flags.noOwner,
          noPrivileges: flags.noPrivileges,
          onProgress,
        }),
      ),
    'data-only',
  );
  if (flags.json) ctx.stdout(`${JSON.stringify(summary, null, 2)}\n`);
  else {
    const views = summary.materializedViews;
    ctx.stdout(
      `loaded ${summary.backupId ?? 'file'} into ${JSON.stringify(summary.database)} in ${(summary.durationMs / 1000).toFixed(1)}s (${formatBytes(summary.storedBytes)} stored, ${formatBytes(summary.archiveBytes)} SQL), in one transaction\n` +
        `materialized views refreshed: ${views.length}${views.length > 0 ? ` (${views.join(', ')})` : ''}\n`,
    );
  }
  return summary;
}

/** A file the run will read: refused now (exit 2) if it cannot be read, before anything else. */
async function readableFile(flag: string, file: string): Promise<string> {
  try {
    await fsp.access(file, fsp.constants.R_OK);
    if (!(await fsp.stat(file)).isFile()) throw new Error('not a file');
  } catch {
    throw new UsageError(`${flag} ${file}: no such file or not readable`);
  }
  return file;
}

/** --table, --schema, --exclude-table, --list-file as a selection (the list file read now). */
async function selectionOf(flags: Values<typeof restoreOptions>, ctx: CliContext): Promise<SelectionSpec> {
  const spec: SelectionSpec = { tables: flags.table, schemas: flags.schema, excludeTables: flags.excludeTable };
  for (const [flag, names] of [['--table', flags.table], ['--schema', flags.schema], ['--exclude-table', flags.excludeTable]] as const) {
    if (names.some((n) => n === '')) throw new UsageError(`${flag}: empty name`);
  }
  if (flags.listFile !== undefined) {
    const file = await readableFile('--list-file', path.resolve(ctx.cwd, flags.listFile));
    spec.listIds = parseListFile(await fsp.readFile(file, 'utf8'), flags.listFile);
    spec.listFile = flags.listFile;
  }
  return spec;
}

function report(s: RestoreSummary, json: boolean, ctx: CliContext): void {
  if (json) {
    ctx.stdout(`${JSON.stringify(s, null, 2)}\n`);
    return;
  }
  const lines = [
    `restored ${s.backupId ?? 'file'} into ${JSON.stringify(s.target)} in ${(s.durationMs / 1000).toFixed(1)}s (${formatBytes(s.storedBytes)} stored, ${formatBytes(s.archiveBytes)} archive)`,
    // Both counts are of ordinary and partitioned tables (TABLE entries of the archive).
    s.checks.tocTables === null
      ? `tables: ${s.tables} (ordinary and partitioned); plain-SQL archive: no table of contents to check them against`
      : `tables: ${s.tables} (ordinary and partitioned); all ${s.checks.tocTables} tables of the archive present`,
    ...s.largestTables.map((t) => `  ${t.table}: ${t.rows} rows`),
    ...s.checks.smoke.map((c) => `smoke: ${c.sql} → ${c.output.replace(/\n/g, ' | ')}`),
  ];
  if (s.selection) {
    lines.splice(1, 1, `selective: ${s.selection.entries} entries of the archive, tables: ${s.selection.tables.join(', ') || '(none)'}; all present`);
    const d = s.selection.download;
    lines.splice(2, 0, d === 'whole' ? 'downloaded: the whole backup' : `downloaded: ${formatBytes(d.bytes)} of ${formatBytes(d.of)} (${((100 * d.bytes) / Math.max(1, d.of)).toFixed(1)} %) in ${d.requests} ranged reads, by the archive index (${formatBytes(d.indexBytes)})`);
    for (const n of s.selection.leftOut) lines.push(`  ${n}`);
  }
  if (s.checks.sanitized) lines.push(`sanitized with ${s.checks.sanitized} before the rename`);
  if (s.replacedAside) lines.push(`previous database kept as ${JSON.stringify(s.replacedAside)}`);
  ctx.stdout(`${lines.join('\n')}\n`);
}

/** `coffer verify`: one backup, `latest`, or `all`. Fails if any fails. */
export async function runVerifyCommand(flags: Values<typeof verifyOptions>, ctx: CliContext): Promise<Array<VerifyResult & { id: string | null }>> {
  const identities = await loadIdentities(flags);
  const t = tools(flags);
  const results: Array<VerifyResult & { id: string | null }> = [];
  const verifyOne = async (source: RestoreSource, id: string | null): Promise<void> => {
    const r = await runVerify({ source, identities, tools: t, env: ctx.env, signal: ctx.signal, log: ctx.log });
    ctx.log.info('backup verified', { id: id ?? undefined, bytes: r.storedBytes, archive: r.archiveBytes, toc: r.tocEntries });
    results.push({ ...r, id });
  };
  if (flags.backup === 'all') {
    const store: ObjectStore = await openStore(sourceRepository(flags.from), resolveS3Settings(flags, ctx.env));
    try {
      // A backup replaced by `coffer rekey` is the same data as its replacement, under the old recipients (which the identity may no longer be).
      const listed = await listBackups(store, { database: flags.db, signal: ctx.signal });
      const entries: BackupEntry[] = withoutReplaced(listed);
      if (listed.length > entries.length) ctx.log.info(`not verifying ${listed.length - entries.length} backup(s) replaced by coffer rekey (verify one with --backup ID)`);
      if (entries.length === 0) throw new UsageError(`no completed backups in ${store.location}`);
      const trust = flags.trustedSigners !== undefined ? new RepositoryTrust(store, await readTrustedSigners(path.resolve(ctx.cwd, flags.trustedSigners)), ctx.signal) : undefined;
      for (const entry of entries) {
        const why = await trust?.untrustedBecause(entry);
        if (why !== undefined) throw untrustedError(why);
        await verifyOne({ kind: 'repository', store, entry }, entry.id);
      }
    } finally {
      store.close();
    }
  } else {
    await withSource(flags, ctx, (source) => verifyOne(source, source.kind === 'repository' ? source.entry.id : null));
  }
  if (flags.json) ctx.stdout(`${JSON.stringify(results, null, 2)}\n`);
  else for (const r of results) ctx.stdout(`ok  ${r.id ?? flags.file}  ${formatBytes(r.storedBytes)}  ${r.tocEntries} TOC entries, ${r.tables} tables${r.index === 'matches' ? ', archive index matches' : ''}\n`);
  return results;
}


/**
 * `coffer drill`: restores the latest (or chosen) backup into a scratch database, runs the
 * checks, records the result (with where the time went), and drops the database whatever
 * happened. `--record` stores the record in the repository beside the backups
 * (`<database>/drills/<id>.drill.json`), where `coffer status` finds it to predict restore times.
 */
export async function runDrillCommand(flags: Values<typeof drillOptions>, ctx: CliContext): Promise<DrillResult> {
  // From the process's start: a restore pays for starting coffer too, and `select` includes it.
  const started = new Date(Math.floor(performance.timeOrigin));
  if (flags.record && flags.file !== undefined) throw new UsageError('--record stores the drill record in the repository; a --file drill has none', { hint: 'use --result-file FILE for a local record' });
  // The gauges are per (repository, database): a --file drill has neither.
  if (flags.metricsFile !== undefined && flags.file !== undefined) throw new UsageError('--metrics-file labels the drill with its repository and database; a --file drill has neither', { hint: 'use --result-file FILE for a local record' });
  const metricsFile = metricsFilePath(flags.metricsFile, ctx.cwd);
  const base = intoServer(flags, await loadIdentities(flags), ctx);
  const target = `coffer_drill_${randomBytes(4).toString('hex')}`;
  const admin = new PgAdmin(base.tools, base.conn, flags.maintenanceDb, ctx.env);
  let result: DrillResult = {
    format: DRILL_FORMAT,
    formatVersion: 1,
    id: newBackupId(started),
    ok: false,
    startedAt: started.toISOString(),
    durationMs: 0,
    host: hostname(),
    repository: null,
    backupId: null,
    database: null,
    storedBytes: 0,
    archiveBytes: 0,
    jobs: flags.jobs,
    tables: 0,
    rows: [],
    checks: null,
    phases: null,
    failure: null,
    error: null,
  };
  let failure: unknown;
  let restored: RestoreSummary | undefined;
  let selectMs = 0;
  try {
    await withSource(flags, ctx, async (source) => {
      selectMs = Date.now() - started.getTime();
      if (source.kind === 'repository') {
        result.repository = source.store.location;
        result.backupId = source.entry.id;
        result.database = source.entry.database;
      }
      const s = await runRestore({ ...base, source, target, replace: false, smoke: flags.smoke, noOwner: true, noPrivileges: true, jobs: flags.jobs });
      restored = s;
      result = { ...result, ok: true, storedBytes: s.storedBytes, archiveBytes: s.archiveBytes, tables: s.tables, rows: s.largestTables, checks: s.checks };
    });
  } catch (err) {
    failure = err;
    result.error = (err as Error).message;
    result.failure = { exitCode: exitCodeOf(err), kind: err instanceof CofferError ? err.kind : 'internal' };
  } finally {
    const dropStarted = Date.now();
    try {
      await admin.drop(target);
    } catch (e) {
      // Only a drill that restored made the database (a failed restore drops its own scratch
      // database); otherwise a failed DROP is the failure itself again (a server not reached):
      // one error line, the cause's. One that is left after all is named by the next drill.
      if (restored) ctx.log.error(`could not drop the drill database ${target}; drop it by hand`, { error: (e as Error).message });
    }
    if (restored) result.phases = { select: selectMs, ...restored.phases, drop: Date.now() - dropStarted };
    result.durationMs = Date.now() - started.getTime();
  }
  const text = `${JSON.stringify(result, null, 2)}\n`;
  if (flags.resultFile) {
    await writeFileAtomic(path.resolve(ctx.cwd, flags.resultFile), text, { mode: 0o600 });
  }
  ctx.stdout(text);
  // Gauges before the record, whose failure to store would end the run. A drill that failed before
  // choosing its backup has no labels: its exit code and status's gauges report it.
  if (metricsFile !== undefined && result.database !== null && result.repository !== null) {
    await writeDrillMetrics(metricsFile, { repository: result.repository, database: result.database, startedAt: Date.parse(result.startedAt) / 1000, ok: result.ok }).catch((err: unknown) =>
      ctx.log.warn(`could not write the metrics file: ${formatErrorLine(err)}`),
    );
  }
  // Recorded whatever the outcome (a failed drill is what status must see), once its database is gone.
  if (flags.record && result.database !== null) await recordDrill(flags, ctx, result, failure);
  if (failure !== undefined) throw failure;
  return result;
}

/** Stores a drill record in the drilled repository (write-once key). A record that cannot be stored fails the run, after the drill's own failure if any. */
async function recordDrill(flags: Values<typeof drillOptions>, ctx: CliContext, result: DrillResult, failure: unknown): Promise<void> {
  const key = drillKey(result.database!, result.id);
  const store = await openStore(sourceRepository(flags.from), resolveS3Settings(flags, ctx.env));
  try {
    await store.putBytes(key, encodeDrillRecord(drillRecordOf(result)), { contentType: 'application/json', signal: ctx.signal });
    ctx.log.info('drill recorded', { key, ok: result.ok });
  } catch (err) {
    if (failure !== undefined) ctx.log.error(`the drill record could not be stored either: ${(err as Error).message}`, { key });
    else throw err;
  } finally {
    store.close();
  }
}
