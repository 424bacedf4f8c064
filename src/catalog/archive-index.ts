/**
 * The archive index: an encrypted sidecar of a custom-format, zstd-compressed backup that says
 * where each table's data lies, so that a selective restore fetches only those bytes.
 *
 * Three layers stand between a table's rows and the stored object, and the index maps all three:
 *
 *   dump (pg_dump -Fc)     header and table of contents, then one data block per table
 *                          (`archive.blocks`: dump id and start; a block ends where the next starts)
 *   compressed (pzstd)     independent zstd frames of `frameBytes` dump bytes each (the last may be
 *                          shorter), each behind a 12-byte skippable frame that holds its size
 *                          (`compressed.frames`: where each frame's skippable header starts)
 *   encrypted (age)        chunks of 64 KiB of the compressed stream, each sealed on its own
 *                          (`age.headerLength`: chunk c starts at headerLength + 16 + c × 65,552)
 *
 * A dump range therefore maps to whole frames, and those to whole chunks: a ranged read of the
 * chunks, authenticated one by one, decompressed frame by frame, gives the range back exactly.
 * The stream stays standard: `age -d | zstd -d` reads it whole (zstd skips skippable frames).
 *
 * The index is stored beside the dump, encrypted to the same recipients; the manifest records
 * its key, size and sha256. Everything in it is checked against what it describes before use.
 */
import { createHash } from 'node:crypto';
import { IntegrityError } from '../errors.js';
import { CHUNK_SIZE, chunkSpan } from '../crypto/stream.js';

export const INDEX_FORMAT = 'coffer-archive-index';

export interface ArchiveIndex {
  format: typeof INDEX_FORMAT;
  formatVersion: 1;
  /** The backup and the object it describes. */
  backupId: string;
  dump: { key: string; size: number; sha256: string };
  age: { headerLength: number };
  compressed: {
    /** Size of the compressed stream (the age plaintext). */
    bytes: number;
    /** Dump bytes per frame; every frame but the last holds exactly this many. */
    frameBytes: number;
    /** Offset in the compressed stream where each frame (its skippable header) starts, ascending, the first 0. */
    frames: number[];
  };
  archive: {
    /** Bytes pg_dump wrote. */
    bytes: number;
    /** Where the data blocks begin: the end of the header and table of contents. */
    dataStart: number;
    /** [dump id, start] of every data block, in file order. */
    blocks: Array<[number, number]>;
  };
}

/** Encodes an index as JSON bytes (the caller encrypts them). */
export function encodeIndex(index: ArchiveIndex): Buffer {
  return Buffer.from(JSON.stringify(index));
}

/**
 * Parses and checks an index: its own shape and consistency, and that it describes `dump`
 * (the manifest's object) of backup `backupId`.
 */
export function decodeIndex(bytes: Buffer, backupId: string, dump: { key: string; size: number; sha256: string; dumpBytes: number }): ArchiveIndex {
  const bad = (what: string): never => {
    throw new IntegrityError(`the archive index of backup ${backupId} is not valid (${what})`, { hint: 'restore without the index: coffer falls back to reading the whole backup; or run coffer verify on this backup' });
  };
  let v: ArchiveIndex;
  try {
    v = JSON.parse(bytes.toString('utf8')) as ArchiveIndex;
  } catch {
    return bad('not JSON');
  }
  if (v?.format !== INDEX_FORMAT || v.formatVersion !== 1) bad('unknown format');
  if (v.backupId !== backupId) bad(`it belongs to backup ${String(v.backupId)}`);
  if (v.dump?.key !== dump.key || v.dump.size !== dump.size || v.dump.sha256 !== dump.sha256) bad('it describes another object');
  const nat = (n: unknown): boolean => Number.isSafeInteger(n) && (n as number) >= 0;
  const c = v.compressed;
  const a = v.archive;
  if (!nat(v.age?.headerLength) || !c || !a || !nat(c.bytes) || !nat(c.frameBytes) || c.frameBytes === 0 || !Array.isArray(c.frames) || !nat(a.bytes) || !nat(a.dataStart) || !Array.isArray(a.blocks)) bad('missing fields');
  if (a.bytes !== dump.dumpBytes) bad(`it says pg_dump wrote ${a.bytes} bytes, the manifest ${dump.dumpBytes}`);
  if (v.age.headerLength + 16 + c.bytes + Math.max(1, Math.ceil(c.bytes / CHUNK_SIZE)) * 16 !== dump.size) bad('its sizes do not add up to the object size');
  if (c.frames.length !== Math.max(1, Math.ceil(a.bytes / c.frameBytes))) bad('its frame count does not match the dump size');
  let prev = -1;
  for (const f of c.frames) {
    if (!nat(f) || f <= prev || f >= c.bytes) bad('frame offsets out of order');
    prev = f;
  }
  if (c.frames[0] !== 0) bad('the first frame does not start the stream');
  prev = a.dataStart - 1;
  for (const b of a.blocks) {
    if (!Array.isArray(b) || b.length !== 2 || !nat(b[0]) || !nat(b[1]) || b[1] <= prev || b[1] >= a.bytes) bad('data blocks out of order');
    prev = b[1];
  }
  if (a.dataStart > a.bytes || (a.blocks.length > 0 && a.blocks[0]![1] !== a.dataStart)) bad('the table of contents does not end where the data begins');
  return v;
}

/** The sha256 of bytes, hex. */
export function sha256Hex(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** A run of whole frames to fetch, and the dump ranges wanted from it. */
export interface FrameGroup {
  /** First and last frame (inclusive). */
  firstFrame: number;
  lastFrame: number;
  /** Dump bytes the frames decompress to: `[spanStart, spanEnd)`. */
  spanStart: number;
  spanEnd: number;
  /** The frames in the compressed stream: `[compressedStart, compressedEnd)`. */
  compressedStart: number;
  compressedEnd: number;
  /** The age chunks that hold them (inclusive), and their bytes in the object: `[start, end)`. */
  firstChunk: number;
  lastChunk: number;
  start: number;
  end: number;
  /** Dump ranges `[start, end)` wanted from this group, ascending. */
  wanted: Array<[number, number]>;
}

export interface RangePlan {
  groups: FrameGroup[];
  /** Object bytes the groups fetch. */
  bytes: number;
  /** The number of the payload's last chunk (opened as the final one). */
  finalChunk: number;
  payloadOffset: number;
}

/** Data block `dumpId`'s dump range, or undefined when the archive has no block for it. */
export function blockRange(index: ArchiveIndex, dumpId: number): [number, number] | undefined {
  const blocks = index.archive.blocks;
  const i = blocks.findIndex((b) => b[0] === dumpId);
  if (i < 0) return undefined;
  return [blocks[i]![1], i + 1 < blocks.length ? blocks[i + 1]![1] : index.archive.bytes];
}

/**
 * The ranged reads that give back dump `ranges` (`[start, end)`, any order): whole frames,
 * grouped where they share a chunk or lie within `mergeGap` object bytes of each other (one
 * request instead of two, for little more data).
 */
export function planRanges(index: ArchiveIndex, ranges: Array<[number, number]>, mergeGap = 256 * 1024): RangePlan {
  const c = index.compressed;
  const payloadOffset = index.age.headerLength + 16;
  const finalChunk = Math.max(0, Math.ceil(c.bytes / CHUNK_SIZE) - 1);
  const sorted = ranges.filter(([s, e]) => e > s).sort((x, y) => x[0] - y[0]);
  const frameOf = (pos: number): number => Math.min(c.frames.length - 1, Math.floor(pos / c.frameBytes));
  const group = (f0: number, f1: number, wanted: Array<[number, number]>): FrameGroup => {
    const compressedStart = c.frames[f0]!;
    const compressedEnd = f1 + 1 < c.frames.length ? c.frames[f1 + 1]! : c.bytes;
    const firstChunk = Math.floor(compressedStart / CHUNK_SIZE);
    const lastChunk = Math.floor((compressedEnd - 1) / CHUNK_SIZE);
    const span = chunkSpan(payloadOffset, c.bytes, firstChunk, lastChunk);
    return {
      firstFrame: f0,
      lastFrame: f1,
      spanStart: f0 * c.frameBytes,
      spanEnd: Math.min((f1 + 1) * c.frameBytes, index.archive.bytes),
      compressedStart,
      compressedEnd,
      firstChunk,
      lastChunk,
      start: span.start,
      end: span.end,
      wanted,
    };
  };
  const groups: FrameGroup[] = [];
  for (const [s, e] of sorted) {
    if (s < 0 || e > index.archive.bytes) throw new RangeError(`internal: range [${s}, ${e}) outside the dump`);
    const f0 = frameOf(s);
    const f1 = frameOf(e - 1);
    const last = groups[groups.length - 1];
    if (last && f0 <= last.lastFrame + 1) {
      groups[groups.length - 1] = group(last.firstFrame, Math.max(f1, last.lastFrame), mergeWanted(last.wanted, [s, e]));
      continue;
    }
    const next = group(f0, f1, [[s, e]]);
    if (last && next.start - last.end <= mergeGap) {
      groups[groups.length - 1] = group(last.firstFrame, f1, mergeWanted(last.wanted, [s, e]));
      continue;
    }
    groups.push(next);
  }
  return { groups, bytes: groups.reduce((n, g) => n + g.end - g.start, 0), finalChunk, payloadOffset };
}

function mergeWanted(wanted: Array<[number, number]>, r: [number, number]): Array<[number, number]> {
  const last = wanted[wanted.length - 1];
  if (last && r[0] <= last[1]) return [...wanted.slice(0, -1), [last[0], Math.max(last[1], r[1])]];
  return [...wanted, r];
}

/** pzstd's skippable frame before each zstd frame: magic 0x184D2A50, size 4, then the frame's size. */
const PZSTD_HEADER = 12;
const SKIPPABLE_MAGIC = 0x184d2a50;

/**
 * Follows pzstd's output as it streams by and notes where each frame starts: every frame is
 * preceded by a 12-byte skippable frame holding its compressed size, so the walk skips frames
 * by arithmetic. Anything else (a plain zstd stream, garbage) stops it: `frames()` is then
 * undefined and the backup is stored without an index.
 */
export class PzstdFrameWalker {
  private pos = 0;
  /** Offset of the next skippable header. */
  private next = 0;
  private readonly starts: number[] = [];
  private pending = Buffer.alloc(0);
  private broken: string | undefined;

  push(chunk: Buffer): void {
    if (this.broken) return;
    let off = 0;
    while (off < chunk.length) {
      const at = this.pos + off;
      if (at < this.next) {
        off += Math.min(chunk.length - off, this.next - at);
        continue;
      }
      // at === next: a header begins (maybe split across chunks)
      const need = PZSTD_HEADER - this.pending.length;
      const take = chunk.subarray(off, off + need);
      this.pending = this.pending.length === 0 ? Buffer.from(take) : Buffer.concat([this.pending, take]);
      off += take.length;
      if (this.pending.length < PZSTD_HEADER) break;
      const h = this.pending;
      this.pending = Buffer.alloc(0);
      if (h.readUInt32LE(0) !== SKIPPABLE_MAGIC || h.readUInt32LE(4) !== 4) {
        this.broken = `no pzstd frame header at byte ${this.next} of the compressed stream`;
        return;
      }
      this.starts.push(this.next);
      this.next += PZSTD_HEADER + h.readUInt32LE(8);
    }
    this.pos += chunk.length;
  }

  /** The frames' start offsets, once the stream ended at a frame's end; otherwise why not. */
  frames(): { frames: number[]; bytes: number } | { problem: string } {
    if (this.broken) return { problem: this.broken };
    if (this.pending.length > 0 || this.pos !== this.next) return { problem: 'the compressed stream ends inside a frame' };
    if (this.starts.length === 0) return { problem: 'the compressed stream has no frames' };
    return { frames: [...this.starts], bytes: this.pos };
  }
}

/**
 * Finds where each data block of a custom archive begins, as the archive streams by, without
 * walking its rows: after the table of contents (read whole by {@link ArchiveOffsetScanner}),
 * pg_dump writes one block per entry that has data, in table-of-contents order; each starts with
 * its type byte (1 data, 3 large objects) and its dump id, and every block but the first follows
 * the previous block's end mark, a zero-length chunk. So the next block is where the 11 bytes
 * `00 00 00 00 00 <type> 00 <id, 4 bytes LE>` first occur (the type byte is the block's start).
 *
 * Table data is COPY text, which holds no NUL byte, and every chunk length before it is non-zero:
 * those bytes cannot occur inside it. Large-object data is binary and could, if it held that
 * very sequence with the next block's id; the index would then be wrong, which the restore's own
 * checks and coffer verify catch (the data itself is not affected).
 */
export class DataBlockFinder {
  private readonly patterns: Buffer[];
  private next = 0;
  private readonly found: Array<[number, number]> = [];
  /** The last bytes of the previous push (a pattern may straddle two pushes). */
  private tail = Buffer.alloc(0);
  private pos: number;
  private broken: string | undefined;

  /**
   * @param expected - the entries that have a data block, in table-of-contents order, with whether it is a large-object block.
   * @param dataStart - where the first block must begin (the end of the table of contents).
   */
  constructor(
    private readonly expected: Array<{ dumpId: number; blobs: boolean }>,
    private readonly dataStart: number,
  ) {
    this.patterns = expected.map((e) => {
      const p = Buffer.alloc(11);
      p[5] = e.blobs ? 3 : 1;
      p.writeUInt32LE(e.dumpId, 7);
      return p;
    });
    this.pos = dataStart;
  }

  /** Archive bytes from `dataStart` on, in order. */
  push(chunk: Buffer): void {
    if (this.broken !== undefined || this.next >= this.patterns.length) {
      this.pos += chunk.length;
      return;
    }
    let buf = chunk;
    let base = this.pos;
    let from = 0;
    if (this.next === 0) {
      // The first block starts right at dataStart, with no end mark before it.
      buf = this.tail.length > 0 ? Buffer.concat([this.tail, chunk]) : chunk;
      base = this.pos - this.tail.length;
      const head = this.patterns[0]!.subarray(5);
      const at = this.dataStart - base;
      if (buf.length - at < head.length) {
        this.tail = Buffer.from(buf);
        this.pos += chunk.length;
        return;
      }
      if (!buf.subarray(at, at + head.length).equals(head)) {
        this.broken = `the first data block is not at the end of the table of contents (byte ${this.dataStart})`;
        return;
      }
      this.found.push([this.expected[0]!.dumpId, this.dataStart]);
      this.next = 1;
      from = at + head.length;
    } else if (this.tail.length > 0 && chunk.length <= 10) {
      // A few bytes: searched with what was kept.
      buf = Buffer.concat([this.tail, chunk]);
      base = this.pos - this.tail.length;
    } else if (this.tail.length > 0) {
      // A mark that straddles the previous push: search the seam (the kept tail and the first
      // bytes of this chunk) apart, so that the chunk itself is searched where it lies (no copy).
      const seam = Buffer.concat([this.tail, chunk.subarray(0, 10)]);
      const i = seam.indexOf(this.patterns[this.next]!);
      if (i >= 0 && i < this.tail.length) {
        this.found.push([this.expected[this.next]!.dumpId, this.pos - this.tail.length + i + 5]);
        this.next++;
        from = i + 11 - this.tail.length;
      }
    }
    while (this.next < this.patterns.length) {
      const i = markAt(buf, this.patterns[this.next]!, from);
      if (i < 0) break;
      this.found.push([this.expected[this.next]!.dumpId, base + i + 5]);
      this.next++;
      from = i + 11;
    }
    // Keep what a mark may still start in: at most its length less one, and nothing before `from`.
    const keep = Math.max(0, Math.min(10, buf.length - from));
    this.tail = Buffer.from(buf.subarray(buf.length - keep));
    this.pos += chunk.length;
  }

  /** Every block's [dump id, start], once all were found; otherwise why not. */
  blocks(): Array<[number, number]> | { problem: string } {
    if (this.broken) return { problem: this.broken };
    if (this.next < this.patterns.length) return { problem: `the data block of entry ${this.expected[this.next]!.dumpId} was not found` };
    return [...this.found];
  }
}

/**
 * Where `mark` (five zero bytes, then a block's type and id) first lies in `buf` at or after
 * `from`, or -1. It searches for the part after the zeros (it starts with the block type, 1 or 3,
 * a byte that COPY's text hardly ever holds) and then checks the zeros before it: a search led by
 * zero bytes stops at every row's length word (about a tenth of the CPU of a backup's copying).
 */
function markAt(buf: Buffer, mark: Buffer, from: number): number {
  const tail = mark.subarray(5);
  for (let j = buf.indexOf(tail, from + 5); j >= 0; j = buf.indexOf(tail, j + 1)) {
    if (buf[j - 1] === 0 && buf[j - 2] === 0 && buf[j - 3] === 0 && buf[j - 4] === 0 && buf[j - 5] === 0) return j - 5;
  }
  return -1;
}
