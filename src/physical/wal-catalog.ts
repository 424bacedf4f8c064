/**
 * What a cluster's WAL archive holds, from one listing (`cluster=<name>/wal/`, no object is
 * read): the newest archived segment, per timeline the contiguous ranges and every gap between
 * the first and the last archived segment, and names stored with two different hashes.
 *
 * Only 24-hex segments count for ranges and gaps; `.history`, `.backup` and `.partial` files are
 * counted but never fill or open a gap. {@link summarizeWal} is pure (`now` passed in).
 */
import { nextSegmentName, parseSegmentName, segmentName, parseWalKey, segmentsPerLog, walPrefix, DEFAULT_WAL_SEGMENT_BYTES } from '../catalog/cluster-layout.js';
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
export function summarizeWal(cluster: string, objects: readonly WalObject[], now: Date, segmentBytes = DEFAULT_WAL_SEGMENT_BYTES): WalSummary {
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
