import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { pipeline as streamPipelineCb } from 'node:stream';
import { pipeline as streamPipeline } from 'node:stream/promises';
import { compactTimestamp } from '../catalog/layout.js';
import { DatabaseError, IntegrityError, UsageError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { PgAdmin, SWAP_WARMUP, derivedName, scratchName } from '../pg/admin.js';
import { scratchLoadTarget, type ConnectionSpec } from '../pg/connection.js';
import { describeLocale, type DatabaseDefinition } from '../pg/database-props.js';
import { INSPECT_WARMUP, inspectRestored, smokeQuery, tableKey, tableOfKey, type InspectRequest, type TableStats } from '../pg/inspect.js';
import { explainRestoreError, spawnPgRestore, spawnPgRestoreJobs, type RestoreFlags } from '../pg/pg-restore.js';
import { PreparedPsql, psqlQuery, runSqlFile, spawnPsqlScript } from '../pg/psql.js';
import { dataBlockSizes, decodeArchiveText, decodeToc } from '../pg/archive-toc.js';
import { checkArchiveHeader, checkManifestVersions, VersionError, type LocalVersions } from '../pg/versions.js';
import { clientVersion } from '../pg/server.js';
import { isSelective, selectEntries, type Selection, type SelectionSpec } from './selection.js';
import type { PgTools } from '../pg/tools.js';
import { Supervisor } from '../run/supervisor.js';
import type { OpenedArchive } from './archive.js';
import { FanOut, type FanOutTarget } from './fanout.js';
import { APPLY_PROPERTIES, applyGlobals, createScratch, databaseDefinition, databasePropertiesSql, dropScratch, logPropertiesApplied, surveyTarget } from './restore-database.js';
import { checkTableCount, openSource, readGlobals, type RestoreSource } from './restore-source.js';
import { openRangedSource, type RangedDownload } from './ranged-source.js';
import { plainSqlFilter, type PlainSqlFilter } from './sql-filter.js';
import { Spool } from './spool.js';
import { TocGate } from './toc-gate.js';

export interface RestoreChecks {
  /**
   * Tables named in the archive's table of contents (TABLE entries: ordinary and partitioned
   * tables); null for a plain-SQL archive, which has no table of contents.
   */
  tocTables: number | null;
  /** All of them exist in the restored database (null: nothing to check, plain SQL). */
  tocTablesPresent: boolean | null;
  smoke: Array<{ sql: string; output: string }>;
  /** The --sanitize file that ran in the scratch database before the rename (null: none). */
  sanitized: string | null;
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
  /** A selective restore: how many TOC entries were restored, and the tables among them (null: the whole archive). */
  selection: { entries: number; tables: string[]; leftOut: string[]; download: RangedDownload | 'whole' } | null;
  /** Where the time went, in milliseconds, one phase after the other ({@link RestorePhases}). */
  phases: RestorePhases;
}

/**
 * The phases of a restore, in milliseconds. `transfer` and `restore` grow with the backup's size
 * (what a prediction scales); the others do not, or hardly.
 * - `setup`: the survey, opening the backup (the key unwrapped), the scratch database created;
 * - `transfer`: download, decryption, decompression and the archive check, with pg_restore
 *   loading the data as it streams in (with --jobs: the spool file written);
 * - `restore`: pg_restore after its input ended: indexes, constraints, the rest of post-data
 *   (with --jobs: the whole parallel pg_restore);
 * - `checks`: the checks and summary queries, properties, --sanitize, --smoke;
 * - `swap`: the rename into place.
 */
export interface RestorePhases {
  setup: number;
  transfer: number;
  restore: number;
  checks: number;
  swap: number;
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
  /** `--table`, `--schema`, `--exclude-table`, `--list-file`: restore only these entries (custom archives). */
  selection?: SelectionSpec;
  /** `--sanitize FILE`: SQL run in the scratch database before the rename (absolute path). */
  sanitize?: string;
  /** A selective restore downloads the whole backup even when it has an archive index. */
  wholeDownload?: boolean;
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
  /** Roles created by --with-globals (named if the restore then fails: they stay on the server). */
  let rolesCreated: string[] = [];
  /** The scratch database's creation (settled before it may be dropped). */
  let creating: Promise<void> | undefined;
  /** Settled by `creating` (or the run's failure before it): what a pg_restore fed early waits for. */
  let created: ReturnType<typeof deferred> | undefined;
  /** psql started ahead: the checks' (connected to the scratch database), the rename's. */
  let inspector: PreparedPsql | undefined;
  const prepared: PreparedPsql[] = [];
  /** What the checks need from the archive, read while pg_restore finishes (settled before the scratch database may be dropped). */
  let preparing: Promise<CheckInputs> | undefined;
  let spool: Spool | undefined;
  let listDir: string | undefined;
  try {
    // 0. A data-only backup has rows but no tables: it cannot make a database on its own. It is
    //    loaded into a database that already has the schema (--into-existing, ./load-data.ts).
    if (req.source.kind === 'repository' && req.source.entry.manifest.kind === 'data-only') {
      throw new UsageError(`backup ${req.source.entry.id} is data-only: it holds rows but no tables, so it cannot be restored into a new database`, {
        hint: `restore the schema first (coffer restore --kind schema-only --target-db DB), then load this backup into it with coffer restore --backup ${req.source.entry.id} --into-existing DB`,
      });
    }
    // The maintenance database is where the rename runs from: it cannot be renamed itself.
    if (req.target === req.maintenanceDb) {
      throw new UsageError(`--target-db ${JSON.stringify(req.target)} is the maintenance database coffer creates, renames and drops databases from`, {
        hint: 'pass --maintenance-db with another database that exists (template1, for instance)',
      });
    }
    if (req.source.kind === 'repository') {
      for (const w of req.source.entry.manifest.warnings ?? []) req.log.warn(`the backup was taken with a warning: ${w}`, { backup: req.source.entry.id });
      // A full backup that left rows out on purpose: the restored tables are there, empty.
      const excluded = req.source.entry.manifest.dumpOptions?.excludeTableData ?? [];
      if (excluded.length > 0) {
        req.log.warn(`the backup was taken with --exclude-table-data: the rows of ${excluded.length === 1 ? 'this table are' : `these ${excluded.length} tables are`} not in it, so they are restored empty: ${excluded.join(', ')}`, { backup: req.source.entry.id });
      }
    }
    // 1. Refuse an existing target before anything else, unless asked to replace it. One query
    //    asks the server whether it exists, the server's version, and for scratch databases of
    //    earlier restores; the local pg_restore's version is read meanwhile.
    const manifest = req.source.kind === 'repository' ? req.source.entry.manifest : undefined;
    const selective = req.selection !== undefined && isSelective(req.selection);
    // A whole restore starts opening the backup (step 2) meanwhile: nothing touches a database
    // before the survey's refusals, which are reported first.
    const opening = selective ? undefined : openSource(req, sup, env);
    opening?.catch(() => undefined);
    // The survey and the scratch database's creation go through one psql (./pg/admin.ts),
    // started first: its connection takes the longest to be ready.
    admin.openSession(req.signal);
    const survey = surveyTarget(admin, req.target, req.log, req.signal);
    survey.catch(() => undefined);
    // The local pg_restore's version meanwhile (it answers slowly while the table of contents streams).
    const pgRestoreVersion = manifest?.kind === 'custom' ? clientVersion(req.tools.pgRestore, 'pg_restore', { env, signal: req.signal }) : undefined;
    pgRestoreVersion?.catch(() => undefined);
    const name = scratchName(req.target);
    const flags: RestoreFlags = { noOwner: req.noOwner, noPrivileges: req.noPrivileges };
    // 4. (prepared here) Once pg_restore has all the data (the archive was read and checked
    //    whole), while pg_restore finishes: the psql of the checks connects to the scratch
    //    database, and what the checks and the properties need is read from the archive.
    let selection: Selection | undefined;
    const prepareChecks = async (archive: OpenedArchive): Promise<CheckInputs> => {
      const definition = await databaseDefinition(req.source, archive, req.log);
      const properties = definition ? await databasePropertiesSql(admin, definition, req, req.log) : undefined;
      return { definition, properties, tables: await archiveTables(archive, selection), largest: await largestInArchive(archive, selection) };
    };
    const onInputEnd = (archive: OpenedArchive): void => {
      inspector = PreparedPsql.start(req.tools, req.conn, name, { env, signal: sup.signal, what: 'inspect the restored tables' });
      inspector.prime(INSPECT_WARMUP);
      preparing = prepareChecks(archive);
      preparing.catch(() => undefined);
    };
    // A whole restore of a custom-format backup starts pg_restore, on the scratch database's
    // name, as soon as the backup is open, and feeds it during the survey: pg_restore reads the
    // table of contents (2.7 MB for 4,000 tables, which the archive check parses too) while the
    // survey runs and the database is created, not after them. It connects only once it has
    // read the whole table of contents, whose last byte is held back until the database exists
    // (`created`, step 3); a refusal or a failure before then ends it unread, like every child of the run.
    let feeding: Promise<{ inputEndedAt: number } | undefined> | undefined;
    if (!selective && req.jobs <= 1 && manifest?.kind === 'custom') {
      const gate = (created = deferred()).promise;
      feeding = opening!.then(
        (early) => {
          if (early.format !== 'custom' || !early.tocProgress || sup.failed) return undefined;
          return restoreInto(req, flags, early, name, undefined, env, sup, gate, onInputEnd);
        },
        () => undefined, // reported at step 2, after the survey's refusals
      );
      feeding.catch(() => undefined);
    }
    const surveyed = refusals(
      Promise.all([survey, pgRestoreVersion]).then(
        ([found, pgRestore]): LocalVersions & { exists: boolean } => {
          if (found.exists && !req.replace) {
            throw new UsageError(`database ${JSON.stringify(req.target)} already exists; refusing to restore over it`, {
              hint: 'choose another --target-db, or pass --replace to keep the old one aside as <name>__before_<time>',
            });
          }
          // Versions, from the manifest, before the download: the target server against the source
          // server, the local pg_restore against the archive format pg_dump wrote.
          if (selective && manifest && manifest.kind !== 'custom') {
            throw new UsageError(`--table, --schema, --exclude-table and --list-file need a custom-format backup; backup ${manifest.id} is plain SQL (${manifest.kind})`, { hint: 'restore it whole, or choose a full backup (--kind full)' });
          }
          const versions: LocalVersions = pgRestore ? { server: found.server, pgRestore } : { server: found.server };
          if (manifest) checkManifestVersions(manifest, versions);
          return { ...versions, exists: found.exists };
        },
      ),
    );
    const local = await surveyed;
    const targetExists = local.exists;
    // 2. Open the backup: the age header is authenticated here, before any database exists. A
    //    selective restore of a backup with an archive index reads only what it needs.
    const ranged = selective && req.source.kind === 'repository' && !req.wholeDownload ? await openRangedSource({ ...req, store: req.source.store, entry: req.source.entry }, sup, env) : undefined;
    const opened = ranged ?? (await (opening ?? openSource(req, sup, env)));
    req.log.info('backup opened', { format: opened.format, compressed: opened.compressed, target: req.target });
    if (opened.header) {
      local.pgRestore ??= await clientVersion(req.tools.pgRestore, 'pg_restore', { env, signal: req.signal });
      checkArchiveHeader(opened.header, local, manifest ? `backup ${manifest.id}` : `--file ${req.source.kind === 'file' ? req.source.path : ''}`);
    }
    // A selection is decided from the table of contents (the head of the stream), before any database exists.
    if (selective) {
      if (opened.format !== 'custom') throw new UsageError('--table, --schema, --exclude-table and --list-file need a custom-format archive; this one is plain SQL', { hint: 'restore it whole' });
      const entries = (await opened.tocEntries())!;
      const encoding = (await opened.databaseEntries())?.find((e) => e.desc === 'ENCODING')?.defn;
      selection = selectEntries(decodeToc(entries, encoding), req.selection!);
      for (const note of selection.notes) req.log.warn(note);
      listDir = await fsp.mkdtemp(path.join(tmpdir(), 'coffer-list-'));
      flags.listFile = path.join(listDir, 'restore.list');
      await fsp.writeFile(flags.listFile, selection.listText, { mode: 0o600 });
      req.log.info('selective restore', { entries: selection.ids.length, of: entries.length, tables: selection.tables.length, download: ranged ? 'ranged (archive index)' : 'whole' });
      ranged?.select(selection.ids);
    }
    if (req.jobs > 1) spool = await Spool.prepare(req.source, opened.format, req.spoolDir, req.log);

    // The database as it was: encoding and locale now (from the first entries of the table of
    // contents: the rest streams on to pg_restore meanwhile), owner, ACL and settings before the swap.
    const creation = await databaseDefinition(req.source, opened, req.log, true);

    // 3. Globals first (roles the dump refers to), then a scratch database. A streamed custom
    //    archive's pg_restore starts meanwhile and reads the table of contents (long, for many
    //    tables) while the database is created: its input is held at the table of contents' last
    //    byte until the database exists (./toc-gate.ts).
    if (req.withGlobals) rolesCreated = (await applyGlobals(admin, await readGlobals(req, sup, env), sup, req.log)).created;
    throwIfFailed(sup);
    scratch = name;
    let createdAt = 0;
    creating = createScratch(admin, name, creation, req.log)
      .finally(() => void admin.closeSession())
      .then(() => {
        createdAt = Date.now();
        req.log.info('restoring into a scratch database', { scratch: name, database: describeLocale(creation) });
      });
    creating.catch(() => undefined);
    created?.follow(creating);
    const gated = spool === undefined && opened.format === 'custom' && opened.tocProgress !== undefined;
    if (!gated) {
      await creating;
      throwIfFailed(sup);
    }

    // 4. The data (fed since the backup was opened, for a whole custom archive).
    const { inputEndedAt } = (await feeding) ?? (await restoreInto(req, flags, opened, name, spool, env, sup, gated ? creating : undefined, onInputEnd));
    const restoredAt = Date.now();
    const archiveStats = opened.stats();

    // 5. Checks on the scratch database (the TOC check, --sanitize, --smoke) and the summary's
    //    table statistics, then the swap. The rename's psql connects during the checks (not
    //    during a --sanitize, which may take long; nor during pg_restore, which may take hours).
    //    It is started once the first inspection was sent: starting a program holds node up for
    //    ~10–25 ms, which the inspection's query then runs through.
    let renamer: PreparedPsql | undefined;
    const startRenamer = (): void => {
      if (req.sanitize !== undefined) return;
      renamer = PreparedPsql.start(req.tools, req.conn, req.maintenanceDb, { env, signal: sup.signal, what: 'rename the scratch database' });
      renamer.prime(SWAP_WARMUP);
      prepared.push(renamer);
    };
    const { definition, properties, tables, largest } = await (preparing ?? prepareChecks(opened));
    const { checks, stats, propertiesApplied } = await runChecks(req, scratch, tables, selective, largest, properties, env, sup.signal, inspector, startRenamer);
    if (properties && !propertiesApplied) await psqlQuery(req.tools, req.conn, scratch, properties, { env, what: APPLY_PROPERTIES });
    if (properties && definition) logPropertiesApplied(definition, req, req.log);
    const aside = targetExists ? await asideName(admin, req.target) : null;
    throwIfFailed(sup);
    const checkedAt = Date.now();
    await admin.swapIn(scratch, req.target, aside ?? undefined, renamer);
    scratch = undefined;
    const swappedAt = Date.now();
    if (aside) req.log.warn('the previous database was kept aside', { database: aside });
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
      selection: selection ? { entries: selection.ids.length, tables: selection.tables, leftOut: selection.notes, download: ranged ? ranged.fetched() : 'whole' } : null,
      phases: { setup: createdAt - started, transfer: inputEndedAt - createdAt, restore: restoredAt - inputEndedAt, checks: checkedAt - restoredAt, swap: swappedAt - checkedAt },
    };
  } catch (err) {
    created?.fail(err);
    sup.fail(err);
    await sup.teardown();
    // Roles are the server's, not the scratch database's: those --with-globals created stay.
    if (rolesCreated.length > 0) {
      req.log.warn(`the restore failed, but the roles --with-globals created stay on the server (roles belong to the cluster, not the database): ${rolesCreated.map((n) => JSON.stringify(n)).join(', ')}; a restore again keeps them as they are, or drop them with DROP ROLE`);
    }
    // A refusal is the cause even when opening the backup, which had started, failed meanwhile;
    // a version refusal even when the archive check, which cannot follow a newer format, failed.
    if (err instanceof VersionError) throw err;
    if (err instanceof Refusal) throw err.cause;
    throw explainExcludedData(req.source, explainRestoreError(sup.cause(), req));
  } finally {
    await sup.teardown();
    for (const p of inspector ? [inspector, ...prepared] : prepared) await p.cancel();
    await admin.closeSession();
    // A CREATE DATABASE still running would otherwise finish after the DROP.
    await creating?.catch(() => undefined);
    await preparing?.catch(() => undefined);
    if (scratch !== undefined) await dropScratch(admin, scratch, req.log);
    if (spool) await spool.remove();
    if (listDir) await fsp.rm(listDir, { recursive: true, force: true });
  }
}

/** What the checks and the database's properties need, read from the archive once it was read whole. */
interface CheckInputs {
  definition: DatabaseDefinition | undefined;
  properties: Buffer | undefined;
  tables: ArchiveTables | null;
  largest: InspectRequest['largest'];
}

/** A promise settled from outside, later (the first settlement counts): as `follow`'s promise settles, or failed by `fail`. */
function deferred(): { promise: Promise<void>; follow: (p: Promise<void>) => void; fail: (err: unknown) => void } {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // nothing may be waiting for it
  return { promise, follow: (p) => void p.then(resolve, reject), fail: reject };
}

/** A refusal after the survey (the target exists, a version, a plain-SQL backup for a selection): reported before anything that failed meanwhile. */
class Refusal extends Error {}

/** The survey's outcome; a refusal it leads to is wrapped as a {@link Refusal}, anything else (the server unreachable, a stop) is not. */
async function refusals<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    throw err instanceof UsageError || err instanceof VersionError ? new Refusal('refused', { cause: err }) : err;
  }
}

/** Stops a run whose supervisor has recorded a failure (a stage, or the stop signal). */
function throwIfFailed(sup: Supervisor): void {
  if (sup.failed) throw sup.cause();
}

/**
 * Feeds the archive to pg_restore (streamed) or to a spool file then `pg_restore -j`.
 * pg_restore's input ends only when the whole archive checked out: damage found at the last
 * byte still fails the run, with pg_restore torn down by the supervisor. `inputEndedAt`: when the
 * whole archive had been read (and handed to pg_restore, or to the spool).
 */
async function restoreInto(
  req: RestoreRequest,
  flags: RestoreFlags,
  opened: OpenedArchive,
  scratch: string,
  spool: Spool | undefined,
  env: NodeJS.ProcessEnv,
  sup: Supervisor,
  creating: Promise<void> | undefined,
  onInputEnd: (opened: OpenedArchive) => void,
): Promise<{ inputEndedAt: number }> {
  const db = scratchLoadTarget({ conn: req.conn, database: scratch, env });
  const targets: FanOutTarget[] = [];
  const waits: Promise<unknown>[] = opened.children.map((c) => c.done);
  // The database's creation fails the run as itself, whatever it holds back meanwhile.
  if (creating) waits.push(creating);
  let sqlFilter: PlainSqlFilter | undefined;
  if (spool) {
    targets.push(...spool.targets());
  } else if (creating && opened.format === 'custom' && opened.tocProgress) {
    // Spawned before this function first waits: for the early feed, as soon as the backup is open.
    const restore = spawnPgRestore(sup, req.tools, db, flags);
    waits.push(restore.done);
    targets.push({ name: 'restore', stream: new TocGate(restore.stdin!, opened.tocProgress, creating), kind: 'child' });
  } else {
    const restore = opened.format === 'custom' ? spawnPgRestore(sup, req.tools, db, flags) : spawnPsqlScript(sup, req.tools, db, { what: 'psql (restore)' });
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

  let inputEndedAt = 0;
  try {
    await Promise.all([
      streamPipeline(opened.archive, new FanOut(targets), { signal: sup.signal }).then(() => {
        inputEndedAt = Date.now();
        onInputEnd(opened);
      }),
      ...waits,
    ]);
  } catch (err) {
    throw spool ? spool.explain(err) : err;
  }
  if (sqlFilter) req.log.info('plain SQL filtered for --no-owner/--no-privileges (as pg_restore would)', { ownerStatements: sqlFilter.counts.ownership, privilegeStatements: sqlFilter.counts.privileges });

  if (spool) {
    spool.finish(opened.stats().archiveBytes, req.log);
    const restoreStarted = Date.now();
    await spawnPgRestoreJobs(sup, req.tools, db, flags, req.jobs, spool.file).done;
    req.log.info(`pg_restore --jobs=${req.jobs} finished`, { seconds: (Date.now() - restoreStarted) / 1000 });
  }
  return { inputEndedAt };
}

/**
 * The tables of a custom archive's table of contents (its TABLE entries: ordinary and
 * partitioned tables; of the selection, when there is one), as {@link tableKey}s of the
 * archive's own bytes, and the encoding they are in; null for plain SQL. Read by the archive
 * check that walked the whole stream, so it is what pg_restore was given.
 */
async function archiveTables(opened: OpenedArchive, selection: Selection | undefined): Promise<ArchiveTables | null> {
  if (opened.format !== 'custom') return null;
  const entries = (await opened.tocEntries()) ?? [];
  const chosen = selection ? new Set(selection.ids) : undefined;
  return {
    keys: entries.filter((e) => e.desc === 'TABLE' && (!chosen || chosen.has(e.dumpId))).map((e) => tableKey(e.namespace, e.tag)),
    encoding: await archiveEncoding(opened),
  };
}

interface ArchiveTables {
  keys: string[];
  encoding: string;
}

/** The client encoding a custom archive's text is in (its ENCODING entry; UTF8 when it has none). */
async function archiveEncoding(opened: OpenedArchive): Promise<string> {
  return /client_encoding\s*=\s*'([^']*)'/i.exec((await opened.databaseEntries())?.find((e) => e.desc === 'ENCODING')?.defn ?? '')?.[1] ?? 'UTF8';
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
 * The largest tables of a custom archive, by the bytes of their data blocks (of the selection,
 * when there is one): the archive was read whole, so the summary ranks them without asking the
 * server for every table's size. `undefined` for plain SQL: the server ranks them.
 */
async function largestInArchive(opened: OpenedArchive, selection: Selection | undefined): Promise<InspectRequest['largest']> {
  const layout = opened.layout();
  const entries = opened.format === 'custom' && layout ? await opened.tocEntries() : undefined;
  if (!layout || !entries) return undefined;
  const sizes = dataBlockSizes(layout);
  const chosen = selection ? new Set(selection.ids) : undefined;
  const encoding = await archiveEncoding(opened);
  const top = entries
    .filter((e) => e.desc === 'TABLE DATA' && sizes.has(e.dumpId) && (!chosen || chosen.has(e.dumpId)))
    .sort((a, b) => sizes.get(b.dumpId)! - sizes.get(a.dumpId)! || a.dumpId - b.dumpId)
    .slice(0, 5);
  return { names: top.map((e) => ({ schema: e.namespace, table: e.tag, rows: layout.rows.get(e.dumpId) })), encoding };
}

/**
 * The TOC check (every table of the archive, or of the selection, exists), then --sanitize (so
 * --smoke sees the sanitised database), then --smoke; and the summary's table statistics, of
 * the database as it will be renamed (after --sanitize). A failure fails the restore. The
 * server is asked a fixed number of queries whatever the number of tables: one psql when there
 * is no --sanitize (names and statistics together), two with it. Without --sanitize and
 * --smoke, the database's properties (`properties`) are applied by that same psql, after the
 * inspection (`propertiesApplied`); a failed check then drops the database all the same.
 */
async function runChecks(
  req: RestoreRequest,
  db: string,
  tables: ArchiveTables | null,
  selective: boolean,
  largest: InspectRequest['largest'],
  properties: Buffer | undefined,
  env: NodeJS.ProcessEnv,
  signal: AbortSignal,
  inspector: PreparedPsql | undefined,
  /** Called once the first inspection was sent (its query runs meanwhile). */
  whileInspecting: () => void,
): Promise<{ checks: RestoreChecks; stats: TableStats; propertiesApplied: boolean }> {
  const entries = tables?.keys ?? [];
  // A selection has fewer tables than the database had, by design.
  const note = selective ? undefined : checkTableCount(req.source, entries.length, tables ? 'custom' : 'sql');
  if (note) req.log.warn(note);
  const target = { conn: req.conn, database: db, env };
  const statsNow = req.sanitize === undefined;
  const together = properties !== undefined && req.sanitize === undefined && req.smoke.length === 0;
  const inspecting = inspectRestored(req.tools, target, { names: entries.length > 0 && tables ? { encoding: tables.encoding } : false, stats: statsNow, largest, ...(together ? { then: { sql: properties, what: APPLY_PROPERTIES } } : {}) }, signal, inspector);
  inspecting.catch(() => undefined);
  whileInspecting();
  const first = await inspecting;
  // With nothing to ask (plain SQL or no table, and --sanitize), the checks' psql was not used:
  // it must leave the scratch database now, or RENAME finds it there.
  await inspector?.cancel();
  if (entries.length > 0) {
    const missing = missingTables(entries, first.names);
    if (missing.length > 0) {
      const { schema, table } = tableOfKey(missing[0]!);
      throw new IntegrityError(`${missing.length} table(s) of the backup are missing after the restore, e.g. ${JSON.stringify(`${decodeArchiveText(schema, tables!.encoding)}.${decodeArchiveText(table, tables!.encoding)}`)}`);
    }
  }
  if (req.sanitize !== undefined) {
    // The populated materialized views are refreshed after the file, in its transaction: they
    // held the rows from before it.
    const { refreshed } = await runSqlFile(req.tools, target, req.sanitize, { what: `--sanitize ${req.sanitize}`, signal });
    req.log.info('sanitize SQL ran in the scratch database', { file: req.sanitize, materializedViewsRefreshed: refreshed.length });
    if (refreshed.length > 0) req.log.info('materialized views refreshed after --sanitize', { views: refreshed.join(',') });
  }
  const smoke: RestoreChecks['smoke'] = [];
  for (const sql of req.smoke) {
    const output = await smokeQuery(req.tools, target, sql, signal);
    req.log.info('smoke check passed', { sql, output });
    smoke.push({ sql, output });
  }
  // After --sanitize the server counts the rows: the archive's counts are of the data before it.
  const counted = largest && { ...largest, names: largest.names.map((t) => ({ schema: t.schema, table: t.table })) };
  const stats = statsNow ? first.stats : (await inspectRestored(req.tools, target, { names: false, stats: true, largest: counted }, signal)).stats;
  const sanitized = req.sanitize ?? null;
  const checks = tables === null ? { tocTables: null, tocTablesPresent: null, smoke, sanitized } : { tocTables: entries.length, tocTablesPresent: true, smoke, sanitized };
  return { checks, stats, propertiesApplied: together };
}

/** The TOC's tables that are not among the database's (both {@link tableKey}s): a set lookup each. */
export function missingTables(toc: string[], have: string[]): string[] {
  const present = new Set(have);
  return toc.filter((e) => !present.has(e));
}

/**
 * The name the replaced database is kept under: `<target>__before_<time>`, or, when that is
 * taken (a replace in the same second, or a long name cut to the same bytes), with a random
 * suffix: the rename must not fail after the whole restore.
 */
async function asideName(admin: PgAdmin, target: string): Promise<string> {
  const plain = derivedName(target, `__before_${compactTimestamp(new Date())}`);
  if (!(await admin.exists(plain))) return plain;
  return derivedName(target, `__before_${compactTimestamp(new Date())}_${randomBytes(3).toString('hex')}`);
}
