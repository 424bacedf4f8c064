/**
 * `coffer wal-push`: PostgreSQL's archive_command. One WAL file (a segment, a `.partial`
 * segment, a timeline `.history` file or a `.backup` history file) → zstd → age → one object
 * under `cluster=<name>/wal/<file>.<sha256 of the plaintext>.zst.age` (src/catalog/cluster-layout.ts).
 *
 * The archive_command contract (PostgreSQL 15 docs, "Setting Up WAL Archiving"), kept exactly:
 * - **Never overwrite.** The object is written with the store's write-once `putBytes`
 *   (S3: `If-None-Match: *`; the file store: an exclusive hard link), and is visible only when
 *   complete: a wal-push killed at any point leaves nothing under the key.
 * - **Exit 0 only when the file is durably stored**: S3 answered 200 to the PutObject; the file
 *   store fsynced the file and every directory it created or linked into.
 * - **An identical copy already stored is success** (PostgreSQL retries a push whose exit it
 *   did not see): the listing of `<file>.` shows the same plaintext sha256, or putBytes says
 *   `Exists` (a concurrent identical push: the hash is in the key). Nothing is written then.
 * - **A different copy already stored is a failure** (IntegrityError, exit 5): the archive
 *   holds another file under this name (two clusters archiving under one `--cluster`, or a
 *   restored cluster that was not promoted to a new timeline). PostgreSQL keeps the file and
 *   retries; the log line says what to check. After a successful write the name is listed
 *   again, so a concurrent different push is caught too: of racing different copies exactly one
 *   stays: the first stored (earliest time, then smallest key) once the others removed theirs,
 *   else the one whose push already exited 0 alone; every other push removes the copy it wrote
 *   and exits 5, so wal-fetch never meets two copies made by a race.
 * - **A segment of another PostgreSQL system is a failure** (exit 5, nothing stored): the
 *   system identifier in its first page must be the one the cluster name records
 *   (src/physical/system-marker.ts); the first push records it.
 */
import type { BigIntStats } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { isWalFileName, parseWalKey, segmentOfLsn, timelineBeginKey, walKey, walPrefix, WAL_TIER } from '../catalog/cluster-layout.js';
import { errnoWords, IntegrityError, StorageError, UsageError } from '../errors.js';
import type { ObjectStore } from '../store/object-store.js';
import { TIER_TAG } from '../retention/lifecycle.js';
import { holdAt, stallAt } from '../run/faults.js';
import { encodeWalFileFrom, type EncodedWalFile } from './wal-codec.js';
import { parseHistory } from './wal-catalog.js';
import { checkSystem, recordSystem, segmentSystemId, WAL_LONG_HEADER_BYTES } from './system-marker.js';

/** How long the winner of a race of different copies waits for the others to remove theirs before it yields. */
const RACE_WAIT_MS = 5_000;

/** Largest WAL file read: PostgreSQL's largest segment size (initdb --wal-segsize 1024). */
export const MAX_WAL_FILE_BYTES = 1024 * 1024 * 1024;

export interface WalPushRequest {
  store: ObjectStore;
  cluster: string;
  /** `%p`: the file to archive (relative paths against `cwd`). */
  file: string;
  /** `%f`, when given: must equal the base name of `file`. */
  name?: string;
  recipients: string[];
  /** zstd level. */
  level: number;
  cwd: string;
  env: NodeJS.ProcessEnv;
  signal: AbortSignal;
}

export interface WalPushResult {
  file: string;
  key: string;
  sha256: string;
  /** Plaintext bytes. */
  size: number;
  /** Bytes stored (0 when it was stored already). */
  stored: number;
  /** `stored`: written now; `already`: an identical copy was in the archive. */
  outcome: 'stored' | 'already';
  /** The file as it was read ({@link fileIdentity}). */
  identity: string;
}

/**
 * Which file, in which version: `<st_dev> <st_ino> <size> <mtime seconds>.<9 digits>`, the words
 * of GNU `stat -L -c '%d %i %s %.9Y'`, so that the shell front end of `--async`
 * (bin/coffer-wal-push-async) can compare it without node. A segment PostgreSQL writes again
 * under the same name (recycled, or after a restore) has another modification time.
 */
export function fileIdentity(st: BigIntStats): string {
  const ns = st.mtimeNs;
  return `${st.dev} ${st.ino} ${st.size} ${ns / 1_000_000_000n}.${String(ns % 1_000_000_000n).padStart(9, '0')}`;
}

/** The stored copies of one WAL file name: their plaintext hashes (from the keys). */
export async function storedCopies(store: ObjectStore, cluster: string, file: string, signal?: AbortSignal): Promise<Array<{ key: string; sha256: string; lastModified: Date }>> {
  const out: Array<{ key: string; sha256: string; lastModified: Date }> = [];
  // `<file>.` also lists `<file>.partial.…` and `<file>.<offset>.backup.…`: keep this name only.
  for await (const o of store.list(walPrefix(cluster, file), { signal })) {
    const p = parseWalKey(o.key);
    if (p && p.file === file && p.cluster === cluster) out.push({ key: o.key, sha256: p.sha256, lastModified: o.lastModified });
  }
  return out;
}

/** A wal_segment_size PostgreSQL allows: a power of two from 1 MiB to 1 GiB. */
function isSegmentSize(n: number): boolean {
  return n >= 1 << 20 && n <= 1 << 30 && (n & (n - 1)) === 0;
}

/** The WAL file name of `%p` (and `%f`), checked. */
export function walFileNameOf(file: string, name: string | undefined): string {
  const base = path.basename(file);
  if (name !== undefined && name !== base) {
    throw new UsageError(`the file name ${JSON.stringify(name)} (%f) is not the base name of ${JSON.stringify(file)} (%p)`, { hint: "archive_command = 'coffer wal-push … %p' (or … %p %f)" });
  }
  if (!isWalFileName(base) || base.startsWith('00000000')) {
    throw new UsageError(`${JSON.stringify(base)} is not a WAL file name (a segment, .partial, .history or .backup file)`, {
      hint: "wal-push archives what PostgreSQL's archive_command hands it: archive_command = 'coffer wal-push --cluster NAME --to REPO --recipient age1… %p'",
    });
  }
  return base;
}

function differentCopy(req: { store: ObjectStore; cluster: string }, file: string, mine: string, theirs: string[]): IntegrityError {
  return new IntegrityError(
    `the archive already holds a different ${file} for cluster ${JSON.stringify(req.cluster)} (sha256 ${theirs.map((h) => h.slice(0, 12)).join(', ')}…, this one ${mine.slice(0, 12)}…); not archived, nothing overwritten`,
    { hint: `two servers archive under --cluster ${req.cluster}, or a restored server reuses its timeline: give each server its own --cluster; check ${req.store.location}/${walPrefix(req.cluster, file)}*` },
  );
}

/** Archives one WAL file (see the module doc). */
export async function walPush(req: WalPushRequest): Promise<WalPushResult> {
  const file = walFileNameOf(req.file, req.name);
  const abs = path.resolve(req.cwd, req.file);
  const cannotRead = (err: unknown): never => {
    if (err instanceof UsageError) throw err;
    req.signal.throwIfAborted();
    throw new UsageError(`cannot read ${abs}: ${errnoWords(err)}`, { cause: err, hint: 'archive_command runs in the data directory: pass %p as it is' });
  };
  const fh = await fsp.open(abs, 'r').catch(cannotRead);
  let encoded: EncodedWalFile;
  let identity: string;
  let systemIdentifier: string | undefined;
  try {
    const st = await fh.stat({ bigint: true }).catch(cannotRead);
    if (!st.isFile()) throw new UsageError(`${abs} is not a regular file`);
    if (st.size > BigInt(MAX_WAL_FILE_BYTES)) throw new UsageError(`${abs} is ${st.size} bytes, larger than any WAL file (1 GiB)`);
    // A segment (and a .partial one) is exactly wal_segment_size bytes: a power of two from 1 MiB
    // to 1 GiB. Anything else is not what PostgreSQL hands to archive_command.
    const segment = /^[0-9A-F]{24}(\.partial)?$/.test(file);
    if (segment && !isSegmentSize(Number(st.size))) {
      throw new UsageError(`${abs} is ${st.size} bytes: not a WAL segment (segments are a power of two from 1 MiB to 1 GiB); not archived`, { hint: 'archive only files PostgreSQL hands to archive_command (%p)' });
    }
    identity = fileIdentity(st);
    if (segment) {
      const head = Buffer.alloc(WAL_LONG_HEADER_BYTES);
      const { bytesRead } = await fh.read(head, 0, head.length, 0).catch(cannotRead);
      systemIdentifier = segmentSystemId(head.subarray(0, bytesRead), Number(st.size));
    }
    encoded = await encodeWalFileFrom(fh, req.recipients, req.level, { env: req.env, signal: req.signal }).catch((err: unknown) => {
      if (err instanceof UsageError || !('code' in (err as object))) throw err;
      return cannotRead(err);
    });
    // PostgreSQL does not write to a file it handed to archive_command; if something did, what
    // was read is no consistent copy.
    const after = await fh.stat({ bigint: true }).catch(cannotRead);
    if (fileIdentity(after) !== identity || BigInt(encoded.size) !== st.size) {
      throw new IntegrityError(`${abs} changed while it was read (size or modification time differ); not archived`, { hint: 'archive only files PostgreSQL hands to archive_command (%p); PostgreSQL retries' });
    }
  } finally {
    await fh.close();
  }
  const { sha256, bytes } = encoded;
  const key = walKey(req.cluster, file, sha256);
  const base = { file, key, sha256, size: encoded.size, identity };
  await stallAt('stall-wal-push', 'encoded');
  if (systemIdentifier !== undefined) {
    const c = { store: req.store, cluster: req.cluster, systemIdentifier, what: `WAL segment ${file}`, signal: req.signal };
    if (await checkSystem(c)) await recordSystem(c, (line) => process.stderr.write(`coffer wal-push: ${line}\n`));
  }

  const before = await storedCopies(req.store, req.cluster, file, req.signal);
  const others = before.filter((c) => c.sha256 !== sha256).map((c) => c.sha256);
  if (others.length > 0) throw differentCopy(req, file, sha256, others);
  if (before.length > 0) {
    // (a retried push of a .history file writes its marker, should the first have stopped before it)
    if (file.endsWith('.history')) await writeTimelineBegin(req, file, abs);
    return { ...base, stored: 0, outcome: 'already' };
  }
  await stallAt('stall-wal-push', 'listed');
  await holdAt('hold-wal-push', 'listed');

  let outcome: WalPushResult['outcome'] = 'stored';
  try {
    await req.store.putBytes(key, bytes, { signal: req.signal, tags: { [TIER_TAG]: WAL_TIER }, contentType: 'application/octet-stream' });
  } catch (err) {
    // The same key: the same plaintext, stored by a concurrent push (or an earlier one the listing missed).
    if (!(err instanceof StorageError && err.code === 'Exists')) throw err;
    outcome = 'already';
  }
  await stallAt('stall-wal-push', 'stored');
  await holdAt('hold-wal-push', 'stored');
  const after = await storedCopies(req.store, req.cluster, file, req.signal);
  const raced = after.filter((c) => c.sha256 !== sha256);
  if (raced.length > 0) {
    // A concurrent push of another copy under this name: exactly one copy may stay. The racers
    // agree on a winner from the same listing: the first stored (earliest stored time), on a tie
    // the smallest key. But a stored time is not when a copy became visible (a file store's
    // mtime is its write, before the exclusive link), and the other push may already have
    // exited 0 having seen only its own copy: so the winner exits 0 only once the others'
    // copies are gone (each loser removes its own); if they stay (that push succeeded alone,
    // or died), it yields: removes its own and exits 5. Never two copies, never a removed
    // copy whose push exited 0.
    const order = (x: { key: string; lastModified: Date }, y: { key: string; lastModified: Date }): number => x.lastModified.getTime() - y.lastModified.getTime() || (x.key < y.key ? -1 : x.key > y.key ? 1 : 0);
    const winner = [...after].sort(order)[0]!;
    if (winner.sha256 === sha256) {
      const deadline = Date.now() + RACE_WAIT_MS;
      for (;;) {
        await new Promise((r) => setTimeout(r, 100));
        const now = await storedCopies(req.store, req.cluster, file, req.signal);
        if (!now.some((c) => c.sha256 !== sha256)) return finish();
        if (Date.now() >= deadline) break;
      }
    }
    let removal = '';
    if (outcome === 'stored') {
      await req.store.delete(key).then(
        () => (removal = '; its own copy was removed'),
        (err: unknown) => (removal = `; its own copy could not be removed (${err instanceof Error ? err.message : String(err)}): remove ${key}`),
      );
    }
    const e = differentCopy(req, file, sha256, raced.map((c) => c.sha256));
    throw new IntegrityError(`${e.message.replace(/; not archived, nothing overwritten$/, '; not archived (a concurrent push stored another copy)')}${removal}`, { hint: e.hint ?? '' });
  }
  return finish();

  async function finish(): Promise<WalPushResult> {
    if (file.endsWith('.history')) await writeTimelineBegin(req, file, path.resolve(req.cwd, req.file));
    return { ...base, stored: outcome === 'stored' ? bytes.length : 0, outcome };
  }
}

/**
 * Beside a timeline's `.history` file: the marker naming the segment where the new timeline's
 * WAL begins (the one holding the switch point, {@link timelineBeginKey}), so that `status` sees
 * a missing first segment. The segment size is that of the segments beside the file in pg_wal;
 * with none there, no marker is written (status then cannot see that one gap; restore can).
 * Nor is one when its write fails: said on stderr, the push still succeeds.
 */
async function writeTimelineBegin(req: WalPushRequest, file: string, abs: string): Promise<void> {
  const timeline = Number.parseInt(file.slice(0, 8), 16);
  let segmentBytes: number | undefined;
  for (const n of await fsp.readdir(path.dirname(abs)).catch(() => [] as string[])) {
    if (!/^[0-9A-F]{24}$/.test(n)) continue;
    const st = await fsp.stat(path.join(path.dirname(abs), n)).catch(() => undefined);
    if (st?.isFile() && isSegmentSize(st.size)) {
      segmentBytes = st.size;
      break;
    }
  }
  if (segmentBytes === undefined) return;
  let entries;
  try {
    entries = parseHistory(await fsp.readFile(abs, 'utf8'));
  } catch {
    return; // not PostgreSQL's format: archived as it is, no marker
  }
  const last = entries[entries.length - 1];
  if (!last) return;
  const lsn = `${(last.switchLsn >> 32n).toString(16).toUpperCase()}/${(last.switchLsn & 0xffffffffn).toString(16).toUpperCase()}`;
  try {
    await req.store.putBytes(timelineBeginKey(req.cluster, timeline, segmentOfLsn(lsn, timeline, segmentBytes)), new Uint8Array(0), { signal: req.signal, tags: { [TIER_TAG]: WAL_TIER }, contentType: 'application/octet-stream' });
  } catch (err) {
    // Best effort: the .history file itself is stored; a marker that cannot be written (a
    // narrower write policy) must not stop archiving: status then cannot see that one gap.
    req.signal.throwIfAborted();
    if (!(err instanceof StorageError && err.code === 'Exists')) process.stderr.write(`coffer wal-push: the timeline begin marker of ${file} was not stored (${err instanceof Error ? err.message : String(err)}); status cannot check where timeline ${timeline} begins\n`);
  }
}
