/**
 * What a cluster's WAL archive holds, from one listing (`cluster=<name>/wal/`, no object is
 * read): the newest archived segment, per timeline the contiguous ranges and every gap between
 * the first and the last archived segment, and names stored with two different hashes.
 *
 * Only 24-hex segments count for ranges and gaps; `.history`, `.backup` and `.partial` files are
 * counted but never fill or open a gap. A timeline whose begin segment is known (wal-push's
 * marker beside its `.history` file, {@link listTimelineBegins}) has a gap before its first
 * stored segment when that is later than its begin. {@link summarizeWal} is pure (`now` passed in).
 */
import { clusterPrefix, nextSegmentName, parseSegmentName, parseTimelineBeginKey, segmentName, parseWalKey, segmentsPerLog, walPrefix, DEFAULT_WAL_SEGMENT_BYTES } from '../catalog/cluster-layout.js';
import { UsageError } from '../errors.js';
import type { ObjectInfo, ObjectStore } from '../store/object-store.js';

export interface WalObject {
  key: string;
  file: string;
  sha256: string;
  size: number;
  lastModified: Date;
}

export interface WalRange {
  first: string;
  last: string;
  segments: number;
}

export interface WalGap {
  timeline: number;
  /** The first and last missing segment. */
  first: string;
  last: string;
  /** How many segments are missing. */
  missing: number;
}

export interface TimelineSummary {
  timeline: number;
  ranges: WalRange[];
}

export interface WalSummary {
  cluster: string;
  /** Every WAL object. */
  files: number;
  segments: number;
  /** The highest segment name (newest timeline, then position) and when it was stored. */
  newestSegment: { file: string; storedAt: string } | null;
  /** When the most recently stored WAL object was stored, and how long ago (seconds). */
  lastArchivedAt: string | null;
  lagSeconds: number | null;
  timelines: TimelineSummary[];
  gaps: WalGap[];
  /** Names stored with different plaintext hashes (an integrity problem: two servers under one name). */
  conflicts: Array<{ file: string; sha256: string[] }>;
}

/** The WAL objects of a cluster (one listing). */
export async function listWal(store: ObjectStore, cluster: string, signal?: AbortSignal): Promise<WalObject[]> {
  const out: WalObject[] = [];
  for await (const o of store.list(walPrefix(cluster), { signal })) {
    const w = walObject(o, cluster);
    if (w) out.push(w);
  }
  return out;
}

/**
 * Where each timeline's WAL begins, from the begin markers wal-push writes beside `.history`
 * files (one listing, nothing read): timeline → the segment holding its switch point.
 */
export async function listTimelineBegins(store: ObjectStore, cluster: string, signal?: AbortSignal): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  for await (const o of store.list(`${clusterPrefix(cluster)}timeline/`, { signal })) {
    const p = parseTimelineBeginKey(o.key);
    if (p && (!out.has(p.timeline) || p.segment < out.get(p.timeline)!)) out.set(p.timeline, p.segment);
  }
  return out;
}

function walObject(o: ObjectInfo, cluster: string): WalObject | undefined {
  const p = parseWalKey(o.key);
  if (!p || p.cluster !== cluster) return undefined;
  return { key: o.key, file: p.file, sha256: p.sha256, size: o.size, lastModified: o.lastModified };
}

/** Segment number within its timeline (log × segments per log + seg). */
function segNo(name: string, per: number): number {
  const p = parseSegmentName(name)!;
  return p.log * per + p.seg;
}

/**
 * Summarizes a cluster's archive (see the module doc).
 *
 * @throws {UsageError} when a segment number is impossible for `segmentBytes` (the cluster uses
 *   another `--wal-segsize`: pass it).
 */
export function summarizeWal(cluster: string, objects: readonly WalObject[], now: Date, segmentBytes = DEFAULT_WAL_SEGMENT_BYTES, begins: ReadonlyMap<number, string> = new Map()): WalSummary {
  const per = segmentsPerLog(segmentBytes);
  const byName = new Map<string, Set<string>>();
  let lastArchived: Date | undefined;
  for (const o of objects) {
    let s = byName.get(o.file);
    if (!s) byName.set(o.file, (s = new Set()));
    s.add(o.sha256);
    if (!lastArchived || o.lastModified > lastArchived) lastArchived = o.lastModified;
  }
  const conflicts = [...byName].filter(([, h]) => h.size > 1).map(([file, h]) => ({ file, sha256: [...h].sort() })).sort((a, b) => (a.file < b.file ? -1 : 1));
  const segs = [...byName.keys()].filter((n) => parseSegmentName(n) !== undefined).sort();
  for (const n of segs) {
    if (parseSegmentName(n)!.seg >= per) {
      throw new UsageError(`WAL segment ${n} is impossible with ${segmentBytes / 1048576} MiB segments`, { hint: 'pass the cluster\'s segment size: --wal-segment-size (initdb --wal-segsize; SHOW wal_segment_size)' });
    }
  }
  const byTimeline = new Map<number, string[]>();
  for (const n of segs) {
    const tl = parseSegmentName(n)!.timeline;
    let l = byTimeline.get(tl);
    if (!l) byTimeline.set(tl, (l = []));
    l.push(n);
  }
  const timelines: TimelineSummary[] = [];
  const gaps: WalGap[] = [];
  for (const [timeline, names] of [...byTimeline].sort((a, b) => a[0] - b[0])) {
    const ranges: WalRange[] = [];
    // A timeline begins at the segment holding its switch point: segments missing from there to
    // its first stored one are a gap (recovery would stay on the parent timeline).
    const begin = begins.get(timeline);
    if (begin !== undefined && begin < names[0]!) {
      const firstNo = segNo(names[0]!, per) - 1;
      gaps.push({ timeline, first: begin, last: segmentName(timeline, Math.floor(firstNo / per), firstNo % per), missing: segNo(names[0]!, per) - segNo(begin, per) });
    }
    let cur: WalRange = { first: names[0]!, last: names[0]!, segments: 1 };
    for (const n of names.slice(1)) {
      if (n === nextSegmentName(cur.last, segmentBytes)) {
        cur.last = n;
        cur.segments++;
        continue;
      }
      const missing = segNo(n, per) - segNo(cur.last, per) - 1;
      const firstMissing = nextSegmentName(cur.last, segmentBytes);
      const lastNo = segNo(n, per) - 1;
      gaps.push({ timeline, first: firstMissing, last: segmentName(timeline, Math.floor(lastNo / per), lastNo % per), missing });
      ranges.push(cur);
      cur = { first: n, last: n, segments: 1 };
    }
    ranges.push(cur);
    timelines.push({ timeline, ranges });
  }
  const newestName = segs.length > 0 ? segs[segs.length - 1]! : undefined;
  const newestObj = newestName === undefined ? undefined : objects.filter((o) => o.file === newestName).sort((a, b) => b.lastModified.getTime() - a.lastModified.getTime())[0];
  return {
    cluster,
    files: objects.length,
    segments: segs.length,
    newestSegment: newestObj ? { file: newestObj.file, storedAt: newestObj.lastModified.toISOString() } : null,
    lastArchivedAt: lastArchived ? lastArchived.toISOString() : null,
    lagSeconds: lastArchived ? Math.max(0, Math.round((now.getTime() - lastArchived.getTime()) / 1000)) : null,
    timelines,
    gaps,
    conflicts,
  };
}

/**
 * How far point-in-time recovery can go from a base backup whose WAL ends in `stopSegment`: the
 * last segment of the unbroken run of archived segments that continues it on its timeline (the
 * backup's own WAL is in its tar), and when that segment was stored. `stopSegment` itself when
 * nothing continues it (the backup alone). Later timelines are not followed.
 */
export function reachFrom(summary: WalSummary, objects: readonly WalObject[], stopSegment: string, segmentBytes = DEFAULT_WAL_SEGMENT_BYTES): { segment: string; storedAt: string | null } {
  const timeline = parseSegmentName(stopSegment)?.timeline;
  const next = nextSegmentName(stopSegment, segmentBytes);
  const ranges = summary.timelines.find((t) => t.timeline === timeline)?.ranges ?? [];
  const run = ranges.find((r) => r.first <= next && next <= nextSegmentName(r.last, segmentBytes) && r.last >= stopSegment);
  const segment = run && run.last > stopSegment ? run.last : stopSegment;
  const stored = objects.filter((o) => o.file === segment).sort((a, b) => b.lastModified.getTime() - a.lastModified.getTime())[0];
  return { segment, storedAt: stored ? stored.lastModified.toISOString() : null };
}

// ---------------------------------------------------------------------------------------------
// Timelines

/** One line of a timeline history file: `timeline` ran until `switchLsn`, where its child began. */
export interface HistoryEntry {
  timeline: number;
  switchLsn: bigint;
}

/**
 * Parses a timeline history file (`00000002.history`): one line per ancestor, oldest first,
 * `<parent timeline>\t<switch LSN>\t<reason>`; comments and blank lines skipped.
 *
 * @throws {Error} on a line that is not of that form.
 */
export function parseHistory(text: string): HistoryEntry[] {
  const out: HistoryEntry[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(\d+)\s+([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})(\s|$)/.exec(line);
    if (!m) throw new Error(`not a timeline history line: ${JSON.stringify(line.slice(0, 80))}`);
    out.push({ timeline: Number(m[1]), switchLsn: (BigInt(`0x${m[2]}`) << 32n) | BigInt(`0x${m[3]}`) });
  }
  return out;
}

/** The segment number (within the whole WAL, all logs) holding `lsn`. */
function segNoOfLsn(lsn: bigint, segmentBytes: number): number {
  return Number(lsn / BigInt(segmentBytes));
}

/**
 * The timeline recovery should follow from a base backup on `backupTimeline` whose WAL ends at
 * `stopLsn`: the newest timeline whose history has `backupTimeline` as an ancestor with a switch
 * point at or after `stopLsn` (so recovery from the backup can switch onto it), else the
 * backup's own. `histories` maps each timeline to its parsed history file.
 */
export function chooseTimeline(backupTimeline: number, stopLsn: bigint, histories: ReadonlyMap<number, HistoryEntry[]>): number {
  let best = backupTimeline;
  for (const [tl, entries] of histories) {
    if (tl <= best) continue;
    const own = entries.find((e) => e.timeline === backupTimeline);
    if (own && own.switchLsn >= stopLsn) best = tl;
  }
  return best;
}

/**
 * Where each timeline of the path from `fromTimeline` to `toTimeline` begins: the segment holding
 * the switch point, named with the child timeline (`toTimeline`'s history gives the switch
 * points). A map timeline → first segment number it serves; `fromTimeline` serves from 0.
 */
export function timelineBegins(fromTimeline: number, toTimeline: number, history: readonly HistoryEntry[], segmentBytes = DEFAULT_WAL_SEGMENT_BYTES): Array<{ timeline: number; fromSegNo: number }> {
  const path: Array<{ timeline: number; fromSegNo: number }> = [{ timeline: fromTimeline, fromSegNo: 0 }];
  if (toTimeline === fromTimeline) return path;
  const i = history.findIndex((e) => e.timeline === fromTimeline);
  if (i < 0) return path;
  for (let j = i; j < history.length; j++) {
    const child = j + 1 < history.length ? history[j + 1]!.timeline : toTimeline;
    path.push({ timeline: child, fromSegNo: segNoOfLsn(history[j]!.switchLsn, segmentBytes) });
  }
  return path;
}

/** What recovery from a backup meets along its timeline path ({@link walkRecoveryPath}). */
export interface RecoveryWalk {
  /** The last segment of the unbroken run after the backup (the stop segment when nothing continues it). */
  reach: string;
  /** The first segment on the path missing while later segments of the path are stored. */
  missing?: string;
  /** The segments of the path stored beyond `missing`, in order. */
  beyond: string[];
}

/**
 * Walks the segments recovery reads after a backup whose WAL ends in `stopSegment`, following
 * the timeline path `begins` ({@link timelineBegins}): segment n is read from the newest timeline
 * of the path that begins at or before n (PostgreSQL's choice). Stops at the first segment not in
 * `stored`; reports the path's segments stored beyond it (a gap: what recovery would drop).
 */
export function walkRecoveryPath(stopSegment: string, begins: ReadonlyArray<{ timeline: number; fromSegNo: number }>, stored: ReadonlySet<string>, segmentBytes = DEFAULT_WAL_SEGMENT_BYTES): RecoveryWalk {
  const per = segmentsPerLog(segmentBytes);
  const name = (tl: number, no: number): string => segmentName(tl, Math.floor(no / per), no % per);
  const tlAt = (no: number): number => {
    let tl = begins[0]!.timeline;
    for (const b of begins) if (b.fromSegNo <= no) tl = b.timeline;
    return tl;
  };
  // the path's stored segments, by segment number
  const onPath: Array<{ no: number; file: string }> = [];
  for (const f of stored) {
    const p = parseSegmentName(f);
    if (!p || p.seg >= per) continue;
    const no = p.log * per + p.seg;
    if (tlAt(no) === p.timeline) onPath.push({ no, file: f });
  }
  onPath.sort((a, b) => a.no - b.no);
  const stopNo = segNo(stopSegment, per);
  let no = stopNo + 1;
  while (stored.has(name(tlAt(no), no))) no++;
  const reach = no - 1 === stopNo ? stopSegment : name(tlAt(no - 1), no - 1);
  const beyond = onPath.filter((s) => s.no > no).map((s) => s.file);
  return beyond.length > 0 ? { reach, missing: name(tlAt(no), no), beyond } : { reach, beyond };
}
