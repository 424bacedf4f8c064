import { createHash } from 'node:crypto';
import { accessSync, constants as fsConstants } from 'node:fs';
import * as path from 'node:path';
import { hostname } from 'node:os';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream';
import { createEncryptStream, type EncryptStream } from '../crypto/age.js';
import { backupKeys, newBackupId, type DumpContent, type Tier } from '../catalog/layout.js';
import { listBackupKeys, type BackupKeyEntry } from '../catalog/catalog.js';
import { previousSignedManifest, type ManifestSigner } from '../trust/manifest-trust.js';
import { encodeManifest, type BackupManifest, type Compression, type StoredObject } from '../catalog/manifest.js';
import { formatErrorLine, IntegrityError, StorageError, type CofferError } from '../errors.js';
import { dumpConnection, libpqEnv, type ConnectionSpec } from '../pg/connection.js';
import { checkDumpVersion, clientVersion, probeServer, type ServerInfo } from '../pg/server.js';
import { DumpWarnings } from '../pg/dump-warnings.js';
import { resolveExclusions } from '../pg/exclusions.js';
import { pgDumpallGlobalsArgv, pgDumpArgv, type DumpKind } from '../pg/pg-dump.js';
import { isScriptProgram, missingTool, type PgTools } from '../pg/tools.js';
import { faultNumber } from '../run/faults.js';
import { interruptedBy } from '../run/abort.js';
import { Supervisor, toolEnv, type Child } from '../run/supervisor.js';
import type { Logger } from '../observe/log.js';
import { chooseTier } from '../retention/tiers.js';
import { TIER_TAG } from '../retention/lifecycle.js';
import type { ObjectRetention, ObjectStore } from '../store/object-store.js';
import { COFFER_VERSION } from '../version.js';
import { chooseQueueSize, choosePartSize } from './part-size.js';
import { ArchiveCheck, otherDatabase } from './archive.js';
import { decodeIndex, encodeIndex, INDEX_FORMAT, PzstdFrameWalker, type ArchiveIndex } from '../catalog/archive-index.js';
import { closeQuietly, openPipes, type OsPipe } from '../run/os-pipe.js';
import { DumpTap, type DumpTapSummary } from './dump-tap.js';
import { startDumpTapThread, type DumpTapThread } from './dump-tap-thread.js';
import { isAbortEcho } from '../run/abort.js';
import { availableParallelism } from 'node:os';


/** Where a backup run stores its objects and how: what logical and physical backups share. */
export interface StoringRequest {
  store: ObjectStore;
  recipients: string[];
  /** Explicit tier (`manual` for labelled runs around batch jobs); otherwise decided by listing. */
  tier?: Tier;
  label?: string;
  partSize?: number;
  maxParts: number;
  /** Object-lock retention for a tier, when configured. */
  retentionFor?: (tier: Tier, now: Date) => ObjectRetention | undefined;
  /** The `zstd` program (default: `zstd` from PATH). */
  zstdCommand?: string[];
  /** The environment children start from (the config layer's, without coffer's secrets); each child gets only its part. */
  env: NodeJS.ProcessEnv;
  signal: AbortSignal;
  log: Logger;
  onProgress?: (storedBytes: number) => void;
  now?: () => Date;
  /** Signs the manifest (`--signing-key`): its signature is stored beside it, before it (src/trust/manifest-trust.ts). */
  signer?: ManifestSigner;
}

export interface BackupRequest extends StoringRequest {
  tools: PgTools;
  conn: ConnectionSpec;
  database: string;
  /** Asks one one-line query through a session already connected to the database (the backup lock's); else the probe starts its own psql. */
  ask?: (sql: string) => Promise<string>;
  /** The server's answers, when the caller asked already (while the database before this one was backed up). */
  probe?: Promise<ServerInfo>;
  compression: Compression;
  kind: DumpKind;
  excludeTableData?: string[];
  /** pg_dump --disable-triggers (data-only): the load disables every trigger, foreign keys included, so FK cycles load (as a superuser). */
  disableTriggers?: boolean;
  /** Also store `pg_dumpall --globals-only` (roles, tablespaces) beside the dump. */
  globals?: boolean;
  /**
   * Write the archive index (custom format with zstd only; default true): the dump is compressed
   * by `pzstd` into independent frames, and an encrypted sidecar says where each table's data
   * lies, for selective restores that fetch only those bytes (../catalog/archive-index.ts).
   */
  index?: boolean;
  /** The `pzstd` program (default: `pzstd` from PATH). */
  pzstdCommand?: string[];
  /**
   * For the progress display: the bytes pg_dump wrote so far, with the database size the server
   * reported (pg_database_size, from the probe the run makes anyway): an estimate of the dump's
   * size, no more. Called only where node sees pg_dump's output (the indexed pipeline, dumps
   * without compression), and not for schema-only dumps; never with `zstd` outside node
   * (--no-index, plain SQL) or pg_dump's own gzip, whose bytes are not the dump's.
   */
  onDumpProgress?: (dumpBytes: number, databaseSizeBytes: number) => void;
}

/** What the compressing producer learned for the archive index. */
export interface IndexParts {
  headerLength: number;
  compressed: ArchiveIndex['compressed'];
  archive: ArchiveIndex['archive'];
}

export interface BackupResult {
  manifest: BackupManifest;
  manifestKey: string;
}

/**
 * One backup of one database:
 *
 *   pg_dump ─▶ (zstd) ─▶ gate ─▶ age encrypt ─▶ sha256/count ─▶ store.putStream
 *                                                                  └─▶ manifest (last)
 *
 * The gate holds the end of the stream until pg_dump (and zstd) exited 0, so the encryptor
 * cannot emit its final chunk, and the upload cannot complete, for a dump that failed. Any
 * stage failing aborts all the others: the children are killed and the upload aborted, and no
 * manifest is written, so nothing of the run is visible as a backup.
 */
export async function runBackup(req: BackupRequest): Promise<BackupResult> {
  const now = req.now ?? (() => new Date());
  const env = req.env;
  const startedAt = now();
  if (req.signal.aborted) throw interruptedBy(req.signal);
  const sup = new Supervisor(req.signal);
  let earlier: BackupKeyEntry[] = [];
  /** Objects of this run the store accepted (globals, dump, index; {@link ObjectTarget.stored}): without a manifest they are no backup. */
  const written: string[] = [];
  /** The manifest was sent: {@link commitManifest} decides what stays. */
  let committing = false;
  try {
    // The objects' encryptors (a file key, its stanzas and header each) are made while the server
    // and the repository answer.
    const encryptors = Array.from({ length: req.globals ? 3 : 2 }, () => createEncryptStream(req.recipients));
    for (const e of encryptors) e.catch(() => undefined);
    // The tier is chosen from what is already there (a listing only): asked meanwhile, used after
    // the server's checks (whose failures come first).
    const listing = req.tier === undefined ? listBackupKeys(req.store, { database: req.database, signal: sup.signal }) : Promise.resolve([]);
    listing.catch(() => undefined);
    // A signed backup chains to the newest signed manifest of the database (a listing only).
    const previous = req.signer ? previousSignedManifest(req.store, req.database, sup.signal) : Promise.resolve(undefined);
    previous.catch(() => undefined);
    // 1. Before anything is written: the server answers, pg_dump is new enough.
    const [server, dumpVersion] = await Promise.all([
      req.probe ?? probeServer(req.tools, req.conn, req.database, { env, signal: sup.signal, ask: req.ask }),
      clientVersion(req.tools.pgDump, 'pg_dump', { env: libpqEnv(req.conn, env), signal: sup.signal }),
    ]);
    checkDumpVersion(dumpVersion.major, dumpVersion.text, server);
    // Warnings of the run (the manifest records them): coffer's own, then pg_dump's as it prints them.
    const warnings: string[] = [];
    const excludeTableData = await expandExclusions(req, server, warnings, sup.signal);

    // 2. Where it goes: the tier from what is already there, a fresh id.
    earlier = await listing;
    // Tiers among backups of the same kind: a schema-only backup never takes a full one's monthly slot.
    const sameKind = earlier.filter((k) => (req.kind === 'custom' ? k.content !== 'partial' : k.content === 'partial'));
    const tier = req.tier ?? chooseTier(sameKind, startedAt);
    const id = newBackupId(startedAt);
    const content: DumpContent = `${req.kind === 'custom' ? 'custom' : 'sql'}${req.compression.kind === 'zstd' ? '+zstd' : ''}` as DumpContent;
    const keys = backupKeys(req.database, tier, id, content);
    const retention = req.retentionFor?.(tier, startedAt);
    // Every object carries its tier as a tag: the bucket's lifecycle rules (coffer init) filter on it.
    const tags = { [TIER_TAG]: tier };
    const partSize = choosePartSize(server.databaseSizeBytes, req.maxParts, req.partSize);
    req.log.info('backup started', { database: req.database, id, tier, key: keys.dump, server: server.serverVersion, pg_dump: dumpVersion.major, partSize });

    // 3. Globals first (small), then the dump; the manifest last.
    const target: ObjectTarget = { req, sup, partSize, retention, tags, encryptors, stored: written };
    let globals: StoredObject | null = null;
    const dumpWarnings = new DumpWarnings((w) => req.log.warn(w, { database: req.database }));
    if (req.globals) globals = await streamObject(target, keys.globals, 'globals', () => startGlobalsDump(req, server, env, sup, dumpWarnings));
    let producer: Producer | undefined;
    const onDump = req.onDumpProgress && req.kind !== 'schema-only' ? (n: number) => req.onDumpProgress!(n, server.databaseSizeBytes) : undefined;
    // A large dump is carried by a worker thread between real pipes; they are made now (a
    // `mkfifo`), so that nothing async is left between spawning pg_dump and reading it.
    let pipes = await dumpPipes(req, server.databaseSizeBytes, env);
    let dump: StoredObject;
    try {
      dump = await streamObject(target, keys.dump, 'dump', () => {
        const p = pipes;
        pipes = undefined;
        return (producer = startDump(req, excludeTableData, env, sup, dumpWarnings, onDump, p));
      });
    } finally {
      if (pipes) closePipes(pipes);
    }
    warnings.push(...dumpWarnings.end());
    const index = await storeIndex(target, keys.index, id, dump, producer, warnings, req.log);

    if (sup.failed) throw sup.cause();
    const previousManifest = await previous;
    const finishedAt = now();
    const manifest: BackupManifest = {
      format: 'coffer-backup-manifest',
      formatVersion: 1,
      id,
      database: req.database,
      tier,
      label: req.label ?? null,
      kind: req.kind,
      cofferVersion: COFFER_VERSION,
      host: hostname(),
      postgres: {
        serverVersion: server.serverVersion,
        serverVersionNum: server.serverVersionNum,
        pgDumpVersion: dumpVersion.text,
        pgDumpCommand: req.tools.pgDump,
        databaseSizeBytes: server.databaseSizeBytes,
        tables: server.tables,
        ...(server.locale ? { locale: server.locale } : {}),
      },
      compression: req.compression,
      encryption: { format: 'age-v1', recipients: [...req.recipients] },
      dump,
      globals,
      ...(index ? { index } : {}),
      dumpOptions: { disableTriggers: !!req.disableTriggers, excludeTableData },
      warnings,
      ...(previousManifest ? { previousManifest } : {}),
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      durationMs: finishedAt.getTime() - startedAt.getTime(),
      manualRestore: manualRestoreHint(keys.dump, req.kind, req.compression),
    };
    // 4. The commit: the manifest. Once sent, it is not cancelled by a stop signal: its outcome
    // must be known, because a manifest that reached the store is a backup (a stop now would
    // report a failure for a backup that exists, and remove its dump). It is one small request,
    // bounded by the S3 socket timeout and the SDK's retries.
    committing = true;
    await commitManifest(req.store, req.log, keys.manifest, encodeManifest(manifest), { retention, tags, signer: req.signer }, [keys.dump, ...(globals ? [keys.globals] : []), ...(index ? [keys.index] : [])]);
    if (req.signal.aborted) req.log.warn('the stop signal came after the backup was committed: the backup is complete', { database: req.database, id });
    req.log.info('backup complete', { database: req.database, id, tier, bytes: dump.size, sha256: dump.sha256, seconds: manifest.durationMs / 1000, ...(warnings.length > 0 ? { warnings: warnings.length } : {}), ...(req.signer ? { signedBy: req.signer.fingerprint } : {}) });
    return { manifest, manifestKey: keys.manifest };
  } catch (err) {
    sup.fail(err);
    await sup.teardown();
    // Stopped or failed after an object was stored and before the manifest was sent (the index's
    // upload, say): the stored objects go, as a failed upload's parts do. Best effort: the
    // backup host may lack DeleteObject (then lifecycle rules expire them).
    if (!committing && written.length > 0) await removeOrphans(req.store, req.log, written);
    if (faultNumber('delete-earlier-backup') > 0 && earlier[0]) await req.store.delete(earlier[0].manifestKey).catch(() => undefined);
    throw sup.cause();
  } finally {
    await sup.teardown();
  }
}

/**
 * Stores the archive index the dump's producer gathered (encrypted, beside the dump), after
 * checking it against the stored dump. A dump that could not be indexed is still a backup: the
 * run warns (the manifest records it) and selective restores read it whole.
 */
async function storeIndex(t: ObjectTarget, key: string, backupId: string, dump: StoredObject, producer: Producer | undefined, warnings: string[], log: Logger): Promise<StoredObject | undefined> {
  const parts = producer?.indexParts?.();
  if (!parts || ('problem' in parts && parts.problem === 'not indexed')) return undefined;
  let bytes: Buffer;
  try {
    if ('problem' in parts) throw new Error(parts.problem);
    const index: ArchiveIndex = { format: INDEX_FORMAT, formatVersion: 1, backupId, dump: { key: dump.key, size: dump.size, sha256: dump.sha256 }, age: { headerLength: parts.headerLength }, compressed: parts.compressed, archive: parts.archive };
    bytes = encodeIndex(index);
    decodeIndex(bytes, backupId, dump);
  } catch (err) {
    const w = `no archive index was written (${(err as Error).message}): a selective restore of this backup reads it whole`;
    log.warn(w, { backup: backupId });
    warnings.push(w);
    return undefined;
  }
  return streamObject(t, key, 'archive index', () => bytesProducer(bytes));
}

/** A producer of bytes already in memory (the archive index). */
function bytesProducer(bytes: Buffer): Producer {
  return {
    stdout: Readable.from([bytes]),
    children: [],
    observe: () => undefined,
    settle: () => Promise.resolve({ dumpBytes: bytes.length }),
  };
}

/** Producer of plaintext for one object: its stdout plus the children that must all exit 0. */
export interface Producer {
  stdout: Readable;
  children: Child[];
  /**
   * Sees the bytes node receives (compressed, when a compressor runs), before encryption. A
   * promise asks the stream to wait (the archive check's decompressor is behind).
   */
  observe(chunk: Buffer): void | Promise<void>;
  /** After the stream ended and every child exited 0: the bytes pg_dump wrote, or why the output cannot be trusted. */
  settle(): Promise<{ dumpBytes: number } | { problem: string }>;
  /** What to check when settle finds a problem (default: the pg_dump command and the tools). */
  hint?: string;
  /** After settle: where the frames and data blocks lie (an indexing producer), or why no index can be written. */
  indexParts?(): IndexParts | { problem: string };
  /** The length of the age header the object was encrypted with (told before any data). */
  encrypted?(headerLength: number): void;
}

/**
 * The `--exclude-table-data` patterns to give pg_dump: the user's, plus an exact pattern for
 * every partition of a partitioned table they match (pg_dump matches the parent only). A
 * foreign key from a table whose data is included to one whose data is excluded is a warning:
 * such a backup cannot be restored (the constraint fails on the referencing rows).
 */
async function expandExclusions(req: BackupRequest, server: ServerInfo, warnings: string[], signal: AbortSignal): Promise<string[]> {
  const patterns = [...(req.excludeTableData ?? [])];
  if (patterns.length === 0 || req.kind === 'schema-only') return patterns;
  const r = await resolveExclusions(req.tools, req.conn, req.database, patterns, server.serverVersionNum, { env: req.env, signal });
  const byParent = new Map<string, { pattern: string; parent: string; partitions: string[] }>();
  for (const p of r.partitions) {
    if (!patterns.includes(p.exact)) patterns.push(p.exact);
    const k = `${p.pattern}\0${p.parent}`;
    const e = byParent.get(k) ?? { pattern: p.pattern, parent: p.parent, partitions: [] };
    e.partitions.push(p.partition);
    byParent.set(k, e);
  }
  for (const e of byParent.values()) {
    req.log.info(`--exclude-table-data ${e.pattern} matches the partitioned table ${e.parent}: the data of its ${e.partitions.length} partition(s) is excluded too`, { partitions: e.partitions.join(',') });
  }
  for (const ref of r.references) {
    const w = `--exclude-table-data: the data of ${ref.references} is excluded, but foreign key ${ref.constraint} of ${ref.table} (whose data is included) references it: a restore of this backup fails when it adds that constraint if ${ref.table} has rows that reference ${ref.references}; exclude the data of ${ref.table} too, or keep the data of ${ref.references}`;
    req.log.warn(w, { database: req.database, constraint: ref.constraint, table: ref.table, references: ref.references });
    warnings.push(w);
  }
  return patterns;
}

function startDump(req: BackupRequest, excludeTableData: string[], env: NodeJS.ProcessEnv, sup: Supervisor, warnings: DumpWarnings, onDump?: (dumpBytes: number) => void, pipes?: DumpPipes): Producer {
  const args = pgDumpArgv(req.tools, dumpConnection(req.conn, env), req.database, {
    kind: req.kind,
    gzipLevel: req.compression.kind === 'pgdump-gzip' ? req.compression.level : 0,
    disableTriggers: req.disableTriggers,
    excludeTableData,
  });
  const expectHead = req.kind === 'custom' ? 'PGDMP' : '';
  const onStderr = (b: Buffer): void => warnings.push(b);
  if (req.compression.kind !== 'zstd') {
    if (pipes) closePipes(pipes);
    return countedOutput(sup.spawn({ argv: args, env: libpqEnv(req.conn, env), what: 'pg_dump', onStderr }), expectHead, req.kind === 'custom' ? 'custom' : 'sql', req.database, req.compression.kind === 'none' ? onDump : undefined);
  }
  if (req.index !== false && req.kind === 'custom' && pzstdFound(req, env)) return indexedDump(req, req.compression.level, args, env, sup, expectHead, onStderr, onDump, pipes);
  if (pipes) closePipes(pipes);
  return compressedDump(req, req.compression.level, args, env, sup, expectHead, onStderr);
}

function startGlobalsDump(req: BackupRequest, server: ServerInfo, env: NodeJS.ProcessEnv, sup: Supervisor, warnings: DumpWarnings): Producer {
  const args = pgDumpallGlobalsArgv(req.tools, dumpConnection(req.conn, env), req.database, server.isSuperuser);
  return countedOutput(sup.spawn({ argv: args, env: libpqEnv(req.conn, env), what: 'pg_dumpall --globals-only', onStderr: (b) => warnings.push(b) }), '', 'sql', undefined);
}

/**
 * Whether the `pzstd` program exists (a path, or a name on PATH). Without it the backup is made
 * without an index (a warning says so): indexing is an addition, not a condition of a backup.
 */
function pzstdFound(req: BackupRequest, env: NodeJS.ProcessEnv): boolean {
  const cmd = (req.pzstdCommand ?? ['pzstd'])[0]!;
  const dirs = cmd.includes('/') ? [''] : (env.PATH ?? '/usr/bin:/bin').split(':').filter(Boolean);
  for (const d of dirs) {
    try {
      accessSync(d === '' ? cmd : path.join(d, cmd), fsConstants.X_OK);
      return true;
    } catch {
      // next
    }
  }
  req.log.warn(`${cmd} not found on PATH: this backup gets no archive index, so a selective restore of it reads it whole; install zstd (apt-get install zstd; it ships pzstd), or pass --no-index`);
  return false;
}

/**
 * A child's output as it is (no compressor, or pg_dump's own gzip): node counts it, sees its
 * first bytes, and walks it whole (a custom archive through every data block its table of
 * contents announces; plain SQL to pg_dump's closing line).
 */
function countedOutput(child: Child, expectHead: string, format: 'custom' | 'sql', database: string | undefined, onBytes?: (n: number) => void): Producer {
  let n = 0;
  let head = Buffer.alloc(0);
  const check = new ArchiveCheck({ format, database });
  return {
    stdout: child.stdout!,
    children: [child],
    observe(chunk) {
      n += chunk.length;
      onBytes?.(n);
      if (head.length < 16) head = Buffer.concat([head, chunk.subarray(0, 16)]);
      check.push(chunk);
    },
    settle: () => {
      const problem = headProblem(child.what, head, n, expectHead) ?? wholeProblem(child.what, check, n);
      return Promise.resolve(problem ? { problem } : { dumpBytes: n });
    },
  };
}

/** Why a dump that started well is not whole (cut short by a wrapper that still exited 0), or not of the database asked for. */
function wholeProblem(what: string, check: ArchiveCheck, bytes: number): string | undefined {
  const err = check.end(bytes);
  if (!err) return undefined;
  const damaged = 'the backup is truncated or damaged: ';
  return err.message.startsWith(damaged) ? `${what}'s output is not a whole dump: ${err.message.slice(damaged.length)}` : `${what}'s output is not a backup of the database: ${err.message}`;
}

/** Why a dump's first bytes (and size) cannot be what pg_dump writes; `undefined` when they can. */
function headProblem(what: string, head: Buffer, bytes: number, expectHead: string): string | undefined {
  if (bytes === 0) return `${what} wrote nothing`;
  if (expectHead && !head.subarray(0, expectHead.length).equals(Buffer.from(expectHead))) {
    return `${what} did not write a custom-format archive (its output starts with ${JSON.stringify(head.subarray(0, 8).toString('latin1'))}, not "PGDMP"); a command wrapper must pass pg_dump's output through unchanged (docker compose exec needs -T)`;
  }
  return undefined;
}

/**
 * pg_dump → dd → zstd, joined fd to fd (`zstd -T0`, multi-threaded, outside node): the
 * uncompressed dump never passes through node. A JS hop there cost more CPU than everything
 * else node does in a backup (bench: compression).
 *
 * The accounting is exact all the same, end to end: dd counts what pg_dump wrote (its closing
 * "N bytes copied" line); zstd reports what it read and what it wrote (`-vv`: "(N B => M B"),
 * which must be dd's count and the bytes node received; and a second `zstd -d` reads the first
 * compressed bytes to see the archive's header — or, when pg_dump runs through a wrapper, the
 * whole compressed stream ({@link ReadBack}), which must decompress to dd's count of bytes
 * forming a whole dump. Any mismatch fails the run before the manifest.
 */
function compressedDump(req: BackupRequest, level: number, args: string[], env: NodeJS.ProcessEnv, sup: Supervisor, expectHead: string, onStderr: (b: Buffer) => void): Producer {
  const zstdArgv = req.zstdCommand ?? ['zstd'];
  const missingZstd = missingTool('zstd', 'install zstd (apt-get install zstd), or back up with --compress gzip:1 or none');
  const pgDump = sup.spawn({ argv: args, env: libpqEnv(req.conn, env), stdout: 'child', what: 'pg_dump', onStderr });
  const dd = sup.spawn({
    argv: ['dd', 'bs=1M'],
    env: toolEnv(env),
    stdin: pgDump,
    stdout: 'child',
    what: 'dd (counting the dump)',
    missing: missingTool('dd (counting the dump)', 'install coreutils (dd), or back up with --compress gzip:1 or none'),
  });
  const zstd = spawnCompressor(sup, zstdArgv, level, toolEnv(env), dd, missingZstd);
  // Through a wrapper (docker compose exec, ssh; --pg-dump-command, or a script in --pg-bin),
  // the whole stream is read back: a wrapper can
  // lose the end of pg_dump's output and still exit 0. pg_dump itself fails on a short write,
  // and dd's count must match what zstd read: its head is enough (a second full decompression
  // costs about a third more CPU).
  const readBack = new ReadBack(sup, [...zstdArgv, '-d', '-q', '-c'], toolEnv(env), missingZstd, dumpWrapped(req, env) ? { format: expectHead ? 'custom' : 'sql', database: req.database } : undefined);
  let received = 0;
  return {
    stdout: zstd.stdout!,
    children: [pgDump, dd, zstd],
    observe(chunk) {
      received += chunk.length;
      return readBack.feed(chunk);
    },
    settle: async () => {
      const ddCount = /^(\d+) bytes? /m.exec(dd.stderr.text());
      const dumpBytes = ddCount ? Number(ddCount[1]) : undefined;
      if (received === 0) return { problem: 'zstd wrote nothing' };
      const acct = zstdCounts(zstd.stderr.text());
      if (acct) {
        const [zIn, zOut] = [acct.read, acct.wrote];
        if (zOut !== received) return { problem: `zstd wrote ${zOut} bytes but ${received} reached coffer` };
        if (dumpBytes !== undefined && zIn !== dumpBytes) return { problem: `pg_dump wrote ${dumpBytes} bytes but zstd read ${zIn}` };
      } else {
        req.log.warn("could not read zstd's byte counts; the compressed stream was checked by its header only", { zstd: zstd.stderr.lastLines(2) });
      }
      if (dumpBytes === undefined) req.log.warn('could not read the dump size from dd; the manifest records 0 (restore --jobs then skips its free-space check)', { dd: dd.stderr.lastLines() });
      const back = await readBack.result();
      if (!back.whole) {
        const problem = headProblem('pg_dump', back.head, dumpBytes ?? back.head.length, expectHead);
        return problem ? { problem } : { dumpBytes: dumpBytes ?? 0 };
      }
      if (dumpBytes !== undefined && back.bytes !== dumpBytes) return { problem: `the compressed stream decompresses to ${back.bytes} bytes, pg_dump wrote ${dumpBytes}` };
      const problem = headProblem('pg_dump', back.head, back.bytes, expectHead) ?? wholeProblem('pg_dump', back.whole, back.bytes);
      return problem ? { problem } : { dumpBytes: dumpBytes ?? back.bytes };
    },
  };
}

/**
 * The indexed pipeline (the default for custom archives with zstd; --no-index: {@link compressedDump}): pg_dump → node → pzstd, joined by pipes node reads and
 * writes, so that node sees the dump itself:
 *
 * - it counts the bytes and checks the head (as dd and the header read-back do otherwise);
 * - it reads the table of contents ({@link ArchiveOffsetScanner}: the TOC only), and then finds
 *   where each table's data begins without walking the rows ({@link DataBlockFinder});
 * - pzstd cuts what node wrote into independent frames of a fixed size (its `-v` line "Chosen
 *   frame size" says which), so frame k holds dump bytes `[k × size, (k + 1) × size)`, and node
 *   notes where each frame starts in pzstd's output ({@link PzstdFrameWalker}).
 *
 * pzstd's own counts (`N => M bytes`) must equal node's: what node wrote, what reached it.
 * Node also walks the whole archive ({@link DumpTap}): one that ends before its last data block
 * does (a wrapper cut it and exited 0) fails the run. The index itself fails nothing: an archive
 * whose blocks cannot be found is stored without an index (a warning says why).
 */
function indexedDump(req: BackupRequest, level: number, args: string[], env: NodeJS.ProcessEnv, sup: Supervisor, expectHead: string, onStderr: (b: Buffer) => void, onDump?: (dumpBytes: number) => void, pipes?: DumpPipes): Producer {
  // One compression thread at the fast levels: pzstd's reader and writer threads are work of
  // their own, and at level 1-3 one thread compresses faster than pg_dump writes.
  const threads = level <= 3 ? 1 : Math.max(1, availableParallelism());
  const pzArgv = [...(req.pzstdCommand ?? ['pzstd']), `-${level}`, '-p', String(threads), '-v', '-c'];
  const pzMissing = missingTool('pzstd', 'install zstd (apt-get install zstd; it ships pzstd), or back up with --no-index');
  const wrapped = dumpWrapped(req, env);
  let tap: { bytes(): number; summary(): Promise<{ summary: DumpTapSummary; writeError?: string }> };
  let pgDump: Child;
  let pz: Child;
  const thread = pipes ? startThread(pipes, wrapped, req.log, sup.signal) : undefined;
  if (pipes && thread) {
    // Real pipes and a worker thread (a large dump): pg_dump → pipe → worker → pipe → pzstd.
    try {
      pgDump = sup.spawn({ argv: args, env: libpqEnv(req.conn, env), stdout: { fd: pipes.dump.write }, what: 'pg_dump', onStderr });
      pz = sup.spawn({ argv: pzArgv, env: toolEnv(env), stdin: { fd: pipes.compress.read }, what: 'pzstd', missing: pzMissing });
    } finally {
      closeQuietly(pipes.dump.write);
      closeQuietly(pipes.compress.read);
    }
    tap = { bytes: thread.bytes, summary: () => thread.done };
  } else {
    // Node's own streams (a small dump: a thread would cost more than it saves).
    pgDump = sup.spawn({ argv: args, env: libpqEnv(req.conn, env), what: 'pg_dump', onStderr });
    pz = sup.spawn({ argv: pzArgv, env: toolEnv(env), stdin: 'pipe', what: 'pzstd', missing: pzMissing });
    const inline = new DumpTap(wrapped);
    const copy = new Transform({
      highWaterMark: 1024 * 1024,
      transform(chunk: Buffer, _e, cb) {
        inline.push(chunk);
        onDump?.(inline.bytes);
        cb(null, chunk);
      },
    });
    copy.on('error', (err) => sup.fail(err));
    pipeline(pgDump.stdout!, copy, pz.stdin!, (err) => {
      if (err && !isAbortEcho(err)) sup.fail(err);
    });
    tap = { bytes: () => inline.bytes, summary: () => Promise.resolve({ summary: inline.summary() }) };
  }
  const walker = new PzstdFrameWalker();
  let received = 0;
  let headerLength: number | undefined;
  let seen: DumpTapSummary | undefined;
  return {
    stdout: pz.stdout!,
    children: [pgDump, pz],
    encrypted: (n) => {
      headerLength = n;
    },
    observe(chunk) {
      received += chunk.length;
      walker.push(chunk);
      if (thread) onDump?.(thread.bytes());
    },
    indexParts: () => {
      if (!seen || headerLength === undefined) return { problem: 'the dump did not settle' };
      if ('problem' in seen.index) return seen.index;
      const found = walker.frames();
      if ('problem' in found) return found;
      const m = /Chosen frame size: (\d+)/.exec(pz.stderr.text());
      if (!m) return { problem: 'pzstd did not say its frame size' };
      const frameBytes = Number(m[1]);
      const dumpBytes = seen.dumpBytes;
      if (found.frames.length !== Math.max(1, Math.ceil(dumpBytes / frameBytes))) return { problem: `pzstd wrote ${found.frames.length} frames of ${frameBytes} bytes for ${dumpBytes} bytes` };
      return { headerLength, compressed: { bytes: found.bytes, frameBytes, frames: found.frames }, archive: { bytes: dumpBytes, dataStart: seen.index.dataStart, blocks: seen.index.blocks } };
    },
    settle: async () => {
      let r: { summary: DumpTapSummary; writeError?: string };
      try {
        r = await tap.summary();
      } catch (err) {
        return { problem: (err as Error).message };
      }
      const { dumpBytes } = r.summary;
      if (thread) onDump?.(dumpBytes);
      if (dumpBytes === 0) return { problem: 'pg_dump wrote nothing' };
      if (r.writeError !== undefined) return { problem: `pzstd stopped reading the dump (${r.writeError})` };
      if (received === 0) return { problem: 'pzstd wrote nothing' };
      const acct = zstdCounts(pz.stderr.text());
      if (!acct) return { problem: `pzstd did not report its byte counts (${pz.stderr.lastLines(1, 200)})` };
      if (acct.wrote !== received) return { problem: `pzstd wrote ${acct.wrote} bytes but ${received} reached coffer` };
      if (acct.read !== dumpBytes) return { problem: `pg_dump wrote ${dumpBytes} bytes but pzstd read ${acct.read}` };
      const other = otherDatabase(r.summary.header, req.database);
      const problem =
        headProblem('pg_dump', Buffer.from(r.summary.head), dumpBytes, expectHead) ??
        (r.summary.wholeProblem !== undefined ? `pg_dump's output is not a whole dump: ${r.summary.wholeProblem}` : other !== undefined ? `pg_dump's output is not a backup of the database: ${other}` : undefined);
      if (problem) return { problem };
      seen = r.summary;
      return { dumpBytes };
    },
  };
}

/** Per set of tools (one per run, shared by its databases): whether pg_dump is a script, read once. */
const scriptDump = new WeakMap<PgTools, boolean>();

/** pg_dump runs through a wrapper: `--pg-dump-command`, or a script in its place (`--pg-bin`). */
function dumpWrapped(req: BackupRequest, env: NodeJS.ProcessEnv): boolean {
  if (req.tools.pgDumpWrapped) return true;
  let script = scriptDump.get(req.tools);
  if (script === undefined) scriptDump.set(req.tools, (script = isScriptProgram(req.tools.pgDump[0]!, env)));
  return script;
}

/** The two pipes of a threaded dump tap: pg_dump writes `dump`, pzstd reads `compress`. */
export interface DumpPipes {
  dump: OsPipe;
  compress: OsPipe;
}

/**
 * Databases at least this large (pg_database_size) are dumped through a worker thread and real
 * pipes ({@link startDumpTapThread}); below it node's streams cost less than starting the thread.
 * The test point `tap-thread-at=N` (../run/faults.ts) moves it.
 */
export const TAP_THREAD_MIN_BYTES = 256 * 1024 * 1024;

/** The pipes for a threaded dump tap, when this backup takes the indexed pipeline and is large enough; else undefined. */
export async function dumpPipes(req: BackupRequest, databaseSizeBytes: number, env: NodeJS.ProcessEnv): Promise<DumpPipes | undefined> {
  const at = faultNumber('tap-thread-at') || TAP_THREAD_MIN_BYTES;
  if (req.compression.kind !== 'zstd' || req.index === false || req.kind !== 'custom' || databaseSizeBytes < at) return undefined;
  try {
    const [dump, compress] = await openPipes(2, env);
    return { dump: dump!, compress: compress! };
  } catch (err) {
    req.log.debug('no pipes for a threaded dump tap; node streams carry the dump', { error: (err as Error).message });
    return undefined;
  }
}

/** Closes every end of pipes nobody took. */
export function closePipes(p: DumpPipes): void {
  for (const e of [p.dump.read, p.dump.write, p.compress.read, p.compress.write]) closeQuietly(e);
}

function startThread(pipes: DumpPipes, wrapped: boolean, log: Logger, signal: AbortSignal): DumpTapThread | undefined {
  try {
    return startDumpTapThread(pipes.dump, pipes.compress, wrapped, signal);
  } catch (err) {
    // startDumpTapThread closed the ends the thread would have owned.
    log.debug('the dump tap thread did not start; node streams carry the dump', { error: (err as Error).message });
    closeQuietly(pipes.dump.write);
    closeQuietly(pipes.compress.read);
    return undefined;
  }
}

/**
 * `zstd -N -T0 -vv` (multi-threaded; `-vv` reports its byte counts, {@link zstdCounts}) reading
 * `stdin` (a child's stdout, fd to fd, or a pipe node writes) and writing to node.
 */
export function spawnCompressor(sup: Supervisor, zstdArgv: string[], level: number, env: NodeJS.ProcessEnv, stdin: Child | 'pipe', missing: (cmd: string) => CofferError): Child {
  return sup.spawn({ argv: [...zstdArgv, `-${level}`, '-T0', '-vv', '--no-progress', '-c', '-'], env, stdin, what: 'zstd', missing });
}

/** What `zstd -vv` says it read and wrote (`(N B => M B`); `undefined` when it does not say. */
export function zstdCounts(stderr: string): { read: number; wrote: number } | undefined {
  const m = /\(\s*(\d+)\s*B?\s*=>\s*(\d+)\s*(?:B|bytes)\b/.exec(stderr);
  return m ? { read: Number(m[1]), wrote: Number(m[2]) } : undefined;
}

/**
 * What the compressed stream decompresses to, read back by a second `zstd -d` as it is made.
 *
 * - `head` mode: fed the first compressed chunks (at most {@link ReadBack.MAX_HEAD_FEED} bytes)
 *   until it wrote 16 bytes: the archive's header. It is expected to be cut short, so its exit
 *   status is not the run's.
 * - `whole` mode (a `format` is given): fed everything node receives, and the result is walked
 *   whole ({@link ArchiveCheck}: a custom archive from its header through every data block its
 *   table of contents announces, plain SQL to pg_dump's closing line). It proves that what is
 *   stored decompresses to a whole dump, also when a wrapper (docker compose exec) cut pg_dump's
 *   output short and still exited 0. Node copies the compressed bytes to it and skips the
 *   archive's payloads by arithmetic; the stream waits for it when it falls behind.
 */
class ReadBack {
  static readonly MAX_HEAD_FEED = 8 * 1024 * 1024;
  private child: Child | undefined;
  private fed = 0;
  private head = Buffer.alloc(0);
  private bytes = 0;
  private closed = false;
  private readonly check: ArchiveCheck | undefined;
  private output: Promise<void> = Promise.resolve();

  constructor(
    private readonly sup: Supervisor,
    private readonly argv: string[],
    private readonly env: NodeJS.ProcessEnv,
    private readonly missing: (cmd: string) => CofferError,
    expected?: { format: 'custom' | 'sql'; database: string },
  ) {
    this.check = expected ? new ArchiveCheck(expected) : undefined;
  }

  feed(chunk: Buffer): void | Promise<void> {
    if (this.closed) return;
    if (!this.child) {
      const whole = this.check !== undefined;
      const child = this.sup.spawn({ argv: this.argv, env: this.env, stdin: 'pipe', what: whole ? 'zstd -d (reading the archive back)' : 'zstd -d (archive header)', expendable: !whole, missing: this.missing });
      this.child = child;
      this.output = new Promise<void>((resolve) => {
        child.stdout!.on('data', (b: Buffer) => {
          if (this.head.length < 16) this.head = Buffer.concat([this.head, b.subarray(0, 16)]).subarray(0, 16);
          this.bytes += b.length;
          if (this.check) this.check.push(b);
          else if (this.head.length >= 16) this.end();
        });
        child.stdout!.once('end', () => resolve());
        child.stdout!.once('close', () => resolve());
      });
    }
    const stdin = this.child.stdin!;
    if (!this.check) {
      const part = chunk.subarray(0, ReadBack.MAX_HEAD_FEED - this.fed);
      this.fed += part.length;
      stdin.write(part);
      if (this.fed >= ReadBack.MAX_HEAD_FEED) this.end();
      return;
    }
    if (stdin.write(chunk)) return;
    return new Promise<void>((resolve) => {
      const done = (): void => {
        stdin.off('drain', done);
        stdin.off('close', done);
        resolve();
      };
      stdin.on('drain', done);
      stdin.on('close', done);
    });
  }

  /** No more input. */
  private end(): void {
    if (this.closed) return;
    this.closed = true;
    this.child?.stdin!.end();
  }

  /**
   * After the last chunk: the decompressed head; in whole mode also the decompressed size and
   * the walk's verdict (the decompressor must have exited 0).
   */
  async result(): Promise<{ head: Buffer; bytes: number; whole: ArchiveCheck | undefined }> {
    this.end();
    if (this.check) await Promise.all([this.output, this.child?.done]);
    else {
      await this.output;
      this.child?.kill();
    }
    return { head: this.head, bytes: this.bytes, whole: this.check };
  }
}

/** Where one object goes: the store, the recipients, the run, its part size, retention and tags. */
export interface ObjectTarget {
  req: Pick<StoringRequest, 'store' | 'recipients' | 'maxParts' | 'onProgress'>;
  sup: Supervisor;
  partSize: number;
  retention: ObjectRetention | undefined;
  tags: Record<string, string>;
  /** Encryptors set up ahead (each a fresh file key and header), taken one per object before a new one is made. */
  encryptors?: Array<Promise<EncryptStream>>;
  /** Keys of the objects the store has accepted, as soon as it has (also one whose check then fails). */
  stored?: string[];
}

/**
 * Streams one producer through gate → encrypt → hash into the store. Resolves with what was
 * stored once the object is complete and visible and its accounting checked out. Any failure
 * is recorded with the run's supervisor (whose teardown kills the children, and whose cause is
 * reported) and aborts the upload.
 *
 * The whole stream graph is built before any child exists: nothing is awaited between spawning
 * a producer and reading its output.
 */
export async function streamObject(t: ObjectTarget, key: string, what: string, start: () => Producer): Promise<StoredObject> {
  const { req, sup, partSize } = t;
  const encrypt = await (t.encryptors?.shift() ?? createEncryptStream(req.recipients));
  const hash = createHash('sha256');
  let stored = 0;
  const maxBytes = partSize * req.maxParts;
  const hasher = new Transform({
    transform(chunk: Buffer, _e, cb) {
      stored += chunk.length;
      if (stored > maxBytes) {
        cb(new StorageError('Failed', `the backup grew past ${req.maxParts} parts of ${partSize} bytes`, { hint: 'raise --part-size' }));
        return;
      }
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  if (sup.failed) throw sup.cause();
  const producer = start();
  producer.encrypted?.(encrypt.headerLength);
  const childrenDone = Promise.all(producer.children.map((c) => c.done));
  childrenDone.catch(() => undefined); // recorded by the supervisor
  // The gate: passes data through; ends only after every child exited 0 and the output's
  // accounting checked out, so the encryptor cannot emit its final chunk, and the upload
  // cannot complete, for a dump that failed or did not arrive whole.
  let dumpBytes = 0;
  const gate = new Transform({
    transform(chunk: Buffer, _e, cb) {
      const wait = producer.observe(chunk);
      if (wait) wait.then(() => cb(null, chunk), (err: Error) => cb(err));
      else cb(null, chunk);
    },
    flush(cb) {
      childrenDone
        .then(() => producer.settle())
        .then(
          (r) => {
            if ('problem' in r) return cb(new IntegrityError(`${what}: ${r.problem}; nothing was stored`, { hint: producer.hint ?? 'check the pg_dump command (--pg-dump-command, or a wrapper script in --pg-bin) and the tools on this host' }));
            dumpBytes = r.dumpBytes;
            cb();
          },
          (err: Error) => cb(err),
        );
    },
  });
  for (const s of [gate, encrypt, hasher]) s.on('error', (err) => sup.fail(err));
  const delay = faultNumber('delay-reader-ms');
  if (delay > 0) await new Promise((r) => setTimeout(r, delay));
  const body = pipeline(producer.stdout, gate, encrypt, hasher, () => undefined);
  try {
    const { size } = await req.store.putStream(key, body, {
      signal: sup.signal,
      partSize,
      queueSize: chooseQueueSize(partSize),
      retention: t.retention,
      tags: t.tags,
      onProgress: req.onProgress,
    });
    t.stored?.push(key);
    await childrenDone;
    if (size !== stored) throw new IntegrityError(`${what}: the store reports ${size} bytes but ${stored} were sent`);
    return { key, size, sha256: hash.digest('hex'), dumpBytes };
  } catch (err) {
    sup.fail(err);
    body.destroy();
    throw err;
  }
}

/**
 * Writes a backup's manifest, its commit marker. A lost answer (or a retry answered 412 because
 * the first attempt landed) leaves the outcome open: the listing decides (ids are unique, so a
 * manifest there is this one). When it is not stored, the run's `objects` are removed (best
 * effort) and the error is thrown; when the listing cannot tell, they are left for the lifecycle
 * rules (without a manifest they are not a backup). With a `signer`, the manifest's signature is
 * stored first, beside it (a signature without its manifest is an incomplete run's leftover).
 */
export async function commitManifest(
  store: ObjectStore,
  log: Logger,
  key: string,
  bytes: Uint8Array,
  opts: { retention: ObjectRetention | undefined; tags: Record<string, string>; signer?: ManifestSigner | undefined },
  objects: string[],
): Promise<void> {
  if (opts.signer) {
    const sig = opts.signer.sign(key, bytes);
    objects = [...objects, sig.key];
    try {
      await store.putBytes(sig.key, Buffer.from(sig.text, 'latin1'), { retention: opts.retention, tags: opts.tags, contentType: 'text/plain' });
    } catch (err) {
      if ((await isListed(store, sig.key)) !== true) {
        await removeOrphans(store, log, objects);
        throw err;
      }
    }
  }
  try {
    await store.putBytes(key, bytes, { retention: opts.retention, tags: opts.tags, contentType: 'application/json' });
  } catch (err) {
    const stored = await isListed(store, key);
    if (stored === true) {
      log.warn('the manifest upload reported an error, but the manifest is stored: the backup is complete', { key, error: formatErrorLine(err) });
      return;
    }
    if (stored === false) await removeOrphans(store, log, objects);
    else log.warn('could not tell whether the manifest was stored; the dump is left in place, with any other object of the run (without a manifest they are not a backup; lifecycle rules expire them)', { key: objects[0] });
    throw err;
  }
}

/** Whether `key` is in the store's listing (ListBucket only); `undefined` when the listing fails. */
async function isListed(store: ObjectStore, key: string): Promise<boolean | undefined> {
  try {
    for await (const o of store.list(key, { signal: AbortSignal.timeout(60_000) })) if (o.key === key) return true;
    return false;
  } catch {
    return undefined;
  }
}

/** How long the removal of a failed run's objects may take in all (a store that stopped answering is often why the run failed). */
const ORPHAN_REMOVAL_MS = 15_000;

/**
 * Removes the objects of a failed run (best effort: the backup host may lack DeleteObject, the
 * store may not answer). At most {@link ORPHAN_REMOVAL_MS} in all: a stopped run must end.
 */
export async function removeOrphans(store: ObjectStore, log: Logger, keys: string[]): Promise<void> {
  const deadline = Date.now() + ORPHAN_REMOVAL_MS;
  for (const k of keys) {
    let timer: NodeJS.Timeout | undefined;
    try {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('out of time');
      await Promise.race([store.delete(k), new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('out of time')), left)))]);
    } catch {
      log.warn('could not remove an object of the failed run (it has no manifest, so it is not a backup; lifecycle rules expire it)', { key: k });
    } finally {
      clearTimeout(timer);
    }
  }
}

/** The exact pipeline of standard tools that reads this object without coffer. */
function manualRestoreHint(key: string, kind: DumpKind, compression: Compression): string {
  const file = key.split('/').pop()!;
  const unzip = compression.kind === 'zstd' ? ' | zstd -d' : '';
  const sink = kind === 'custom' ? 'pg_restore -d NEWDB' : 'psql -v ON_ERROR_STOP=1 -d NEWDB';
  return `age -d -i IDENTITY_FILE ${file}${unzip} | ${sink}`;
}
