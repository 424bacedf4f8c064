/**
 * The pieces of ranged restores, without servers: pzstd's frames found in its real output, the
 * plan from dump ranges to object ranges (checked against brute force), the index's own checks,
 * and chunks of a real age file opened out of order (and refused when moved or damaged).
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { DataBlockFinder, decodeIndex, encodeIndex, planRanges, PzstdFrameWalker, type ArchiveIndex } from '../../src/catalog/archive-index.js';
import { ChunkRangeDecrypter, chunkSpan, createEncryptStream, generateIdentity, openPayloadKey } from '../../src/crypto/age.js';
import { IntegrityError } from '../../src/errors.js';
import { encryptAll } from '../crypto/helpers.js';

const CHUNK = 64 * 1024;
const SEALED = CHUNK + 16;

/** A seeded PRNG (the sweeps are the same every run). */
function prng(seed: number): (n: number) => number {
  let s = seed;
  return (n) => {
    s = (s * 48271) % 2147483647;
    return s % n;
  };
}

function pzstd(data: Buffer, level = 1): Buffer {
  const r = spawnSync('pzstd', [`-${level}`, '-p', '2', '-c', '-q'], { input: data, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(r.stderr.toString());
  return r.stdout;
}

/** Frame starts by an independent parse: skippable magic, size 4, then the frame's length. */
function parseFrames(z: Buffer): number[] {
  const out: number[] = [];
  for (let i = 0; i < z.length; ) {
    expect(z.readUInt32LE(i)).toBe(0x184d2a50);
    out.push(i);
    i += 12 + z.readUInt32LE(i + 8);
  }
  return out;
}

describe('PzstdFrameWalker', () => {
  it('finds every frame of real pzstd output, whatever the pieces it is fed in (1 byte around every header)', () => {
    // Compressible and incompressible parts, 5 frames of 2 MiB at level 1.
    const data = Buffer.concat([randomBytes(3 << 20), Buffer.alloc(6 << 20, 'a')]);
    const z = pzstd(data);
    const want = parseFrames(z);
    expect(want.length).toBe(Math.ceil(data.length / (2 << 20)));
    const rnd = prng(11);
    for (let trial = 0; trial < 20; trial++) {
      const w = new PzstdFrameWalker();
      let off = 0;
      while (off < z.length) {
        // Byte by byte across the headers, random pieces elsewhere.
        const nearHeader = want.some((h) => off >= h - 2 && off < h + 14);
        const n = nearHeader ? 1 + rnd(3) : 1 + rnd(300_000);
        w.push(z.subarray(off, Math.min(z.length, off + n)));
        off += n;
      }
      expect(w.frames()).toEqual({ frames: want, bytes: z.length });
    }
  });

  it('a plain zstd stream, a cut stream and garbage are no frames (the backup is then stored without an index)', () => {
    const data = randomBytes(100_000);
    const plain = spawnSync('zstd', ['-1', '-c', '-q'], { input: data }).stdout;
    const w1 = new PzstdFrameWalker();
    w1.push(plain);
    expect(w1.frames()).toHaveProperty('problem');
    const z = pzstd(data);
    for (const cut of [1, 11, 12, 13, z.length - 1]) {
      const w = new PzstdFrameWalker();
      w.push(z.subarray(0, cut));
      expect(w.frames(), `cut at ${cut}`).toHaveProperty('problem');
    }
    const w2 = new PzstdFrameWalker();
    w2.push(Buffer.concat([z, randomBytes(20)]));
    expect(w2.frames()).toHaveProperty('problem');
    expect(new PzstdFrameWalker().frames()).toHaveProperty('problem');
  });
});

/** A consistent synthetic index: `frames` frames of `frameBytes`, compressed sizes drawn at random. */
function syntheticIndex(rnd: (n: number) => number, frames: number, frameBytes: number, blocks: number): ArchiveIndex {
  const offsets: number[] = [];
  let c = 0;
  for (let i = 0; i < frames; i++) {
    offsets.push(c);
    c += 12 + 1 + rnd(frameBytes);
  }
  const bytes = (frames - 1) * frameBytes + 1 + rnd(frameBytes);
  const dataStart = 1 + rnd(Math.min(bytes - blocks, frameBytes * 2));
  const starts = new Set<number>([dataStart]);
  while (starts.size < blocks) starts.add(dataStart + rnd(bytes - dataStart));
  const sorted = [...starts].sort((a, b) => a - b);
  const headerLength = 100 + rnd(2000);
  const size = headerLength + 16 + c + Math.max(1, Math.ceil(c / CHUNK)) * 16;
  return {
    format: 'coffer-archive-index',
    formatVersion: 1,
    backupId: 'b',
    dump: { key: 'k', size, sha256: 's' },
    age: { headerLength },
    compressed: { bytes: c, frameBytes, frames: offsets },
    archive: { bytes, dataStart, blocks: sorted.map((s, i) => [i + 10, s]) },
  };
}

describe('planRanges', () => {
  it('covers exactly the chunks of the frames of every wanted range, in order, merged when they touch (swept over random indexes and ranges)', () => {
    const rnd = prng(5);
    for (let trial = 0; trial < 300; trial++) {
      const frameBytes = 1000 + rnd(300_000);
      const index = syntheticIndex(rnd, 1 + rnd(60), frameBytes, 1 + rnd(5));
      const ranges: Array<[number, number]> = [];
      for (let i = 0, n = 1 + rnd(6); i < n; i++) {
        const s = rnd(index.archive.bytes);
        ranges.push([s, s + 1 + rnd(index.archive.bytes - s)]);
      }
      const gap = rnd(2) === 0 ? 0 : rnd(400_000);
      const plan = planRanges(index, ranges, gap);
      // Brute force: the chunks each wanted byte needs.
      const needChunks = new Set<number>();
      const c = index.compressed;
      for (const [s, e] of ranges) {
        for (let f = Math.floor(s / frameBytes); f <= Math.floor((e - 1) / frameBytes); f++) {
          const cs = c.frames[f]!;
          const ce = f + 1 < c.frames.length ? c.frames[f + 1]! : c.bytes;
          for (let k = Math.floor(cs / CHUNK); k <= Math.floor((ce - 1) / CHUNK); k++) needChunks.add(k);
        }
      }
      const payload = index.age.headerLength + 16;
      let prevEnd = -1;
      const covered = new Set<number>();
      for (const g of plan.groups) {
        expect(g.start).toBeGreaterThan(prevEnd);
        prevEnd = g.end;
        expect(g.start).toBe(payload + g.firstChunk * SEALED);
        expect(g.end).toBeLessThanOrEqual(index.dump.size);
        for (let k = g.firstChunk; k <= g.lastChunk; k++) covered.add(k);
        expect(g.spanStart).toBe(g.firstFrame * frameBytes);
        for (const [ws, we] of g.wanted) {
          expect(ws).toBeGreaterThanOrEqual(g.spanStart);
          expect(we).toBeLessThanOrEqual(g.spanEnd);
        }
      }
      for (const k of needChunks) expect(covered.has(k)).toBe(true);
      // Every wanted byte is in exactly one group's wanted ranges.
      const wantedTotal = plan.groups.flatMap((g) => g.wanted).reduce((n, [s, e]) => n + e - s, 0);
      const union = mergeAll(ranges).reduce((n, [s, e]) => n + e - s, 0);
      expect(wantedTotal).toBe(union);
      expect(plan.bytes).toBe(plan.groups.reduce((n, g) => n + g.end - g.start, 0));
      // Without a merge gap nothing is fetched beyond the needed chunks but what lies between two that touch.
      if (gap === 0) for (const k of covered) if (!needChunks.has(k)) expect(needChunks.has(k - 1) || needChunks.has(k + 1)).toBe(true);
    }
  });
});

function mergeAll(ranges: Array<[number, number]>): Array<[number, number]> {
  const s = [...ranges].sort((a, b) => a[0] - b[0]);
  const out: Array<[number, number]> = [];
  for (const r of s) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else out.push([r[0], r[1]]);
  }
  return out;
}

describe('decodeIndex', () => {
  it('accepts a consistent index and refuses every inconsistency, naming the backup', () => {
    const index = syntheticIndex(prng(3), 20, 50_000, 4);
    const dump = { key: 'k', size: index.dump.size, sha256: 's', dumpBytes: index.archive.bytes };
    expect(decodeIndex(encodeIndex(index), 'b', dump)).toEqual(index);
    const mutations: Array<[string, (i: ArchiveIndex) => void]> = [
      ['backup', (i) => (i.backupId = 'other')],
      ['object', (i) => (i.dump.sha256 = 'x')],
      ['size', (i) => (i.dump.size += 1)],
      ['header', (i) => (i.age.headerLength += 1)],
      ['compressed bytes', (i) => (i.compressed.bytes += 1)],
      ['frame count', (i) => i.compressed.frames.pop()],
      ['frame order', (i) => ([i.compressed.frames[3], i.compressed.frames[4]] = [i.compressed.frames[4]!, i.compressed.frames[3]!])],
      ['first frame', (i) => (i.compressed.frames[0] = 1)],
      ['dump bytes', (i) => (i.archive.bytes += 1)],
      ['block order', (i) => i.archive.blocks.reverse()],
      ['data start', (i) => (i.archive.dataStart -= 1)],
      ['format', (i) => ((i as { formatVersion: number }).formatVersion = 2)],
    ];
    for (const [what, mutate] of mutations) {
      const bad = structuredClone(index);
      mutate(bad);
      expect(() => decodeIndex(encodeIndex(bad), 'b', dump), what).toThrow(IntegrityError);
    }
    expect(() => decodeIndex(Buffer.from('{'), 'b', dump)).toThrow(/archive index of backup b is not valid/);
  });
});

describe('ChunkRangeDecrypter and openPayloadKey', () => {
  it('opens any run of chunks of a real age file on its own; a moved, damaged, cut or over-long run fails (swept)', async () => {
    const { identity, recipient } = await generateIdentity();
    const enc = await createEncryptStream([recipient]);
    const plaintext = randomBytes(9 * CHUNK + 12_345);
    const file = await encryptAll(enc, plaintext);
    expect(await openPayloadKey(file.subarray(0, 20), [identity], false)).toBe('more');
    const access = await openPayloadKey(file.subarray(0, 4096), [identity], false);
    if (access === 'more') throw new Error('more');
    expect(access.headerLength).toBe(enc.headerLength);
    const chunks = Math.ceil(plaintext.length / CHUNK);
    const run = async (first: number, bytes: Buffer, counterFirst = first): Promise<Buffer> => {
      const d = new ChunkRangeDecrypter(access.key, counterFirst, chunks - 1, access.payloadOffset);
      const out: Buffer[] = [];
      Readable.from([bytes]).pipe(d);
      for await (const b of d as AsyncIterable<Buffer>) out.push(b);
      return Buffer.concat(out);
    };
    for (let first = 0; first < chunks; first++) {
      for (const last of [first, Math.min(chunks - 1, first + 2), chunks - 1]) {
        const { start, end } = chunkSpan(access.payloadOffset, plaintext.length, first, last);
        const got = await run(first, file.subarray(start, end));
        expect(got.equals(plaintext.subarray(first * CHUNK, Math.min(plaintext.length, (last + 1) * CHUNK)))).toBe(true);
      }
    }
    const rnd = prng(9);
    for (let trial = 0; trial < 25; trial++) {
      const first = rnd(chunks);
      const last = first + rnd(chunks - first);
      const { start, end } = chunkSpan(access.payloadOffset, plaintext.length, first, last);
      const bytes = Buffer.from(file.subarray(start, end));
      const at = rnd(bytes.length);
      bytes[at]! ^= 1 << rnd(8);
      await expect(run(first, bytes), `flip at ${start + at}`).rejects.toThrow(/authentication failed at byte offset/);
    }
    // The right bytes under another chunk's counter; a run cut inside a chunk; a middle chunk passed off as the last.
    const s = chunkSpan(access.payloadOffset, plaintext.length, 2, 3);
    await expect(run(2, file.subarray(s.start, s.end), 3)).rejects.toThrow(IntegrityError);
    await expect(run(2, file.subarray(s.start, s.end - 100))).rejects.toThrow(/truncated|authentication failed/);
    const d = new ChunkRangeDecrypter(access.key, 2, 3, access.payloadOffset);
    Readable.from([file.subarray(s.start, s.end)]).pipe(d);
    await expect((async () => {
      for await (const _ of d as AsyncIterable<Buffer>) void _;
    })()).rejects.toThrow(/authentication failed/);
  });
});

/** The data part of a custom archive as pg_dump writes it: blocks of COPY-text chunks, each closed by a zero-length chunk. */
function dataPart(rnd: (n: number) => number, ids: Array<{ dumpId: number; blobs: boolean }>, small = false): { bytes: Buffer; starts: number[] } {
  const parts: Buffer[] = [];
  const starts: number[] = [];
  let n = 0;
  const put = (b: Buffer): void => {
    parts.push(b);
    n += b.length;
  };
  for (const [k, { dumpId, blobs }] of ids.entries()) {
    starts.push(n);
    const h = Buffer.alloc(6);
    h[0] = blobs ? 3 : 1;
    h.writeUInt32LE(dumpId, 2);
    put(h);
    const chunks = rnd(4) === 0 ? 0 : 1 + rnd(40);
    for (let c = 0; c < chunks; c++) {
      if (blobs && c === 0) put(Buffer.from([0, 1, 0, 0, 0])); // a large object's oid
      const next = ids[k + 1];
      if (blobs && next && rnd(2) === 0) {
        // A large object's bytes may hold the next block's type and id, after fewer than five zero bytes: not a mark.
        const decoy = Buffer.alloc(12);
        decoy[rnd(5)] = 0x41;
        decoy[5] = next.blobs ? 3 : 1;
        decoy.writeUInt32LE(next.dumpId, 7);
        const hdr = Buffer.alloc(5);
        hdr.writeUInt32LE(decoy.length, 1);
        put(hdr);
        put(decoy);
      }
      // COPY text: no NUL byte; a length whose high bytes are zero.
      const len = 1 + rnd(!small && rnd(3) === 0 ? 300_000 : 200);
      const hdr = Buffer.alloc(5);
      hdr.writeUInt32LE(len, 1);
      put(hdr);
      put(Buffer.alloc(len, `${'\t'.repeat(rnd(3))}${rnd(1e9)}|${String.fromCharCode(33 + rnd(90))}\n`));
    }
    put(Buffer.alloc(blobs && chunks > 0 ? 10 : 5)); // end of data (and, for large objects, oid 0)
  }
  return { bytes: Buffer.concat(parts), starts };
}

describe('DataBlockFinder', () => {
  it('finds every block of a synthetic data part fed in any pieces (1 byte at a time around every mark), and says when one is missing', () => {
    const rnd = prng(17);
    for (let trial = 0; trial < 60; trial++) {
      const ids = Array.from({ length: 1 + rnd(8) }, (_, i) => ({ dumpId: 3000 + rnd(500) * 10 + i, blobs: false }));
      if (rnd(3) === 0) ids.splice(rnd(ids.length), 0, { dumpId: 9000 + trial, blobs: true });
      const dataStart = 1 + rnd(5000);
      const tiny = rnd(4) === 0;
      const { bytes, starts } = dataPart(rnd, ids, tiny);
      const finder = new DataBlockFinder(ids, dataStart);
      for (let off = 0; off < bytes.length; ) {
        const near = starts.some((b) => off >= b - 12 && off < b + 8);
        const n = near || tiny ? 1 + rnd(3) : 1 + rnd(rnd(2) === 0 ? 100 : 200_000);
        finder.push(bytes.subarray(off, Math.min(bytes.length, off + n)));
        off += n;
      }
      expect(finder.blocks(), `trial ${trial}`).toEqual(ids.map((e, i) => [e.dumpId, dataStart + starts[i]!]));
    }
    // A block that is not there, and a first block that is not where the TOC ends.
    const ids = [
      { dumpId: 11, blobs: false },
      { dumpId: 12, blobs: false },
    ];
    const { bytes } = dataPart(rnd, [ids[0]!]);
    const f = new DataBlockFinder(ids, 100);
    f.push(bytes);
    expect(f.blocks()).toEqual({ problem: 'the data block of entry 12 was not found' });
    const g = new DataBlockFinder(ids, 100);
    g.push(Buffer.concat([Buffer.from([7]), bytes]));
    expect(g.blocks()).toHaveProperty('problem', expect.stringMatching(/first data block is not at the end of the table of contents/));
  });
});
