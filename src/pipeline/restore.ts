import { createReadStream, createWriteStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { tmpdir } from 'node:os';
import { pipeline as streamPipelineCb, type Readable } from 'node:stream';
import { finished as streamFinished, pipeline as streamPipeline } from 'node:stream/promises';
import type { BackupEntry } from '../catalog/catalog.js';
import { DatabaseError, IntegrityError, StorageError, UsageError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { PgAdmin, derivedName, quoteIdent, quoteLiteral, scratchName } from '../pg/admin.js';
import { ArchiveOffsetScanner, patchArchiveOffsets } from '../pg/archive-offsets.js';
import type { ConnectionSpec, PgTarget } from '../pg/connection.js';
import { archiveText, createStatement, isUtf8, definitionFromArchive, definitionFromManifest, describeLocale, propertiesScript, TARGET_DB_VAR, type DatabaseDefinition } from '../pg/database-props.js';
import { tableNames, smokeQuery, tableStats } from '../pg/inspect.js';
import { explainRestoreError, spawnPgRestore, spawnPgRestoreJobs, spawnTocList, tocTables } from '../pg/pg-restore.js';
import { psqlQuery, spawnPsqlScript } from '../pg/psql.js';
import type { PgTools } from '../pg/tools.js';
import { Supervisor } from '../run/supervisor.js';
import type { BackupManifest } from '../catalog/manifest.js';
import { compactTimestamp } from '../catalog/layout.js';
import { resumableGet } from '../store/resumable.js';
import type { ObjectStore } from '../store/object-store.js';
import { openArchive, type ExpectedArchive, type OpenedArchive } from './archive.js';
import { FanOut, type FanOutTarget } from './fanout.js';
import { plainSqlFilter, type PlainSqlFilter } from './sql-filter.js';

/** Where the encrypted backup comes from. */
export type RestoreSource =
  | { kind: 'repository'; store: ObjectStore; entry: BackupEntry }
  | { kind: 'file'; path: string };

export interface RestoreChecks {
  /**
   * Tables named in the archive's table of contents (TABLE entries: ordinary and partitioned
   * tables); null for a plain-SQL archive, which has no table of contents.
   */
  tocTables: number | null;
  /** All of them exist in the restored database (null: nothing to check, plain SQL). */
  tocTablesPresent: boolean | null;
  smoke: Array<{ sql: string; output: string }>;
}

export interface RestoreSummary {
  target: string;
  backupId: string | null;
  replacedAside: string | null;
  storedBytes: number;
  archiveBytes: number;
  durationMs: number;
  /**
   * Tables of the restored database as the archive's table of contents (and the manifest) count
   * them: ordinary and partitioned tables outside the system schemas, not those an extension creates.
   */
  tables: number;
  /** The largest ordinary tables (partitions included, not their partitioned parents), by size. */
  largestTables: Array<{ table: string; rows: number }>;
  checks: RestoreChecks;
}

export interface RestoreRequest {
  source: RestoreSource;
  identities: string[];
  tools: PgTools;
  conn: ConnectionSpec;
  /** Database used for CREATE/DROP/RENAME (default `postgres`). */
  maintenanceDb: string;
  target: string;
  replace: boolean;
  smoke: string[];
  noOwner: boolean;
  noPrivileges: boolean;
  /** >1: spool to a private file and run `pg_restore -j`. */
  jobs: number;
  spoolDir?: string;
  /** Apply the backup's globals (roles) before restoring. */
  withGlobals?: boolean;
  zstdCommand?: string[];
  /** The environment children start from (the config layer's, without coffer's secrets); each child gets only its part. */
  env: NodeJS.ProcessEnv;
  signal: AbortSignal;
  log: Logger;
  onProgress?: (storedBytes: number) => void;
}

/**
 * Restores a backup into a fresh database, atomically:
 *
 *   store.get ─▶ sha256 ─▶ age decrypt ─▶ zstd -d ─▶ whole-archive check ─▶ pg_restore ─▶ checks ─▶ rename
 *   (header checked first)                                                 (into <target>__restoring_<rand>)
 *
 * The target name appears only after everything succeeded. On any failure the run's
 * supervisor tears every child down (awaited), then the scratch database is dropped and the
 * spool removed; the target (if it existed) is untouched. The error reported is the cause
 * (a stop signal, then damage, then storage, …), not what it provoked downstream.
 */
export async function runRestore(req: RestoreRequest): Promise<RestoreSummary> {
  const started = Date.now();
  const env = req.env;
  const admin = new PgAdmin(req.tools, req.conn, req.maintenanceDb, env);
  const sup = new Supervisor(req.signal);
  let scratch: string | undefined;
  let spool: string | undefined;
  try {
    // 0. A data-only backup has rows but no tables: it cannot make a database on its own. It is
    //    loaded into a database that already has the schema (--into-existing, ./load-data.ts).
    if (req.source.kind === 'repository' && req.source.entry.manifest.kind === 'data-only') {
      throw new UsageError(`backup ${req.source.entry.id} is data-only: it holds rows but no tables, so it cannot be restored into a new database`, {
        hint: `restore the schema first (coffer restore --kind schema-only --target-db DB), then load this backup into it with coffer restore --backup ${req.source.entry.id} --into-existing DB`,
      });
    }
    if (req.source.kind === 'repository') {
      for (const w of req.source.entry.manifest.warnings ?? []) req.log.warn(`the backup was taken with a warning: ${w}`, { backup: req.source.entry.id });
    }
    // 1. Refuse an existing target before anything else, unless asked to replace it.
    const targetExists = await admin.exists(req.target);
    if (targetExists && !req.replace) {
      throw new UsageError(`database ${JSON.stringify(req.target)} already exists; refusing to restore over it`, {
        hint: 'choose another --target-db, or pass --replace to keep the old one aside as <name>__before_<time>',
      });
    }
    await reportLeftovers(admin, req.target, req.log);
    // 2. Open the backup: the age header is authenticated here, before any database exists.
    const opened = await openSource(req, sup, env);
    req.log.info('backup opened', { format: opened.format, compressed: opened.compressed, target: req.target });
    if (req.jobs > 1) spool = await prepareSpool(req, opened);

    // The database as it was: encoding and locale now, owner, ACL and settings before the swap.
    const definition = await databaseDefinition(req, opened);

    // 3. Globals first (roles the dump refers to), then a scratch database.
    if (req.withGlobals) await applyGlobals(req, admin, env, sup);
    throwIfFailed(sup);
    scratch = scratchName(req.target);
    await createScratch(admin, scratch, definition, req.log);
    throwIfFailed(sup);
    req.log.info('restoring into a scratch database', { scratch, database: describeLocale(definition) });

    // 4. The data.
    const tocText = await restoreInto(req, opened, scratch, spool, env, sup);
    const archiveStats = opened.stats();

    // 5. Checks on the scratch database, then the swap.
    const checks = await runChecks(req, scratch, tocText, env, sup.signal);
    if (definition) await applyDatabaseProperties(req, admin, scratch, definition);
    const aside = targetExists ? derivedName(req.target, `__before_${compactTimestamp(new Date())}`) : null;
    throwIfFailed(sup);
    await admin.swapIn(scratch, req.target, aside ?? undefined);
    scratch = undefined;
    if (aside) req.log.warn('the previous database was kept aside', { database: aside });
    const stats = await tableStats(req.tools, { conn: req.conn, database: req.target, env });
    return {
      target: req.target,
      backupId: req.source.kind === 'repository' ? req.source.entry.id : null,
      replacedAside: aside,
      storedBytes: archiveStats.storedBytes,
      archiveBytes: archiveStats.archiveBytes,
      durationMs: Date.now() - started,
      tables: stats.tables,
      largestTables: stats.largest,
      checks,
    };
  } catch (err) {
    sup.fail(err);
    await sup.teardown();
    throw explainExcludedData(req.source, explainRestoreError(sup.cause(), req));
  } finally {
    await sup.teardown();
    if (scratch !== undefined) await dropScratch(admin, scratch, req.log);
    if (spool) await fsp.rm(path.dirname(spool), { recursive: true, force: true });
  }
}

/**
 * What the backup says of the database itself: a custom archive's DATABASE entries (read from
 * its table of contents, before any database exists), else the manifest's encoding and locale.
 */
async function databaseDefinition(req: RestoreRequest, opened: OpenedArchive): Promise<DatabaseDefinition | undefined> {
  const entries = await opened.databaseEntries();
  const name = req.source.kind === 'repository' ? req.source.entry.manifest.database : '';
  const fromArchive = entries ? definitionFromArchive(entries) : undefined;
  if (fromArchive) return fromArchive;
  const locale = req.source.kind === 'repository' ? req.source.entry.manifest.postgres.locale : undefined;
  if (locale) return definitionFromManifest(name, locale);
  req.log.warn("the backup does not say how its database was created (encoding, locale): the restored database gets the server's defaults");
  return undefined;
}

/** Creates the scratch database with the backup's encoding and locale, or says why the server cannot. */
async function createScratch(admin: PgAdmin, scratch: string, def: DatabaseDefinition | undefined, log: Logger): Promise<void> {
  const { sql, dropped } = createStatement(scratch, def);
  for (const d of dropped) log.warn(`the backup's database had ${d}; the restored one uses the server's default tablespace`);
  try {
    await admin.create(scratch, sql);
  } catch (err) {
    const msg = (err as Error).message;
    if (def && /locale|encoding|collation|LC_COLLATE|LC_CTYPE|ICU/i.test(msg)) {
      throw new DatabaseError(`this server cannot create the backup's database as it was (${describeLocale(def)}): ${msg.replace(/^create database "[^"]*": /, '')}`, {
        cause: err,
        hint: 'install that locale on the database server (locale-gen or localedef, then restart PostgreSQL) and run the restore again',
      });
    }
    throw err;
  }
}

/**
 * Gives the scratch database the backup's owner, ACL, settings, role-in-database settings,
 * connection limit and comment (after the data and the checks: a setting such as
 * default_transaction_read_only must not apply to the restore itself). Settings of roles
 * this server lacks are left out, with a warning: nobody can use them.
 */
async function applyDatabaseProperties(req: RestoreRequest, admin: PgAdmin, scratch: string, def: DatabaseDefinition): Promise<void> {
  let script = propertiesScript(def, { noOwner: req.noOwner, noPrivileges: req.noPrivileges });
  if (script === '') return;
  const roleLines = script.split('\n').filter((l) => /^ALTER ROLE /.test(l));
  if (roleLines.length > 0) {
    const roles = await admin.roles();
    // Names in the archive's encoding; a non-ASCII name of a non-UTF8 archive is left to the server.
    const lacks = (raw: string): boolean => {
      const name = archiveText(raw, def.clientEncoding);
      return (/^[\x00-\x7f]*$/.test(raw) || isUtf8(def.clientEncoding)) && !roles.has(name);
    };
    const missing = roleLines.filter((l) => {
      const role = roleOfAlterRole(l);
      return role !== undefined && lacks(role);
    });
    for (const l of missing) req.log.warn('a setting of a role this server does not have was not applied', { role: archiveText(roleOfAlterRole(l)!, def.clientEncoding) });
    if (missing.length > 0) script = script.split('\n').filter((l) => !missing.includes(l)).join('\n');
  }
  // Sent to the scratch database itself, in the archive's own bytes and client encoding: text
  // in shared catalogs (the comment) is stored as the database's encoding has it, and a
  // SQL_ASCII or LATIN1 comment comes back byte for byte. psql names the database.
  const sql = [
    `SET client_encoding = ${quoteLiteral(def.clientEncoding)};`,
    `SELECT quote_ident(current_database()) AS ${TARGET_DB_VAR} \\gset`,
    'BEGIN;',
    script,
    'COMMIT;',
    '',
  ].join('\n');
  await psqlQuery(req.tools, req.conn, scratch, Buffer.from(sql, 'latin1'), { env: req.env, what: "apply the backup's database properties (owner, privileges, settings, comment)" });
  req.log.info("the backup's database properties applied", { owner: req.noOwner ? null : def.owner, privileges: !req.noPrivileges && def.acl !== null, settings: def.properties !== null, comment: def.comment !== null });
}

/** The role of pg_dump's `ALTER ROLE <role> IN DATABASE … SET …;` line (quoted or bare). */
export function roleOfAlterRole(line: string): string | undefined {
  const q = /^ALTER ROLE "((?:[^"]|"")*)" IN DATABASE /.exec(line);
  if (q) return q[1]!.replace(/""/g, '"');
  const b = /^ALTER ROLE ([a-z_][a-z0-9_$]*) IN DATABASE /.exec(line);
  return b?.[1];
}

/**
 * Scratch databases of earlier restores of the same target that are still there: a restore
 * killed with SIGKILL (or whose server went away for longer than the cleanup waits) cannot drop
 * its own. They are named, not dropped: another restore of the same target may be running.
 */
async function reportLeftovers(admin: PgAdmin, target: string, log: Logger): Promise<void> {
  const prefix = derivedName(target, `__restoring_${'0'.repeat(8)}`).slice(0, -8);
  const out = await admin.query(
    `SELECT datname FROM pg_database WHERE left(datname, ${[...prefix].length}) = ${quoteLiteral(prefix)} AND datname ~ '__restoring_[0-9a-f]{8}$';`,
    'look for scratch databases of earlier restores',
  );
  for (const name of out.split('\n').filter((n) => n === `${prefix}${n.slice(-8)}`)) {
    log.warn(`a scratch database of an earlier restore of ${JSON.stringify(target)} is still there (that restore was killed before it could drop it); once no restore of it runs, drop it: DROP DATABASE ${quoteIdent(name)} WITH (FORCE);`, { database: name });
  }
}

/** How long cleanup keeps trying to reach a server that went away (a restart mid-restore). */
const DROP_RETRY_MS = 30_000;

/**
 * Drops the scratch database, retrying while the server cannot be reached (it may be
 * restarting: the restore failed because it went away). Logs what it could not do.
 */
async function dropScratch(admin: PgAdmin, scratch: string, log: Logger): Promise<void> {
  const until = Date.now() + DROP_RETRY_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      await admin.drop(scratch);
      log.info('scratch database dropped', { scratch });
      return;
    } catch (e) {
      const msg = (e as Error).message;
      const unreachable = /could not connect|connection refused|No such file or directory|server closed the connection|the database system is (starting up|shutting down|in recovery)|terminating connection/i.test(msg);
      if (!unreachable || Date.now() >= until) {
        log.error(`could not drop the scratch database ${JSON.stringify(scratch)}; drop it by hand: DROP DATABASE ${JSON.stringify(scratch)} WITH (FORCE);`, { error: msg });
        return;
      }
      if (attempt === 1) log.warn('the server cannot be reached to drop the scratch database; retrying', { scratch, error: msg });
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** Stops a run whose supervisor has recorded a failure (a stage, or the stop signal). */
function throwIfFailed(sup: Supervisor): void {
  if (sup.failed) throw sup.cause();
}

/** What the manifest promises about a backup's content, for the whole-archive check. */
export function expectedArchive(m: BackupManifest): ExpectedArchive {
  return { sha256: m.dump.sha256, size: m.dump.size, dumpBytes: m.dump.dumpBytes, format: m.kind === 'custom' ? 'custom' : 'sql' };
}

/** Opens the encrypted source (repository object or local file) as a checked archive stream. */
export async function openSource(req: Pick<RestoreRequest, 'source' | 'identities' | 'zstdCommand' | 'log' | 'onProgress'>, sup: Supervisor, env: NodeJS.ProcessEnv): Promise<OpenedArchive> {
  let ciphertext: Readable;
  let expected: ExpectedArchive | undefined;
  if (req.source.kind === 'repository') {
    const m = req.source.entry.manifest;
    expected = expectedArchive(m);
    ciphertext = resumableGet(req.source.store, m.dump.key, m.dump.size, { signal: sup.signal, log: req.log, onProgress: req.onProgress });
  } else {
    try {
      await fsp.access(req.source.path);
    } catch {
      throw new UsageError(`--file ${req.source.path}: no such file or not readable`);
    }
    ciphertext = createReadStream(req.source.path, { highWaterMark: 1024 * 1024, signal: sup.signal });
    let n = 0;
    if (req.onProgress) ciphertext.on('data', (c: Buffer) => req.onProgress!((n += c.length)));
  }
  return openArchive({ ciphertext, expected, identities: req.identities, zstdCommand: req.zstdCommand, sup, env });
}

/** Spool for `pg_restore -j`: a private directory, free space checked against the manifest. */
async function prepareSpool(req: RestoreRequest, opened: OpenedArchive): Promise<string> {
  if (opened.format !== 'custom') throw new UsageError('--jobs works with custom-format backups only (this one is plain SQL)');
  const base = req.spoolDir ?? tmpdir();
  await fsp.mkdir(base, { recursive: true });
  const dir = await fsp.mkdtemp(path.join(base, 'coffer-spool-'));
  await fsp.chmod(dir, 0o700);
  const need = req.source.kind === 'repository' ? req.source.entry.manifest.dump.dumpBytes : 0;
  const st = await fsp.statfs(dir);
  const free = Number(st.bavail) * Number(st.bsize);
  if (need > 0 && free < need * 1.05) {
    await fsp.rm(dir, { recursive: true, force: true });
    throw new StorageError('Failed', `not enough free space in ${base} to spool the archive: ${free} bytes free, ${need} needed`, {
      hint: 'use --spool-dir on a larger filesystem, or restore without --jobs (streams, no spool)',
    });
  }
  return path.join(dir, 'archive.dump');
}

/** Everything a readable yields, as text (a child's small stdout). */
function collectText(s: Readable): Promise<string> {
  const out: Buffer[] = [];
  s.on('data', (b: Buffer) => out.push(b));
  return new Promise((resolve) => {
    s.once('end', () => resolve(Buffer.concat(out).toString('utf8')));
    s.once('close', () => resolve(Buffer.concat(out).toString('utf8')));
  });
}

/**
 * Feeds the archive to pg_restore (streamed) or to a spool file then `pg_restore -j`; a side
 * branch gives the table of contents to `pg_restore --list`. Returns the TOC text ('' for SQL).
 * pg_restore's input ends only when the whole archive checked out: damage found at the last
 * byte still fails the run, with pg_restore torn down by the supervisor.
 */
async function restoreInto(req: RestoreRequest, opened: OpenedArchive, scratch: string, spool: string | undefined, env: NodeJS.ProcessEnv, sup: Supervisor): Promise<string> {
  const db: PgTarget = { conn: req.conn, database: scratch, env };
  const targets: FanOutTarget[] = [];
  const waits: Promise<unknown>[] = opened.children.map((c) => c.done);
  let toc: Promise<string> = Promise.resolve('');

  if (opened.format === 'custom') {
    // It reads the archive only: no connection, no credentials.
    const list = spawnTocList(sup, req.tools, env);
    toc = collectText(list.stdout!);
    waits.push(list.done);
    targets.push({ name: 'toc', stream: list.stdin!, kind: 'child' });
  }
  let sqlFilter: PlainSqlFilter | undefined;
  let spoolErr: NodeJS.ErrnoException | undefined;
  let offsets: ArchiveOffsetScanner | undefined;
  const spoolStarted = Date.now();
  if (spool) {
    const file = createWriteStream(spool, { flags: 'wx', mode: 0o600 });
    file.on('error', (err) => (spoolErr ??= err));
    targets.push({ name: 'spool', stream: file, kind: 'file' });
    // Sees the same bytes as the spool file, to add the data offsets pg_dump could not write.
    offsets = new ArchiveOffsetScanner();
    targets.push({ name: 'offsets', stream: offsets.sink(), kind: 'file' });
  } else {
    const restore = opened.format === 'custom' ? spawnPgRestore(sup, req.tools, db, req) : spawnPsqlScript(sup, req.tools, db, { what: 'psql (restore)' });
    waits.push(restore.done);
    // Plain SQL goes to psql, which has no --no-owner/--no-privileges: the filter removes what
    // pg_restore would skip. It ends (and the fan-out stops feeding it) when psql stops reading.
    const filter = opened.format === 'sql' ? plainSqlFilter({ noOwner: req.noOwner, noPrivileges: req.noPrivileges }) : undefined;
    if (filter) {
      streamPipelineCb(filter, restore.stdin!, () => undefined);
      sqlFilter = filter;
    }
    targets.push({ name: 'restore', stream: filter ?? restore.stdin!, kind: 'child' });
  }

  try {
    await Promise.all([streamPipeline(opened.archive, new FanOut(targets), { signal: sup.signal }), ...waits]);
  } catch (err) {
    // A failed spool write (disk full) is the cause; what the other stages report is its echo.
    throw spool && spoolErr ? spoolError(spool, spoolErr) : err;
  }
  const tocText = await toc;
  if (sqlFilter) req.log.info('plain SQL filtered for --no-owner/--no-privileges (as pg_restore would)', { ownerStatements: sqlFilter.counts.ownership, privilegeStatements: sqlFilter.counts.privileges });

  if (spool) {
    const dataOffsets = offsets ? addDataOffsets(spool, offsets, req.log) : 0;
    req.log.info('archive spooled', { bytes: opened.stats().archiveBytes, seconds: (Date.now() - spoolStarted) / 1000, dataOffsets });
    const restoreStarted = Date.now();
    await spawnPgRestoreJobs(sup, req.tools, db, req, req.jobs, spool).done;
    req.log.info(`pg_restore --jobs=${req.jobs} finished`, { seconds: (Date.now() - restoreStarted) / 1000 });
  }
  return tocText;
}

/**
 * Writes each data block's offset into the spooled archive's TOC, as pg_dump does when its
 * output is a file: without them every `pg_restore -j` worker scans the archive for its
 * blocks, chunk by chunk. Best effort: the restore goes on (slower) without them. Returns
 * the number of offsets written.
 */
function addDataOffsets(spool: string, offsets: ArchiveOffsetScanner, log: Logger): number {
  try {
    const r = patchArchiveOffsets(spool, offsets.end());
    if ('patched' in r) return r.patched;
    log.info('spooled archive left without data offsets (pg_restore --jobs works, more slowly)', { reason: r.skipped });
  } catch (err) {
    log.info('spooled archive left without data offsets (pg_restore --jobs works, more slowly)', { reason: (err as Error).message });
  }
  return 0;
}

/** A write error of the spool file, as a one-line StorageError saying what to do. */
function spoolError(spool: string, err: NodeJS.ErrnoException): StorageError {
  const dir = path.dirname(path.dirname(spool));
  const hint = 'use --spool-dir on a filesystem with more free space, or restore without --jobs (streams, no spool)';
  if (err.code === 'ENOSPC' || err.code === 'EDQUOT') {
    return new StorageError('Failed', `no space left on the spool directory ${dir} while spooling the archive for --jobs`, { cause: err, hint });
  }
  return new StorageError('Failed', `cannot write the spool file in ${dir}: ${err.code ?? err.message}`, { cause: err, hint });
}

/**
 * A foreign key that fails on a backup taken with --exclude-table-data of the table it
 * references (the manifest's warning named it): say so, and what to do.
 */
function explainExcludedData(source: RestoreSource, err: unknown): unknown {
  if (!(err instanceof DatabaseError) || source.kind !== 'repository' || !/violates foreign key constraint|is not present in table/.test(err.message)) return err;
  const w = (source.entry.manifest.warnings ?? []).find((x) => x.startsWith('--exclude-table-data:'));
  if (!w) return err;
  return new DatabaseError(err.message, {
    cause: err,
    hint: `this backup was taken with --exclude-table-data of a table that a foreign key references, and cannot be restored as it is (${w.replace(/^--exclude-table-data: /, '')})`,
  });
}

/**
 * The archive's tables against the manifest's count of the database's tables when the backup
 * started: an archive without tables from a database that had some is not a backup of it.
 * Returns a note when the counts differ otherwise (a table created or dropped during the
 * backup explains that).
 */
export function checkTableCount(source: RestoreSource, archiveTables: number, format: 'custom' | 'sql'): string | undefined {
  if (source.kind !== 'repository' || format !== 'custom') return undefined;
  const m = source.entry.manifest;
  const want = m.postgres.tables;
  if (m.kind !== 'custom' || want === undefined) return undefined;
  if (want > 0 && archiveTables === 0) {
    throw new IntegrityError(`the backup's archive holds no tables, but database ${JSON.stringify(m.database)} had ${want} when it was taken`, { hint: 'this backup is not a copy of the database; use another backup' });
  }
  return archiveTables === want ? undefined : `the archive has ${archiveTables} tables; the database had ${want} when the backup started`;
}

async function runChecks(req: RestoreRequest, db: string, toc: string, env: NodeJS.ProcessEnv, signal: AbortSignal): Promise<RestoreChecks> {
  const entries = tocTables(toc);
  const note = checkTableCount(req.source, entries.length, toc === '' ? 'sql' : 'custom');
  if (note) req.log.warn(note);
  if (entries.length > 0) {
    const have = await tableNames(req.tools, { conn: req.conn, database: db, env }, signal);
    const missing = entries.filter((e) => !have.some((h) => e === h || e.startsWith(`${h} `)));
    if (missing.length > 0) {
      throw new IntegrityError(`${missing.length} table(s) of the backup are missing after the restore, e.g. ${JSON.stringify(missing[0])}`);
    }
  }
  const smoke: RestoreChecks['smoke'] = [];
  for (const sql of req.smoke) {
    const output = await smokeQuery(req.tools, { conn: req.conn, database: db, env }, sql, signal);
    req.log.info('smoke check passed', { sql, output });
    smoke.push({ sql, output });
  }
  return toc === '' ? { tocTables: null, tocTablesPresent: null, smoke } : { tocTables: entries.length, tocTablesPresent: true, smoke };
}

/** Applies the globals object of the backup (roles) to the server; existing roles are kept. */
async function applyGlobals(req: RestoreRequest, admin: PgAdmin, env: NodeJS.ProcessEnv, sup: Supervisor): Promise<void> {
  if (req.source.kind !== 'repository' || !req.source.entry.manifest.globals) {
    throw new UsageError('--with-globals: this backup has no globals', { hint: 'take backups with --globals to include roles' });
  }
  const g = req.source.entry.manifest.globals;
  const opened = await openArchive({
    ciphertext: resumableGet(req.source.store, g.key, g.size, { signal: sup.signal, log: req.log }),
    expected: { sha256: g.sha256, size: g.size, dumpBytes: g.dumpBytes, format: 'sql' },
    identities: req.identities,
    zstdCommand: req.zstdCommand,
    sup,
    env,
  });
  const [sql] = await Promise.all([collectText(opened.archive), streamFinished(opened.archive), ...opened.children.map((c) => c.done)]);
  // Roles that already exist (the superuser, at least) make CREATE ROLE fail: run each
  // statement on its own, keep going, and report what was skipped.
  const out = spawnPsqlScript(sup, req.tools, { conn: req.conn, database: admin.maintenanceDb, env }, { what: 'psql (globals)', continueOnError: true });
  out.stdin!.end(sql);
  await out.done;
  const errors = out.stderr.text().split('\n').filter((l) => /ERROR:/.test(l));
  for (const e of errors) req.log.warn('globals: statement skipped', { error: e.replace(/^.*ERROR:\s*/, '') });
  req.log.info('globals applied', { skipped: errors.length });
}

/** Writes the decrypted, decompressed archive to a file instead of a database. */
export async function restoreToFile(
  req: Pick<RestoreRequest, 'source' | 'identities' | 'zstdCommand' | 'log' | 'onProgress' | 'signal' | 'env'>,
  output: string,
): Promise<{ bytes: number; format: 'custom' | 'sql' }> {
  const file = path.resolve(output);
  try {
    await fsp.access(file);
    throw new UsageError(`--output ${output} already exists; refusing to overwrite`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
  }
  const sup = new Supervisor(req.signal);
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.coffer-tmp-${process.pid}`);
  try {
    return await sup.run(async () => {
      const opened = await openSource(req, sup, req.env);
      const fan = new FanOut([{ name: 'file', stream: createWriteStream(tmp, { flags: 'wx', mode: 0o600 }), kind: 'file' }]);
      await Promise.all([streamPipeline(opened.archive, fan, { signal: sup.signal }), ...opened.children.map((c) => c.done)]);
      await fsp.link(tmp, file);
      return { bytes: opened.stats().archiveBytes, format: opened.format };
    });
  } finally {
    await fsp.rm(tmp, { force: true });
  }
}
