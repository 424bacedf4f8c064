import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream';
import { createEncryptStream } from '../crypto/age.js';
import { backupKeys, newBackupId, type DumpContent, type Tier } from '../catalog/layout.js';
import { listBackupKeys } from '../catalog/catalog.js';
import { encodeManifest, type BackupManifest, type Compression, type StoredObject } from '../catalog/manifest.js';
import { CofferError, DatabaseError, formatErrorLine, InterruptedError, IntegrityError, StorageError } from '../errors.js';
import { conninfoFor, type ConnectionSpec } from '../pg/connection.js';
import { checkDumpVersion, clientVersion, libpqEnv, probeServer, type ServerInfo } from '../pg/server.js';
import { missingTool, spawnChild, type PgTools, type RunningChild } from '../pg/tools.js';
import type { Logger } from '../observe/log.js';
import { chooseTier } from '../retention/tiers.js';
import { TIER_TAG } from '../retention/lifecycle.js';
import type { ObjectRetention, ObjectStore } from '../store/object-store.js';
import { COFFER_VERSION } from '../version.js';
import { chooseQueueSize, choosePartSize } from './part-size.js';

export type DumpKind = 'custom' | 'schema-only' | 'data-only';

export interface BackupRequest {
  store: ObjectStore;
  tools: PgTools;
  conn: ConnectionSpec;
  database: string;
  recipients: string[];
  compression: Compression;
  kind: DumpKind;
  /** Explicit tier (`manual` for labelled runs around batch jobs); otherwise decided by listing. */
  tier?: Tier;
  label?: string;
  partSize?: number;
  maxParts: number;
  excludeTableData?: string[];
  /** Also store `pg_dumpall --globals-only` (roles, tablespaces) beside the dump. */
  globals?: boolean;
  /** Object-lock retention for a tier, when configured. */
  retentionFor?: (tier: Tier, now: Date) => ObjectRetention | undefined;
  /** The `zstd` program (default: `zstd` from PATH). */
  zstdCommand?: string[];
  env?: NodeJS.ProcessEnv;
  signal: AbortSignal;
  log: Logger;
  onProgress?: (storedBytes: number) => void;
  now?: () => Date;
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
  const env = req.env ?? process.env;
  const startedAt = now();
  const ac = new AbortController();
  const onOuterAbort = (): void => ac.abort(req.signal.reason);
  if (req.signal.aborted) throw interrupted(req.signal);
  req.signal.addEventListener('abort', onOuterAbort, { once: true });
  try {
    // 1. Before anything is written: the server answers, pg_dump is new enough.
    const [server, dumpVersion] = await Promise.all([
      probeServer(req.tools, req.conn, req.database, { env, signal: ac.signal }),
      clientVersion(req.tools.pgDump, 'pg_dump', { env, signal: ac.signal }),
    ]);
    checkDumpVersion(dumpVersion.major, dumpVersion.text, server);

    // 2. Where it goes: the tier from what is already there (listing only), a fresh id.
    const tier = req.tier ?? chooseTier(await listBackupKeys(req.store, { database: req.database, signal: ac.signal }), startedAt);
    const id = newBackupId(startedAt);
    const content: DumpContent = `${req.kind === 'custom' ? 'custom' : 'sql'}${req.compression.kind === 'zstd' ? '+zstd' : ''}` as DumpContent;
    const keys = backupKeys(req.database, tier, id, content);
    const retention = req.retentionFor?.(tier, startedAt);
    // Every object carries its tier as a tag: the bucket's lifecycle rules (coffer init) filter on it.
    const tags = { [TIER_TAG]: tier };
    const partSize = choosePartSize(server.databaseSizeBytes, req.maxParts, req.partSize);
    req.log.info('backup started', { database: req.database, id, tier, key: keys.dump, server: server.serverVersion, pg_dump: dumpVersion.major, partSize });

    // 3. Globals first (small), then the dump; the manifest last.
    let globals: StoredObject | null = null;
    if (req.globals) {
      globals = await streamObject(req, ac, keys.globals, 'globals', partSize, retention, tags, (signal) =>
        startGlobalsDump(req, server, env, signal),
      );
    }
    const dump = await streamObject(req, ac, keys.dump, 'dump', partSize, retention, tags, (signal) => startDump(req, env, signal));

    if (ac.signal.aborted) throw interrupted(ac.signal);
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
      },
      compression: req.compression,
      encryption: { format: 'age-v1', recipients: [...req.recipients] },
      dump,
      globals,
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      durationMs: finishedAt.getTime() - startedAt.getTime(),
      manualRestore: manualRestoreHint(keys.dump, req.kind, req.compression),
    };
    // 4. The commit: the manifest. Once sent, it is not cancelled by a stop signal: its outcome
    // must be known, because a manifest that reached the store is a backup (a stop now would
    // report a failure for a backup that exists, and remove its dump). It is one small request,
    // bounded by the S3 socket timeout and the SDK's retries.
    try {
      await req.store.putBytes(keys.manifest, encodeManifest(manifest), { retention, tags, contentType: 'application/json' });
    } catch (err) {
      // A lost answer (or a retry answered 412 because the first attempt landed) leaves the
      // outcome open: the listing decides. Ids are unique, so a manifest there is this one.
      const stored = await isListed(req.store, keys.manifest);
      if (stored === true) {
        req.log.warn('the manifest upload reported an error, but the manifest is stored: the backup is complete', { key: keys.manifest, error: formatErrorLine(err) });
      } else {
        if (stored === false) await removeOrphans(req, [keys.dump, ...(globals ? [keys.globals] : [])]);
        else req.log.warn('could not tell whether the manifest was stored; the dump is left in place (without a manifest it is not a backup; lifecycle rules expire it)', { key: keys.dump });
        throw err;
      }
    }
    if (req.signal.aborted) req.log.warn('the stop signal came after the backup was committed: the backup is complete', { database: req.database, id });
    req.log.info('backup complete', { database: req.database, id, tier, bytes: dump.size, sha256: dump.sha256, seconds: manifest.durationMs / 1000 });
    return { manifest, manifestKey: keys.manifest };
  } catch (err) {
    ac.abort(err);
    if (req.signal.aborted) throw interrupted(req.signal, err);
    throw err;
  } finally {
    req.signal.removeEventListener('abort', onOuterAbort);
  }
}

/** Producer of plaintext for one object: its stdout plus the children that must all exit 0. */
interface Producer {
  stdout: Readable;
  children: RunningChild[];
  /** Bytes read from the first child (pg_dump's own output), for the manifest. */
  producedBytes: () => number;
}

function startDump(req: BackupRequest, env: NodeJS.ProcessEnv, signal: AbortSignal): Producer {
  const args = [...req.tools.pgDump];
  if (req.kind === 'custom') args.push('--format=custom');
  else args.push('--format=plain', req.kind === 'schema-only' ? '--schema-only' : '--data-only');
  if (req.kind === 'custom') args.push(`--compress=${req.compression.kind === 'pgdump-gzip' ? req.compression.level : 0}`);
  for (const p of req.excludeTableData ?? []) args.push(`--exclude-table-data=${p}`);
  args.push('--no-password', '-d', conninfoFor(req.conn, req.database));
  const pgDump = spawnChild(args, { env: libpqEnv(req.conn, env), signal, what: 'pg_dump' });
  return withCompression(req, pgDump, signal);
}

function startGlobalsDump(req: BackupRequest, server: ServerInfo, env: NodeJS.ProcessEnv, signal: AbortSignal): Producer {
  const args = [...req.tools.pgDumpall, '--globals-only', '--no-password'];
  if (!server.isSuperuser) args.push('--no-role-passwords');
  args.push('-d', conninfoFor(req.conn, req.database));
  const child = spawnChild(args, { env: libpqEnv(req.conn, env), signal, what: 'pg_dumpall --globals-only' });
  let n = 0;
  const counter = countingTransform((c) => (n += c));
  child.child.stdout!.on('error', (e) => counter.destroy(e));
  child.child.stdout!.pipe(counter);
  return { stdout: counter, children: [child], producedBytes: () => n };
}

/**
 * pg_dump's output, counted, through `zstd -T0` when asked (multi-threaded, outside Node).
 *
 * With zstd the uncompressed dump never passes through node: pg_dump → dd → zstd are joined fd
 * to fd, and dd counts the bytes exactly (its closing "N bytes … copied" line) for the manifest.
 * A JS hop there cost more CPU than everything else node does in a backup (bench: compression).
 */
function withCompression(req: BackupRequest, first: RunningChild, signal: AbortSignal): Producer {
  if (req.compression.kind !== 'zstd') {
    let n = 0;
    const counter = countingTransform((c) => (n += c));
    first.child.stdout!.on('error', (e) => counter.destroy(e));
    first.child.stdout!.pipe(counter);
    return { stdout: counter, children: [first], producedBytes: () => n };
  }
  const dd = spawnChild(['dd', 'bs=1M'], {
    stdin: first.child.stdout!,
    env: { ...process.env, LC_ALL: 'C' },
    signal,
    what: 'dd (counting the dump)',
    missing: missingTool('dd (counting the dump)', 'install coreutils (dd), or back up with --compress gzip:1 or none'),
  });
  // The pipe now lives on in dd; node's end of it must not be read (nor hold 'close' open).
  first.child.stdout!.destroy();
  const zstd = spawnChild([...(req.zstdCommand ?? ['zstd']), `-${req.compression.level}`, '-T0', '-q', '-c', '-'], {
    stdin: dd.child.stdout!,
    signal,
    what: 'zstd',
    missing: missingTool('zstd', 'install zstd (apt-get install zstd), or back up with --compress gzip:1 or none'),
  });
  dd.child.stdout!.destroy();
  const producedBytes = (): number => {
    const m = /^(\d+) bytes? /m.exec(dd.stderr.text());
    if (m) return Number(m[1]);
    req.log.warn('could not read the dump size from dd; the manifest records 0 (restore --jobs then skips its free-space check)', { dd: dd.stderr.lastLines() });
    return 0;
  };
  return { stdout: zstd.child.stdout!, children: [first, dd, zstd], producedBytes };
}

function countingTransform(add: (n: number) => void): Transform {
  return new Transform({
    highWaterMark: 1024 * 1024,
    transform(chunk: Buffer, _e, cb) {
      add(chunk.length);
      cb(null, chunk);
    },
  });
}

/**
 * Streams one producer through gate → encrypt → hash into the store. Resolves with what was
 * stored once the object is complete and visible; on any failure everything is torn down and
 * the first cause is thrown.
 */
async function streamObject(
  req: BackupRequest,
  ac: AbortController,
  key: string,
  what: string,
  partSize: number,
  retention: ObjectRetention | undefined,
  tags: Record<string, string>,
  start: (signal: AbortSignal) => Producer,
): Promise<StoredObject> {
  let firstError: unknown;
  const fail = (err: unknown): void => {
    firstError ??= err;
    ac.abort(err);
  };
  const producer = start(ac.signal);
  for (const c of producer.children) c.done.catch(fail);
  const childrenDone = Promise.all(producer.children.map((c) => c.done));
  childrenDone.catch(() => undefined); // observed through `fail` and the gate

  // The gate: passes data through; ends only after every child exited 0.
  const gate = new Transform({
    transform(chunk, _e, cb) {
      cb(null, chunk);
    },
    flush(cb) {
      childrenDone.then(
        () => cb(),
        (err: Error) => cb(err),
      );
    },
  });
  const encrypt = await createEncryptStream(req.recipients);
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
  const body = pipeline(producer.stdout, gate, encrypt, hasher, (err) => {
    if (err) fail(err);
  });

  try {
    const { size } = await req.store.putStream(key, body, {
      signal: ac.signal,
      partSize,
      queueSize: chooseQueueSize(partSize),
      retention,
      tags,
      onProgress: req.onProgress,
    });
    await childrenDone;
    if (size !== stored) throw new IntegrityError(`${what}: the store reports ${size} bytes but ${stored} were sent`);
    return { key, size, sha256: hash.digest('hex'), dumpBytes: producer.producedBytes() };
  } catch (err) {
    fail(err);
    // Tear the stream down too: nobody reads it any more, and its pipes must close.
    body.destroy();
    producer.stdout.destroy();
    for (const c of producer.children) c.kill();
    await Promise.allSettled(producer.children.map((c) => c.done));
    throw pickCause(firstError, err);
  }
}

/** The error to report: the first stage that failed, unless that was only our own abort. */
function pickCause(first: unknown, last: unknown): unknown {
  const isEcho = (e: unknown): boolean =>
    (e instanceof StorageError && e.code === 'Aborted') ||
    (e instanceof DatabaseError && /killed by SIG(TERM|KILL)/.test(e.message)) ||
    (e as { code?: string })?.code === 'ERR_STREAM_PREMATURE_CLOSE' ||
    (e as { code?: string })?.code === 'EPIPE' ||
    (e as { name?: string })?.name === 'AbortError';
  if (first !== undefined && !isEcho(first)) return first;
  if (!isEcho(last)) return last;
  return first ?? last;
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

async function removeOrphans(req: BackupRequest, keys: string[]): Promise<void> {
  for (const k of keys) {
    try {
      await req.store.delete(k);
    } catch {
      req.log.warn('could not remove an object of the failed run (it has no manifest, so it is not a backup; lifecycle rules expire it)', { key: k });
    }
  }
}

function interrupted(signal: AbortSignal, cause?: unknown): CofferError {
  const reason: unknown = signal.reason;
  if (reason instanceof CofferError) return reason;
  return new InterruptedError(typeof reason === 'string' ? reason : 'interrupted', { cause: cause ?? reason });
}

/** The exact pipeline of standard tools that reads this object without coffer. */
export function manualRestoreHint(key: string, kind: DumpKind, compression: Compression): string {
  const file = key.split('/').pop()!;
  const unzip = compression.kind === 'zstd' ? ' | zstd -d' : '';
  const sink = kind === 'custom' ? 'pg_restore -d NEWDB' : 'psql -v ON_ERROR_STOP=1 -d NEWDB';
  return `age -d -i IDENTITY_FILE ${file}${unzip} | ${sink}`;
}
