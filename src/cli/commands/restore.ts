import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { readIdentityFile } from '../../crypto/age.js';
import { UsageError } from '../../errors.js';
import { findBackup, listBackups, type BackupEntry, type BackupKind } from '../../catalog/catalog.js';
import { parseBackupSelector } from '../../catalog/layout.js';
import { checkDatabaseName, parsePositiveInt, resolveRepository, resolveS3Settings } from '../../config/settings.js';
import { parseConnectionString, type ConnectionSpec } from '../../pg/connection.js';
import { resolvePgTools, type PgTools } from '../../pg/tools.js';
import { PgAdmin } from '../../pg/admin.js';
import { runRestore, type RestoreSummary } from '../../pipeline/restore.js';
import { restoreToFile, type RestoreSource } from '../../pipeline/restore-source.js';
import { runLoadDataOnly, type LoadSummary } from '../../pipeline/load-data.js';
import { runVerify, type VerifyResult } from '../../pipeline/verify.js';
import { openStore } from '../../store/open.js';
import type { ObjectStore } from '../../store/object-store.js';
import { Progress } from '../../observe/progress.js';
import { formatBytes } from '../../observe/log.js';
import type { CliContext } from '../context.js';

interface SourceFlags {
  from?: string;
  db?: string;
  backup?: string;
  kind?: string;
  file?: string;
  identity?: string[];
  s3Endpoint?: string;
  s3Region?: string;
}

interface ServerFlags {
  dbname?: string;
  /** From COFFER_PGPASSWORD(_FILE) or the file's pgPassword(File), attached by the config layer. */
  pgPassword?: string;
  maintenanceDb?: string;
  pgBin?: string;
  pgRestoreCommand?: string;
  psqlCommand?: string;
}

export interface RestoreFlags extends SourceFlags, ServerFlags {
  targetDb?: string;
  replace?: boolean;
  smoke?: string[];
  owner?: boolean;
  privileges?: boolean;
  jobs?: string;
  spoolDir?: string;
  output?: string;
  /** Load a data-only backup into this existing database (which holds the schema). */
  intoExisting?: string;
  withGlobals?: boolean;
  json?: boolean;
}

async function loadIdentities(flags: SourceFlags, ctx: CliContext): Promise<string[]> {
  const files = flags.identity ?? [];
  if (files.length === 0) {
    throw new UsageError('no identity: restoring needs the age identity (private key) file', { hint: 'pass --identity FILE, set identity: in coffer.yaml, or COFFER_IDENTITY (or COFFER_IDENTITY_FILE)' });
  }
  const ids: string[] = [];
  for (const f of files) ids.push(...(await readIdentityFile(f)));
  return ids;
}

function tools(flags: ServerFlags, ctx: CliContext): PgTools {
  return resolvePgTools({
    binDir: flags.pgBin,
    pgRestoreCommand: flags.pgRestoreCommand,
    psqlCommand: flags.psqlCommand,
  });
}

/** The target server: `--dbname` (COFFER_RESTORE_DBNAME, `restore: dbname:`), plus pgPassword. */
function serverConnection(flags: ServerFlags): ConnectionSpec {
  const conn = parseConnectionString(flags.dbname);
  if (flags.pgPassword !== undefined && conn.password === undefined) conn.password = flags.pgPassword;
  return conn;
}

/** `--kind`: `full` (a custom archive: the default for latest), `schema-only` or `data-only`. */
function parseKind(value: string | undefined): BackupKind | undefined {
  if (value === undefined) return undefined;
  if (value === 'full' || value === 'custom') return 'custom';
  if (value === 'schema-only' || value === 'data-only') return value;
  throw new UsageError(`--kind ${JSON.stringify(value)}: expected full, schema-only or data-only`);
}

/** Opens the repository (unless --file) and finds the backup. */
async function withSource<T>(flags: SourceFlags, ctx: CliContext, fn: (source: RestoreSource) => Promise<T>, defaultKind?: BackupKind): Promise<T> {
  if (flags.file !== undefined) {
    if (flags.from !== undefined || flags.backup !== undefined) throw new UsageError('--file cannot be combined with --from or --backup');
    return fn({ kind: 'file', path: path.resolve(ctx.cwd, flags.file) });
  }
  const repo = resolveRepository(flags.from, ctx.env, './backups');
  const selector = parseBackupSelector(flags.backup ?? 'latest');
  const kind = parseKind(flags.kind) ?? (selector === 'latest' ? defaultKind : undefined);
  if (flags.kind !== undefined && selector !== 'latest') throw new UsageError('--kind chooses among the latest backups; it cannot be combined with --backup ID');
  const database = flags.db === undefined ? undefined : checkDatabaseName(flags.db);
  const store = await openStore(repo, resolveS3Settings(flags, ctx.env));
  try {
    const entry = await findBackup(store, { database, selector, kind, signal: ctx.signal });
    ctx.log.info('backup selected', { id: entry.id, database: entry.database, kind: entry.manifest.kind === 'custom' ? 'full' : entry.manifest.kind, tier: entry.tier, size: entry.manifest.dump.size, label: entry.manifest.label ?? undefined });
    return await fn({ kind: 'repository', store, entry });
  } finally {
    store.close();
  }
}

/** Runs `fn` with a progress line on a terminal, stopped in every case. */
async function withProgress<T>(label: string, ctx: CliContext, fn: (onProgress: (bytes: number) => void) => Promise<T>): Promise<T> {
  const progress = new Progress(label, ctx.stderrIsTty);
  try {
    return await fn((n) => progress.update(n));
  } finally {
    progress.stop();
  }
}

/** `coffer restore`: into a fresh database (atomically), or `--output` to a file. */
export async function runRestoreCommand(flags: RestoreFlags, ctx: CliContext): Promise<RestoreSummary | LoadSummary | { output: string; bytes: number }> {
  if (flags.intoExisting !== undefined) return runLoadCommand(flags, ctx);
  const identities = await loadIdentities(flags, ctx);
  if (flags.output !== undefined) {
    if (flags.targetDb !== undefined) throw new UsageError('--output and --target-db cannot be combined');
    const out = path.resolve(ctx.cwd, flags.output);
    return withSource(flags, ctx, (source) =>
      withProgress('restore', ctx, async (onProgress) => {
        const r = await restoreToFile({ source, identities, env: ctx.env, signal: ctx.signal, log: ctx.log, onProgress }, out);
        ctx.log.info('archive written', { file: out, bytes: r.bytes, format: r.format });
        return { output: out, bytes: r.bytes };
      }),
    );
  }
  if (flags.targetDb === undefined) throw new UsageError('--target-db is required (the new database to restore into)', { hint: 'or --output FILE to write the archive to a file' });
  const target = checkDatabaseName(flags.targetDb, '--target-db');
  const jobs = parsePositiveInt(flags.jobs, '--jobs', 1, 64);
  const conn = serverConnection(flags);
  const t = tools(flags, ctx);
  const smoke = [...(flags.smoke ?? [])];
  const summary = await withSource(flags, ctx, (source) =>
    withProgress('restore', ctx, (onProgress) =>
      runRestore({
        source,
        identities,
        tools: t,
        conn,
        maintenanceDb: flags.maintenanceDb ?? 'postgres',
        target,
        replace: !!flags.replace,
        smoke,
        noOwner: flags.owner === false,
        noPrivileges: flags.privileges === false,
        jobs,
        spoolDir: flags.spoolDir,
        withGlobals: flags.withGlobals,
        env: ctx.env,
        signal: ctx.signal,
        log: ctx.log,
        onProgress,
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
async function runLoadCommand(flags: RestoreFlags, ctx: CliContext): Promise<LoadSummary> {
  const database = checkDatabaseName(flags.intoExisting!, '--into-existing');
  const clash = (
    [
      ['--target-db', flags.targetDb !== undefined],
      ['--output', flags.output !== undefined],
      ['--replace', !!flags.replace],
      ['--jobs', flags.jobs !== undefined],
      ['--with-globals', !!flags.withGlobals],
      ['--smoke', (flags.smoke ?? []).length > 0],
    ] as const
  ).find(([, given]) => given);
  if (clash) {
    throw new UsageError(`--into-existing cannot be combined with ${clash[0]}`, { hint: '--into-existing loads a data-only backup into an existing database, in one transaction' });
  }
  const identities = await loadIdentities(flags, ctx);
  const conn = serverConnection(flags);
  const t = tools(flags, ctx);
  const summary = await withSource(
    flags,
    ctx,
    (source) =>
      withProgress('load', ctx, (onProgress) =>
        runLoadDataOnly({
          source,
          identities,
          tools: t,
          conn,
          maintenanceDb: flags.maintenanceDb ?? 'postgres',
          database,
          noOwner: flags.owner === false,
          noPrivileges: flags.privileges === false,
          env: ctx.env,
          signal: ctx.signal,
          log: ctx.log,
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

function report(s: RestoreSummary, json: boolean | undefined, ctx: CliContext): void {
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
  if (s.replacedAside) lines.push(`previous database kept as ${JSON.stringify(s.replacedAside)}`);
  ctx.stdout(`${lines.join('\n')}\n`);
}

export interface VerifyFlags extends SourceFlags, Pick<ServerFlags, 'pgBin' | 'pgRestoreCommand'> {
  json?: boolean;
}

/** `coffer verify`: one backup, `latest`, or `all`. Fails if any fails. */
export async function runVerifyCommand(flags: VerifyFlags, ctx: CliContext): Promise<Array<VerifyResult & { id: string | null }>> {
  const identities = await loadIdentities(flags, ctx);
  const t = tools(flags, ctx);
  const results: Array<VerifyResult & { id: string | null }> = [];
  const verifyOne = async (source: RestoreSource, id: string | null): Promise<void> => {
    const r = await runVerify({ source, identities, tools: t, env: ctx.env, signal: ctx.signal, log: ctx.log });
    ctx.log.info('backup verified', { id: id ?? undefined, bytes: r.storedBytes, archive: r.archiveBytes, toc: r.tocEntries });
    results.push({ ...r, id });
  };
  if (flags.backup === 'all') {
    const repo = resolveRepository(flags.from, ctx.env, './backups');
    const store: ObjectStore = await openStore(repo, resolveS3Settings(flags, ctx.env));
    try {
      const entries: BackupEntry[] = await listBackups(store, { database: flags.db, signal: ctx.signal });
      if (entries.length === 0) throw new UsageError(`no completed backups in ${store.location}`);
      for (const entry of entries) await verifyOne({ kind: 'repository', store, entry }, entry.id);
    } finally {
      store.close();
    }
  } else {
    await withSource(flags, ctx, (source) => verifyOne(source, source.kind === 'repository' ? source.entry.id : null));
  }
  if (flags.json) ctx.stdout(`${JSON.stringify(results, null, 2)}\n`);
  else for (const r of results) ctx.stdout(`ok  ${r.id ?? flags.file}  ${formatBytes(r.storedBytes)}  ${r.tocEntries} TOC entries, ${r.tables} tables\n`);
  return results;
}

export interface DrillFlags extends SourceFlags, ServerFlags {
  smoke?: string[];
  jobs?: string;
  resultFile?: string;
}

/** One drill record (JSON). */
export interface DrillResult {
  ok: boolean;
  startedAt: string;
  durationMs: number;
  backupId: string | null;
  database: string | null;
  storedBytes: number;
  archiveBytes: number;
  tables: number;
  rows: Array<{ table: string; rows: number }>;
  checks: RestoreSummary['checks'] | null;
  error: string | null;
}

/**
 * `coffer drill`: restores the latest (or chosen) backup into a scratch database, runs the
 * checks, records the result, and drops the database whatever happened.
 */
export async function runDrillCommand(flags: DrillFlags, ctx: CliContext): Promise<DrillResult> {
  const started = new Date();
  const identities = await loadIdentities(flags, ctx);
  const conn = serverConnection(flags);
  const t = tools(flags, ctx);
  const target = `coffer_drill_${randomBytes(4).toString('hex')}`;
  const admin = new PgAdmin(t, conn, flags.maintenanceDb ?? 'postgres', ctx.env);
  let result: DrillResult = {
    ok: false,
    startedAt: started.toISOString(),
    durationMs: 0,
    backupId: null,
    database: null,
    storedBytes: 0,
    archiveBytes: 0,
    tables: 0,
    rows: [],
    checks: null,
    error: null,
  };
  let failure: unknown;
  try {
    await withSource(flags, ctx, async (source) => {
      if (source.kind === 'repository') {
        result.backupId = source.entry.id;
        result.database = source.entry.database;
      }
      const s = await runRestore({
        source,
        identities,
        tools: t,
        conn,
        maintenanceDb: flags.maintenanceDb ?? 'postgres',
        target,
        replace: false,
        smoke: flags.smoke ?? [],
        noOwner: true,
        noPrivileges: true,
        jobs: parsePositiveInt(flags.jobs, '--jobs', 1, 64),
        env: ctx.env,
        signal: ctx.signal,
        log: ctx.log,
      });
      result = { ...result, ok: true, storedBytes: s.storedBytes, archiveBytes: s.archiveBytes, tables: s.tables, rows: s.largestTables, checks: s.checks };
    });
  } catch (err) {
    failure = err;
    result.error = (err as Error).message;
  } finally {
    try {
      await admin.drop(target);
    } catch (e) {
      ctx.log.error(`could not drop the drill database ${target}; drop it by hand`, { error: (e as Error).message });
    }
    result.durationMs = Date.now() - started.getTime();
  }
  const text = `${JSON.stringify(result, null, 2)}\n`;
  if (flags.resultFile) {
    const file = path.resolve(ctx.cwd, flags.resultFile);
    const tmp = `${file}.tmp-${process.pid}`;
    await fsp.writeFile(tmp, text, { mode: 0o600 });
    await fsp.rename(tmp, file);
  }
  ctx.stdout(text);
  if (failure !== undefined) throw failure;
  return result;
}
