/** Pure: the WAL catalog's ranges, gaps, conflicts and lag from a listing (`now` passed in). */
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { reachFrom, summarizeWal, type WalObject } from '../../src/physical/wal-catalog.js';

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
