/** Pure: the WAL catalog's ranges, gaps, conflicts and lag from a listing (`now` passed in). */
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { chooseTimeline, parseHistory, reachFrom, summarizeWal, timelineBegins, walkRecoveryPath, type WalObject } from '../../src/physical/wal-catalog.js';

const NOW = new Date('2026-11-30T12:00:00Z');
const obj = (file: string, minutesAgo = 10, sha = 'a'): WalObject => ({ key: `cluster=c/wal/${file}.${sha.repeat(64).slice(0, 64)}.zst.age`, file, sha256: sha.repeat(64).slice(0, 64), size: 1, lastModified: new Date(NOW.getTime() - minutesAgo * 60_000) });

describe('summarizeWal', () => {
  it('a contiguous range across a log boundary has no gap; history, backup and partial files are counted but are no segments', () => {
    const s = summarizeWal('c', [obj('0000000100000000000000FE', 30), obj('0000000100000000000000FF', 20), obj('000000010000000100000000', 5), obj('00000002.history', 1), obj('000000010000000000000002.00000028.backup'), obj('000000010000000100000001.partial')], NOW);
    expect(s.segments).toBe(3);
    expect(s.files).toBe(6);
    expect(s.gaps).toEqual([]);
    expect(s.timelines).toEqual([{ timeline: 1, ranges: [{ first: '0000000100000000000000FE', last: '000000010000000100000000', segments: 3 }] }]);
    expect(s.newestSegment).toEqual({ file: '000000010000000100000000', storedAt: '2026-11-30T11:55:00.000Z' });
    expect(s.lagSeconds).toBe(60);
  });

  it('names every gap per timeline with its first and last missing segment and their count', () => {
    const s = summarizeWal('c', ['000000010000000000000001', '000000010000000000000002', '000000010000000000000005', '0000000100000000000000FF', '000000010000000100000001', '000000020000000100000003', '000000020000000100000004'].map((f) => obj(f)), NOW);
    expect(s.gaps).toEqual([
      { timeline: 1, first: '000000010000000000000003', last: '000000010000000000000004', missing: 2 },
      { timeline: 1, first: '000000010000000000000006', last: '0000000100000000000000FE', missing: 249 },
      { timeline: 1, first: '000000010000000100000000', last: '000000010000000100000000', missing: 1 },
    ]);
    expect(s.timelines.map((t) => t.timeline)).toEqual([1, 2]);
    expect(s.newestSegment?.file).toBe('000000020000000100000004');
  });

  it('reports a name stored with two different hashes, an empty archive, and segment numbers impossible for the segment size', () => {
    const s = summarizeWal('c', [obj('000000010000000000000001', 1, 'a'), obj('000000010000000000000001', 1, 'b')], NOW);
    expect(s.conflicts).toEqual([{ file: '000000010000000000000001', sha256: ['a'.repeat(64), 'b'.repeat(64)] }]);
    expect(summarizeWal('c', [], NOW)).toMatchObject({ files: 0, segments: 0, newestSegment: null, lagSeconds: null, gaps: [] });
    // 1 GiB segments: 4 per log, so segment 0x10 cannot exist.
    expect(() => summarizeWal('c', [obj('000000010000000000000010')], NOW, 1024 ** 3)).toThrow(UsageError);
    const big = summarizeWal('c', ['000000010000000000000003', '000000010000000100000000'].map((f) => obj(f)), NOW, 1024 ** 3);
    expect(big.gaps).toEqual([]);
  });
});

describe('reachFrom: how far point-in-time recovery goes from a base backup', () => {
  const objects = ['000000010000000000000003', '000000010000000000000004', '000000010000000000000005', '000000010000000000000007', '000000020000000000000008'].map((f, i) => obj(f, 10 - i));
  const s = summarizeWal('c', objects, NOW);
  it('to the last segment of the unbroken run after the backup, not past a gap nor onto another timeline', () => {
    expect(reachFrom(s, objects, '000000010000000000000002')).toEqual({ segment: '000000010000000000000005', storedAt: '2026-11-30T11:52:00.000Z' });
    expect(reachFrom(s, objects, '000000010000000000000004').segment).toBe('000000010000000000000005');
  });
  it('the backup alone when nothing continues it', () => {
    expect(reachFrom(s, objects, '000000010000000000000005').segment).toBe('000000010000000000000005');
    expect(reachFrom(s, objects, '00000001000000000000000A')).toEqual({ segment: '00000001000000000000000A', storedAt: null });
    expect(reachFrom(s, objects, '000000010000000000000000')).toEqual({ segment: '000000010000000000000000', storedAt: null });
  });
});

describe('timelines: the path recovery follows, and gaps on it', () => {
  const seg = (tl: number, n: number): string => `${tl.toString(16).toUpperCase().padStart(8, '0')}00000000${n.toString(16).toUpperCase().padStart(8, '0')}`;
  // timeline 2 forked from 1 at LSN 0/5000028 (in segment 5); timeline 3 from 2 at 0/9000000 (segment 9, at its first byte)
  const h2 = parseHistory('1\t0/5000028\tbefore 2026-11-30 10:00:00+00\n');
  const h3 = parseHistory('1\t0/5000028\tbefore 2026-11-30 10:00:00+00\n\n2\t0/9000000\tat restore point "x"\n');

  it('parses history files, refuses other text', () => {
    expect(h3).toEqual([{ timeline: 1, switchLsn: 0x5000028n }, { timeline: 2, switchLsn: 0x9000000n }]);
    expect(() => parseHistory('garbage\n')).toThrow(/not a timeline history line/);
  });

  it('chooses the newest timeline forked from the backup\'s at or after its end; else the backup\'s own', () => {
    const hs = new Map([[2, h2], [3, h3]]);
    expect(chooseTimeline(1, 0x3000000n, hs)).toBe(3);
    expect(chooseTimeline(1, 0x5000028n, hs)).toBe(3);
    // a backup of timeline 1 taken after the fork (split brain): timeline 2 and 3 are no children of it
    expect(chooseTimeline(1, 0x5000029n, hs)).toBe(1);
    expect(chooseTimeline(2, 0x6000000n, hs)).toBe(3);
    expect(chooseTimeline(2, 0x9000001n, hs)).toBe(2);
    expect(chooseTimeline(1, 0x3000000n, new Map())).toBe(1);
  });

  it('the switch segment is read from the child timeline', () => {
    expect(timelineBegins(1, 3, h3)).toEqual([{ timeline: 1, fromSegNo: 0 }, { timeline: 2, fromSegNo: 5 }, { timeline: 3, fromSegNo: 9 }]);
    expect(timelineBegins(2, 3, h3)).toEqual([{ timeline: 2, fromSegNo: 0 }, { timeline: 3, fromSegNo: 9 }]);
    expect(timelineBegins(1, 1, [])).toEqual([{ timeline: 1, fromSegNo: 0 }]);
  });

  // The archive of the scenario: timeline 1 segments 2..8 (it went on after the fork), timeline 2
  // segments 5..10, timeline 3 segments 9..12; the backup ends in segment 2 of timeline 1.
  const full = [...[2, 3, 4, 5, 6, 7, 8].map((n) => seg(1, n)), ...[5, 6, 7, 8, 9, 10].map((n) => seg(2, n)), ...[9, 10, 11, 12].map((n) => seg(3, n))];
  const path = timelineBegins(1, 3, h3);

  it('nothing missing: reaches the newest segment of the newest timeline, the abandoned ones not counted', () => {
    expect(walkRecoveryPath(seg(1, 2), path, new Set(full))).toEqual({ reach: seg(3, 12), beyond: [] });
  });

  // Every segment of the path, removed in turn: the first ones of each timeline (the switch
  // segments), middles, and the last; a segment off the path (abandoned timeline 1 after 5,
  // timeline 2 after 9) is no gap.
  const onPath = [seg(1, 3), seg(1, 4), seg(2, 5), seg(2, 6), seg(2, 7), seg(2, 8), seg(3, 9), seg(3, 10), seg(3, 11), seg(3, 12)];
  it.each(onPath.map((s, i) => [s, i] as const))('%s missing: a gap named there, the later path segments beyond it', (victim, i) => {
    const w = walkRecoveryPath(seg(1, 2), path, new Set(full.filter((f) => f !== victim)));
    if (i === onPath.length - 1) {
      expect(w).toEqual({ reach: seg(3, 11), beyond: [] });
      return;
    }
    expect(w.missing).toBe(victim);
    expect(w.reach).toBe(i === 0 ? seg(1, 2) : onPath[i - 1]);
    expect(w.beyond).toEqual(onPath.slice(i + 1));
  });
  it.each([seg(1, 5), seg(1, 6), seg(1, 8), seg(2, 9), seg(2, 10)])('%s (off the path) missing: no gap', (victim) => {
    expect(walkRecoveryPath(seg(1, 2), path, new Set(full.filter((f) => f !== victim)))).toEqual({ reach: seg(3, 12), beyond: [] });
  });

  it('status: a timeline whose begin segment (its marker) is missing before its first stored segment has a gap', () => {
    const objs = full.filter((f) => f !== seg(2, 5) && f !== seg(2, 6)).map((f) => obj(f));
    const s = summarizeWal('c', objs, NOW, undefined, new Map([[2, seg(2, 5)], [3, seg(3, 9)]]));
    expect(s.gaps).toEqual([{ timeline: 2, first: seg(2, 5), last: seg(2, 6), missing: 2 }]);
    expect(summarizeWal('c', full.map((f) => obj(f)), NOW, undefined, new Map([[2, seg(2, 5)], [3, seg(3, 9)]])).gaps).toEqual([]);
    // without the markers (an archive written before them) the missing start is not seen
    expect(summarizeWal('c', objs, NOW).gaps).toEqual([]);
  });
});
