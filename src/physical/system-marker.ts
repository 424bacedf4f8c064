/**
 * One `--cluster` name holds one PostgreSQL system. The first wal-push or physical backup of a
 * name records the system identifier (pg_control's, also in the long header of every WAL
 * segment) as an empty marker object, `cluster=<name>/system/<identifier>`
 * ({@link systemMarkerKey}); later pushes and backups of another system are refused before
 * anything is stored. Without it, a server initialised anew (initdb, pg_upgrade) or a second
 * server left with the same archive_command would slip its segments in between the first one's,
 * under names the first one has not used yet: an archive no recovery can replay past that point,
 * found out only during a restore. pgBackRest refuses the same ("WAL segment system-id does not
 * match stanza system-id").
 *
 * Markers are read by listing only, so the writer policy (no GetObject) can check them. Not
 * tagged with a lifecycle tier: no rule expires them.
 */
import { endianness } from 'node:os';
import { parseSystemMarkerKey, systemMarkerKey, systemMarkerPrefix } from '../catalog/cluster-layout.js';
import { IntegrityError, StorageError, UsageError } from '../errors.js';
import type { ObjectStore } from '../store/object-store.js';
import { listPhysicalKeys, loadPhysicalEntry } from '../catalog/physical-catalog.js';

/** `XLP_LONG_HEADER` in xlp_info: the page header is the long one (a segment's first page). */
const XLP_LONG_HEADER = 0x0002;

/** The long page header's size (XLogLongPageHeaderData): the bytes {@link segmentSystemId} reads. */
export const WAL_LONG_HEADER_BYTES = 40;

/**
 * The system identifier in a WAL segment's first page (XLogLongPageHeaderData: xlp_info at 2,
 * xlp_sysid at 24, xlp_seg_size at 32, xlp_xlog_blcksz at 36), as a decimal string, in the
 * byte order of the server that wrote it: the one in which the header is consistent (the
 * long-header flag set, the segment size that of the file, a block size a power of two from 1
 * to 32 KiB). `undefined` when the bytes are no such header: what is not recognisably a segment
 * is archived as it is (PostgreSQL hands wal-push only its own files).
 */
export function segmentSystemId(head: Buffer, fileBytes: number): string | undefined {
  if (head.length < WAL_LONG_HEADER_BYTES) return undefined;
  const orders = endianness() === 'LE' ? (['LE', 'BE'] as const) : (['BE', 'LE'] as const);
  for (const order of orders) {
    const u16 = (at: number): number => (order === 'LE' ? head.readUInt16LE(at) : head.readUInt16BE(at));
    const u32 = (at: number): number => (order === 'LE' ? head.readUInt32LE(at) : head.readUInt32BE(at));
    const blcksz = u32(36);
    if ((u16(2) & XLP_LONG_HEADER) === 0 || u32(32) !== fileBytes || blcksz < 1024 || blcksz > 32768 || (blcksz & (blcksz - 1)) !== 0) continue;
    const sysid = order === 'LE' ? head.readBigUInt64LE(24) : head.readBigUInt64BE(24);
    return sysid === 0n ? undefined : sysid.toString();
  }
  return undefined;
}

/** The system identifiers recorded for a cluster name (normally one; none before its first push or backup). */
export async function recordedSystems(store: ObjectStore, cluster: string, signal?: AbortSignal): Promise<string[]> {
  const out: string[] = [];
  for await (const o of store.list(systemMarkerPrefix(cluster), { signal })) {
    const id = parseSystemMarkerKey(o.key);
    if (id !== undefined) out.push(id);
  }
  return out;
}

export interface SystemCheck {
  store: ObjectStore;
  cluster: string;
  /** The system identifier of what is about to be stored. */
  systemIdentifier: string;
  /** What is stored, for the message ("WAL segment 0000…", "this server"). */
  what: string;
  /** Refuse with a UsageError (exit 2, a backup's choice of name) rather than an IntegrityError (exit 5, what a push meets). */
  usage?: boolean;
  signal?: AbortSignal;
}

/**
 * Refuses (IntegrityError, exit 5; with `usage` a UsageError, exit 2) when the cluster name
 * records another system than `systemIdentifier`, or several; before any marker, compares it with
 * the newest physical backup's manifest, where the credentials may read it (an archive written
 * before markers existed). Whether the name records no system yet: then {@link recordSystem}.
 */
export async function checkSystem(c: SystemCheck): Promise<boolean> {
  const recorded = await recordedSystems(c.store, c.cluster, c.signal);
  if (recorded.length === 1 && recorded[0] === c.systemIdentifier) return false;
  if (recorded.length > 0) throw otherSystem(c, recorded);
  const before = await newestBackupSystem(c.store, c.cluster, c.signal);
  if (before !== undefined && before.systemIdentifier !== c.systemIdentifier) throw otherSystem(c, [before.systemIdentifier], ` (backup ${before.id})`);
  return true;
}

/**
 * Records `systemIdentifier` as the cluster name's system. A marker that cannot be written (a
 * narrower write policy) does not stop archiving: `warn` says so. Two systems racing to be the
 * first: each sees both markers and is refused; so is every later push, until the wrong marker
 * is removed (which the writer cannot do: an operator decides).
 */
export async function recordSystem(c: SystemCheck, warn: (line: string) => void): Promise<void> {
  try {
    await c.store.putBytes(systemMarkerKey(c.cluster, c.systemIdentifier), new Uint8Array(0), { signal: c.signal, contentType: 'application/octet-stream' });
  } catch (err) {
    c.signal?.throwIfAborted();
    if (!(err instanceof StorageError && err.code === 'Exists')) {
      warn(`the system marker of --cluster ${c.cluster} was not stored (${err instanceof Error ? err.message : String(err)}); a server of another system archiving under this name would not be refused`);
      return;
    }
  }
  const after = await recordedSystems(c.store, c.cluster, c.signal);
  if (after.some((s) => s !== c.systemIdentifier)) throw otherSystem(c, after);
}

/** The system identifier the newest physical backup of `cluster` recorded, where its manifest can be read. */
async function newestBackupSystem(store: ObjectStore, cluster: string, signal?: AbortSignal): Promise<{ id: string; systemIdentifier: string } | undefined> {
  const keys = await listPhysicalKeys(store, { cluster, signal });
  for (const k of keys.slice(0, 3)) {
    try {
      const id = (await loadPhysicalEntry(store, k, signal)).manifest.postgres.systemIdentifier;
      if (id !== undefined) return { id: k.id, systemIdentifier: id };
    } catch {
      signal?.throwIfAborted();
      // unreadable (no GetObject, or damaged): the next older one, then none
    }
  }
  return undefined;
}

function otherSystem(c: SystemCheck, recorded: string[], where = ''): IntegrityError {
  const theirs = recorded.filter((s) => s !== c.systemIdentifier);
  const holds = recorded.length > 1 ? `records several systems (${recorded.join(', ')})` : `holds system ${theirs[0]}${where}`;
  const E = c.usage ? UsageError : IntegrityError;
  return new E(`${c.what} belongs to PostgreSQL system ${c.systemIdentifier}, but --cluster ${c.cluster} ${holds}; not stored`, {
    hint:
      recorded.length > 1
        ? `two servers archive under --cluster ${c.cluster}: give each its own --cluster name, then remove the marker of the one that moved from ${c.store.location}/${systemMarkerPrefix(c.cluster)}`
        : `a server initialised anew (initdb, pg_upgrade) or another server archives under --cluster ${c.cluster}: give it a --cluster name of its own (in archive_command and its backups)`,
  });
}
