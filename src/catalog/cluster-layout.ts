import { UsageError } from '../errors.js';
import { encodeDbSegment, isTier, type Tier } from './layout.js';

/**
 * Object layout of a cluster's physical backups and archived WAL (issue 14), beside the logical
 * backups of databases in the same repository:
 *
 *   cluster=<name>/<tier>/<id>.base.tar.zst.age        pg_basebackup -Ft -X fetch (online)
 *   cluster=<name>/<tier>/<id>.volume.tar.zst.age      a stopped cluster's directory (cold)
 *   cluster=<name>/<tier>/<id>.attach-<n>.age          an extra file stored with the backup
 *   cluster=<name>/<tier>/<id>.manifest.json           written last: the commit marker
 *   cluster=<name>/wal/<file>.<sha256>.zst.age          one archived WAL file (segment, .history,
 *                                                      .backup, .partial); the hash is of its
 *                                                      plaintext, so a re-push is recognised
 *
 * `cluster=` can never be a database's segment (encodeDbSegment encodes `=`), so the logical
 * catalog (parseKey: three segments, a database first) never sees these keys, and a cluster and
 * a database may share a name. `<id>` is a backup id as for logical backups.
 */

export const CLUSTER_PREFIX = 'cluster=';

/** What a physical backup's main object holds. */
export type PhysicalKind = 'basebackup' | 'volume';

const PHYSICAL_SUFFIX: Record<PhysicalKind, string> = {
  basebackup: 'base.tar.zst.age',
  volume: 'volume.tar.zst.age',
};

/** A cluster name as the user gives it (`--cluster`): what a database name may be, non-empty, at most 63 bytes. */
export function parseClusterName(s: string): string {
  if (s === '' || Buffer.byteLength(s, 'utf8') > 63 || /[\0/]/.test(s)) {
    throw new UsageError(`invalid cluster name ${JSON.stringify(s)}`, { hint: 'a cluster name is 1 to 63 bytes without "/"; e.g. --cluster main' });
  }
  return s;
}

/** Key prefix of everything of one cluster (`cluster=<name>/`), or of every cluster. */
export function clusterPrefix(cluster?: string): string {
  return cluster === undefined ? CLUSTER_PREFIX : `${CLUSTER_PREFIX}${encodeDbSegment(cluster)}/`;
}

export interface PhysicalKeys {
  archive: string;
  manifest: string;
  /** The key of the n-th (0-based) attached file. */
  attachment(n: number): string;
}

export function physicalKeys(cluster: string, tier: Tier, id: string, kind: PhysicalKind): PhysicalKeys {
  const base = `${clusterPrefix(cluster)}${tier}/${id}`;
  return {
    archive: `${base}.${PHYSICAL_SUFFIX[kind]}`,
    manifest: `${base}.manifest.json`,
    attachment: (n) => `${base}.attach-${n}.age`,
  };
}

export interface ParsedClusterKey {
  cluster: string;
  tier: Tier;
  id: string;
  /** What follows the id, e.g. `.manifest.json` or `.base.tar.zst.age`. */
  rest: string;
}

/** Parses a physical backup's key; `undefined` for anything else (WAL included). */
export function parseClusterKey(key: string): ParsedClusterKey | undefined {
  const parts = key.split('/');
  if (parts.length !== 3) return undefined;
  const [seg, tier, file] = parts as [string, string, string];
  const cluster = decodeClusterSegment(seg);
  if (cluster === undefined || !isTier(tier)) return undefined;
  const m = /^(\d{8}T\d{6}Z-[0-9a-f]{8})(\..+)$/.exec(file);
  if (!m) return undefined;
  return { cluster, tier, id: m[1]!, rest: m[2]! };
}

function decodeClusterSegment(seg: string): string | undefined {
  if (!seg.startsWith(CLUSTER_PREFIX)) return undefined;
  const enc = seg.slice(CLUSTER_PREFIX.length);
  let name: string;
  try {
    name = decodeURIComponent(enc);
  } catch {
    return undefined;
  }
  return name !== '' && encodeDbSegment(name) === enc ? name : undefined;
}

// ---------------------------------------------------------------------------------------------
// WAL

/** The lifecycle tag value (coffer-tier=wal) of archived WAL: expired by its own rule. */
export const WAL_TIER = 'wal';

/**
 * A file name PostgreSQL hands to archive_command / restore_command (`%f`): a segment
 * (`000000010000000A000000FF`), a partial segment (`….partial`), a timeline history file
 * (`00000002.history`) or a backup history file (`000000010000000000000002.00000028.backup`).
 */
export const WAL_FILE_RE = /^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$/;

export function isWalFileName(name: string): boolean {
  return WAL_FILE_RE.test(name);
}

/** Prefix listing every stored copy of one WAL file (`…/wal/<file>.`), or all WAL of a cluster. */
export function walPrefix(cluster: string, file?: string): string {
  return `${clusterPrefix(cluster)}wal/${file === undefined ? '' : `${file}.`}`;
}

/** Key of one archived WAL file whose plaintext has `sha256` (hex). */
export function walKey(cluster: string, file: string, sha256: string): string {
  return `${walPrefix(cluster, file)}${sha256}.zst.age`;
}

/** Parses a WAL key; `undefined` for anything else. */
export function parseWalKey(key: string): { cluster: string; file: string; sha256: string } | undefined {
  const parts = key.split('/');
  if (parts.length !== 3 || parts[1] !== 'wal') return undefined;
  const cluster = decodeClusterSegment(parts[0]!);
  const m = /^(.+)\.([0-9a-f]{64})\.zst\.age$/.exec(parts[2]!);
  if (cluster === undefined || !m || !isWalFileName(m[1]!)) return undefined;
  return { cluster, file: m[1]!, sha256: m[2]! };
}

/** WAL segment size PostgreSQL uses unless initdb --wal-segsize said otherwise. */
export const DEFAULT_WAL_SEGMENT_BYTES = 16 * 1024 * 1024;

/** Timeline, log and segment numbers of a 24-hex segment name. */
export function parseSegmentName(name: string): { timeline: number; log: number; seg: number } | undefined {
  if (!/^[0-9A-F]{24}$/.test(name)) return undefined;
  return { timeline: parseInt(name.slice(0, 8), 16), log: parseInt(name.slice(8, 16), 16), seg: parseInt(name.slice(16, 24), 16) };
}

/** Segments per 4 GiB "log" for a segment size (256 for 16 MiB). */
export function segmentsPerLog(segmentBytes = DEFAULT_WAL_SEGMENT_BYTES): number {
  return 0x100000000 / segmentBytes;
}

/** The segment name after `name` on the same timeline. */
export function nextSegmentName(name: string, segmentBytes = DEFAULT_WAL_SEGMENT_BYTES): string {
  const p = parseSegmentName(name);
  if (!p) throw new Error(`not a WAL segment name: ${name}`);
  let { log, seg } = p;
  seg += 1;
  if (seg >= segmentsPerLog(segmentBytes)) {
    seg = 0;
    log += 1;
  }
  return segmentName(p.timeline, log, seg);
}

export function segmentName(timeline: number, log: number, seg: number): string {
  const h = (n: number): string => n.toString(16).toUpperCase().padStart(8, '0');
  return `${h(timeline)}${h(log)}${h(seg)}`;
}

/** The segment holding `lsn` (`16/B374D848`) on `timeline`. */
export function segmentOfLsn(lsn: string, timeline: number, segmentBytes = DEFAULT_WAL_SEGMENT_BYTES): string {
  const n = parseLsn(lsn);
  const segNo = n / BigInt(segmentBytes);
  const per = BigInt(segmentsPerLog(segmentBytes));
  return segmentName(timeline, Number(segNo / per), Number(segNo % per));
}

/** `16/B374D848` → 0x16B374D848n. */
export function parseLsn(lsn: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn.trim());
  if (!m) throw new UsageError(`invalid LSN ${JSON.stringify(lsn)}`, { hint: 'an LSN looks like 0/3000028 (as pg_current_wal_lsn() prints it)' });
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/**
 * Key of a timeline's begin marker (`cluster=<name>/timeline/<TTTTTTTT>.begins.<segment>`, empty):
 * written by wal-push beside a `.history` file, it names the segment holding the switch point
 * (named with the new timeline), where the timeline's WAL must begin. It lets `status`, which
 * reads no object, see a timeline whose first segment is missing. Not secret: an LSN.
 */
export function timelineBeginKey(cluster: string, timeline: number, segment: string): string {
  return `${clusterPrefix(cluster)}timeline/${timeline.toString(16).toUpperCase().padStart(8, '0')}.begins.${segment}`;
}

/**
 * Key of a cluster's system marker (`cluster=<name>/system/<system identifier>`, empty): the
 * PostgreSQL system whose WAL and backups the name holds, written by the first wal-push or
 * physical backup. In the key, not the body, so that a backup host that may list but not read
 * (the writer policy) can check it. Not secret: pg_control_system()'s system_identifier.
 */
export function systemMarkerKey(cluster: string, systemIdentifier: string): string {
  return `${systemMarkerPrefix(cluster)}${systemIdentifier}`;
}

/** Prefix listing a cluster's system markers. */
export function systemMarkerPrefix(cluster: string): string {
  return `${clusterPrefix(cluster)}system/`;
}

/** The system identifier of a system marker's key; `undefined` for anything else. */
export function parseSystemMarkerKey(key: string): string | undefined {
  return /\/system\/(\d{1,20})$/.exec(key)?.[1];
}

/** Parses a timeline begin marker's key; `undefined` for anything else. */
export function parseTimelineBeginKey(key: string): { timeline: number; segment: string } | undefined {
  const m = /\/timeline\/([0-9A-F]{8})\.begins\.([0-9A-F]{24})$/.exec(key);
  if (!m || m[2]!.slice(0, 8) !== m[1]) return undefined;
  return { timeline: Number.parseInt(m[1]!, 16), segment: m[2]! };
}
