/**
 * Data offsets for custom-format archives that pg_dump wrote to a pipe.
 *
 * pg_dump writes the table of contents (TOC) before the data. When its output is a seekable
 * file it goes back at the end and rewrites the TOC with each data block's file offset; when
 * the output is a pipe (coffer's case: pg_dump | zstd | age) it cannot, and every entry says
 * "offset not set". `pg_restore -j` on such a file makes each worker search for its block from
 * the start of the data, skipping every chunk (one per COPY row with -Z0) with a seek: millions
 * of syscalls per worker, and no size estimates to schedule the largest tables first.
 *
 * {@link ArchiveOffsetScanner} follows the archive as it streams by (constant memory besides one
 * small record per TOC entry and data block; chunk payloads are skipped by arithmetic) and
 * notes where each data block starts. {@link patchArchiveOffsets} then writes those offsets
 * into the finished file, exactly what pg_dump does for a seekable output. Anything unexpected
 * leaves the file untouched: pg_restore still works without offsets, only slower.
 *
 * Format (src/bin/pg_dump/pg_backup_archiver.c, pg_backup_custom.c; archive versions 1.14 =
 * pg_dump 12–15, 1.15 = 16, 1.16 = 17/18):
 *   header  "PGDMP", vmaj, vmin, vrev, intSize, offSize, format (1 = custom),
 *           compression (1.15+: one byte; before: int), 7 ints (creation time),
 *           str dbname, str server version, str pg_dump version
 *   TOC     int count; per entry: int dumpId, int hadDumper, str tableoid, str oid, str tag,
 *           str desc, int section, str defn, str dropStmt, str copyStmt, str namespace,
 *           str tablespace, str tableam, [1.16: int relkind], str owner, str "false",
 *           str dependency… then a NULL str, then the offset: one flag byte
 *           (1 not set, 2 set, 3 no data) and offSize bytes, least significant first
 *   data    blocks: byte type (1 data, 3 large objects), int dumpId, then
 *           data: chunks (int len, len bytes) until len 0;
 *           large objects: (int oid, chunks until len 0) until oid 0
 *   int     a sign byte (0/1) then intSize bytes, least significant first;
 *   str     int length (-1 = NULL) then the bytes.
 * The recorded offset of a block is the position of its type byte.
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { Writable } from 'node:stream';

const BLK_DATA = 1;
const BLK_BLOBS = 3;
const K_OFFSET_POS_NOT_SET = 1;
const K_OFFSET_POS_SET = 2;
const K_OFFSET_NO_DATA = 3;
const FORMAT_CUSTOM = 1;
const MIN_MINOR = 14;
const MAX_MINOR = 16;
/** Both are what every pg_dump 12–18 build writes (4-byte int, 64-bit pgoff_t). */
const INT_SIZE = 4;
const OFF_SIZE = 8;
const INT_LEN = 1 + INT_SIZE;
const OFFSET_FIELD_LEN = 1 + OFF_SIZE;
const MAX_STR = 0x7fffffff;

// Parser states: each consumes one fixed-size field (`need` bytes).
const S_MAGIC = 0;
const S_VERSION = 1;
const S_SIZES = 2; // intSize, offSize, format
const S_COMPRESSION = 3;
const S_HEAD_INT = 4; // the 7 creation-time ints
const S_HEAD_STR = 5; // dbname, server version, pg_dump version
const S_TOC_COUNT = 6;
const S_E_DUMPID = 7;
const S_E_HADDUMPER = 8;
const S_E_STR_A = 9; // tableoid, oid, tag, desc
const S_E_SECTION = 10;
const S_E_STR_B = 11; // defn, dropStmt, copyStmt, namespace, tablespace, tableam
const S_E_RELKIND = 12;
const S_E_STR_C = 13; // owner, with-oids
const S_E_DEP = 14;
const S_E_OFFSET = 15;
const S_BLOCK_TYPE = 16;
const S_BLOCK_ID = 17;
const S_CHUNK_LEN = 18;
const S_LO_OID = 19;

/** One TOC entry's offset field. */
export interface TocOffset {
  dumpId: number;
  /** File position of the entry's offset flag byte. */
  field: number;
  /** 1 not set, 2 set, 3 no data. */
  state: number;
  /** The stored offset (meaningful when state is 2). */
  offset: number;
}

export interface ArchiveLayout {
  /** e.g. "1.14" */
  version: string;
  /** Total bytes seen. */
  size: number;
  toc: TocOffset[];
  /** Start (type byte) of each data block, by dumpId, in file order. */
  blocks: Map<number, number>;
  /**
   * Rows of each table's data, by dumpId: the lines of its COPY data (COPY text ends every row
   * with a newline and escapes those inside values). Only for uncompressed data blocks of TABLE
   * DATA entries with a COPY statement (not --inserts dumps, not large objects).
   */
  rows: Map<number, number>;
}

/**
 * The layout, or why the bytes are not a whole custom archive: `reason` is either said of the
 * archive ("ends inside a data block (… bytes)") or names the fault ("unknown data block type 7",
 * "bad TOC entry id"); {@link scanProblem} puts it in a sentence.
 */
export type ScanResult = { ok: true; layout: ArchiveLayout } | { ok: false; reason: string };

/**
 * A scan's `reason` said of `archive` (what the caller calls it): "the custom archive ends inside
 * a data block (… bytes)", "unknown data block type 7 in the custom archive".
 */
export function scanProblem(archive: string, reason: string): string {
  return /^ends /.test(reason) ? `${archive} ${reason}` : `${reason} in ${archive}`;
}

/**
 * A TOC entry about the database itself: `DATABASE` (its CREATE DATABASE statement, with
 * encoding and locale), `DATABASE PROPERTIES` (connection limit, ALTER DATABASE … SET, ALTER
 * ROLE … IN DATABASE … SET), and the database's `COMMENT`, `ACL` and `SECURITY LABEL` (tag
 * `DATABASE <name>`); pg_restore applies these only with --create, under the archive's name.
 * Also `ENCODING` (the client encoding the archive's text is in). Strings hold the archive's
 * bytes one per character (latin1 decoding): they are in that encoding, not necessarily UTF-8.
 */
export interface DatabaseTocEntry {
  dumpId: number;
  desc: string;
  tag: string;
  defn: string;
  owner: string;
}

/**
 * One entry of a custom archive's table of contents, as read from the stream: what `pg_restore
 * --list` prints, plus the dependencies (dump ids) and whether it announces a data block.
 * Strings hold the archive's bytes one per character (latin1): see {@link DatabaseTocEntry}.
 */
export interface ArchiveTocEntry {
  dumpId: number;
  desc: string;
  tag: string;
  /** The schema ('' for objects outside one: schemas, extensions, the database). */
  namespace: string;
  owner: string;
  deps: number[];
  /** 1 data offset not set, 2 set, 3 no data. */
  dataState: number;
}

/** The header's strings: the database name and the versions of the server and of pg_dump. */
export interface ArchiveHeaderStrings {
  dbname: string;
  serverVersion: string;
  pgDumpVersion: string;
}

/** An int at b[o]: a sign byte (0 or 1, else NaN) then 4 bytes, least significant first. */
function readInt(b: Uint8Array, o: number): number {
  const v = b[o + 1]! + b[o + 2]! * 0x100 + b[o + 3]! * 0x10000 + b[o + 4]! * 0x1000000;
  const sign = b[o]!;
  return sign === 0 ? v : sign === 1 ? -v : Number.NaN;
}

/** Newlines in b[start..end) (one search per newline: a COPY row of -Z0 data is usually a chunk of its own, ending with its newline). */
function countNewlines(b: Uint8Array, start: number, end: number): number {
  const buf = Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  let n = 0;
  for (let j = buf.indexOf(10, start); j >= 0 && j < end; j = j + 1 < end ? buf.indexOf(10, j + 1) : -1) n++;
  return n;
}

const TAIL = 16;

/**
 * The rows of a table's COPY data from its newlines and last bytes: every row ends with a
 * newline (those inside values are escaped), and pg_dump ends the data with its end-of-data
 * line `\.` and blank lines (`\.\n\n\n`), which are not rows. A row holding `\.` is
 * written `\\.`, so only a `\.` at a line's start ends the data.
 */
function copyRows(newlines: number, tail: Uint8Array, tailLen: number, blockBytes: number): number {
  let k = 0;
  while (k < tailLen && tail[tailLen - 1 - k] === 10) k++;
  const dot = tailLen - k - 2;
  if (k === 0 || dot < 0 || tail[dot] !== 0x5c || tail[dot + 1] !== 0x2e) return newlines;
  const lineStart = dot === 0 ? tailLen === blockBytes : tail[dot - 1] === 10;
  return lineStart ? newlines - k : newlines;
}

/** Bytes start..end of b as a latin1 string (one character per byte), without copying them first. */
function latin1(b: Uint8Array, start: number, end: number): string {
  return (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength)).toString('latin1', start, end);
}

/**
 * A dependency's dump id, as `Number()` reads its text: its digits without a string made of
 * them (thousands of entries each have one or more); anything but plain digits goes through `Number()`.
 */
function decimal(b: Uint8Array, start: number, len: number): number {
  if (len === 0 || len > 15) return Number(latin1(b, start, start + len));
  let v = 0;
  for (let i = start; i < start + len; i++) {
    const c = b[i]! - 0x30;
    if (c < 0 || c > 9) return Number(latin1(b, start, start + len));
    v = v * 10 + c;
  }
  return v;
}

/**
 * The latin1 text of a short field that repeats from entry to entry (desc, namespace, owner):
 * the same string as last time when the bytes are the same, so a table of contents of
 * thousands of entries does not make (and the collector then move) thousands of copies of "public".
 */
class RecentText {
  private readonly bytes = new Uint8Array(64);
  private len = -1;
  private value = '';

  text(b: Uint8Array, start: number, len: number): string {
    if (len === this.len) {
      let i = 0;
      while (i < len && b[start + i] === this.bytes[i]) i++;
      if (i === len) return this.value;
    }
    this.value = latin1(b, start, start + len);
    if (len <= this.bytes.length) {
      this.bytes.set(b.subarray(start, start + len));
      this.len = len;
    } else this.len = -1;
    return this.value;
  }
}

/** Longest tag/desc/owner/defn string kept for a database entry; longer ones are not captured. */
const MAX_CAPTURE = 4 * 1024 * 1024;

type CaptureField = 'tag' | 'desc' | 'defn' | 'owner' | 'namespace' | 'dep' | 'head';

function emptyEntry(): Record<CaptureField, string> {
  return { tag: '', desc: '', defn: '', owner: '', namespace: '', dep: '', head: '' };
}

/** Whether an entry with this desc and tag is about the database itself. */
export function isDatabaseEntry(desc: string, tag: string): boolean {
  if (desc === 'DATABASE' || desc === 'DATABASE PROPERTIES' || desc === 'ENCODING') return true;
  return (desc === 'COMMENT' || desc === 'ACL' || desc === 'SECURITY LABEL') && tag.startsWith('DATABASE ');
}

/**
 * Follows a custom-format archive fed in order with {@link push} (chunks of any size, even one
 * byte); {@link end} tells where each data block starts. Never throws on bad input: the result
 * says why it could not follow it.
 */
export class ArchiveOffsetScanner {
  private state = S_MAGIC;
  private need = 5;
  /** Bytes of the current field gathered across chunks. */
  private readonly pend = new Uint8Array(16);
  private pendLen = 0;
  /** Payload bytes still to skip. */
  private skip = 0;
  /** Absolute position of the next byte. */
  private pos = 0;
  private failure: string | undefined;
  private minor = 0;
  private version = '';
  private count = 0;
  private entriesLeft = 0;
  private dumpId = 0;
  private blockStart = 0;
  private inLo = false;
  private readonly toc: TocOffset[] = [];
  private readonly blocks = new Map<number, number>();
  private readonly rows = new Map<number, number>();
  /** The archive's data blocks are not compressed by pg_dump (their COPY text can be read). */
  private uncompressed = false;
  /** TOC entries whose data is COPY text (a copy statement), by dumpId. */
  private readonly copyIds = new Set<number>();
  /** The entry being read has a copy statement. */
  private hasCopy = false;
  /** The data block being read, and whether (and how many) rows are counted in it. */
  private blockId = 0;
  private counting = false;
  private blockRows = 0;
  /**
   * The last bytes of the COPY data being counted: the end of the last piece of at least TAIL
   * bytes (a reference, not a copy: a row is usually a piece of its own), then the bytes of
   * shorter pieces after it.
   */
  private lastPiece: Uint8Array | undefined;
  private lastPieceEnd = 0;
  private readonly tail = new Uint8Array(TAIL);
  private tailLen = 0;
  /** What {@link lastBytes} returns (not {@link tail}, which it reads). */
  private readonly scratch = new Uint8Array(TAIL);
  private blockBytes = 0;
  private readonly countRows: boolean;

  /** `countRows`: count the rows of each table's COPY data ({@link ArchiveLayout.rows}); a restore does, a backup does not. */
  constructor(opts: { countRows?: boolean } = {}) {
    this.countRows = opts.countRows === true;
  }
  /** The string field being captured (instead of skipped), and its bytes so far. */
  private capField: CaptureField | undefined;
  private capBuf: Buffer[] = [];
  private entry: Record<CaptureField, string> = emptyEntry();
  private deps: number[] = [];
  private readonly dbEntries: DatabaseTocEntry[] = [];
  private readonly allEntries: ArchiveTocEntry[] = [];
  private readonly headStrings: string[] = [];
  private tocEnd = -1;
  /** The last desc, namespace and owner read by {@link entryFast}: most entries repeat them, and get the same string. */
  private readonly recent = { desc: new RecentText(), namespace: new RecentText(), owner: new RecentText() };

  /** Every TOC entry, in TOC order (complete once {@link tocComplete}). */
  entries(): ArchiveTocEntry[] {
    return this.allEntries;
  }

  /** The header's database name and versions (once the header was read). */
  headerStrings(): ArchiveHeaderStrings | undefined {
    if (this.headStrings.length < 3) return undefined;
    const [dbname, serverVersion, pgDumpVersion] = this.headStrings as [string, string, string];
    return { dbname, serverVersion, pgDumpVersion };
  }

  /** The entries about the database itself, in TOC order (complete once {@link tocComplete}). */
  databaseEntries(): DatabaseTocEntry[] {
    return this.dbEntries;
  }

  /** The whole table of contents has been read (the data blocks start here). */
  get tocComplete(): boolean {
    return this.tocEnd >= 0;
  }

  /** Where the table of contents ends (the first data block's offset); -1 until it is read whole. */
  get tocEndOffset(): number {
    return this.tocEnd;
  }

  /** Parsing stopped on bad input. */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  /** A Writable that feeds this scanner (for a fan-out); it never errors and never waits. */
  sink(): Writable {
    return new Writable({
      highWaterMark: 1024 * 1024,
      write: (chunk: Buffer, _enc, cb) => {
        this.push(chunk);
        cb();
      },
    });
  }

  push(chunk: Uint8Array): void {
    if (this.failure !== undefined) return;
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (this.skip > 0) {
        const k = Math.min(this.skip, n - i);
        if (this.capField !== undefined) {
          if (k === this.skip && this.capBuf.length === 0) {
            // The whole string is in this chunk (nearly always): its text, without copies.
            const field = this.lastCapture!;
            this.capField = undefined;
            this.skip = 0;
            this.pos += k;
            i += k;
            this.captured0(field, latin1(chunk, i - k, i));
            continue;
          }
          this.capBuf.push(Buffer.from(chunk.subarray(i, i + k)));
        } else if (this.counting) this.countData(chunk, i, i + k);
        i += k;
        this.skip -= k;
        this.pos += k;
        if (this.skip === 0 && this.capField !== undefined) this.captured();
        continue;
      }
      if (this.state === S_CHUNK_LEN && this.pendLen === 0) {
        // Hot path: a data block is a long run of (len, payload) chunks.
        while (i + INT_LEN <= n) {
          if (chunk[i] !== 0) break; // let the general path report it
          const len = chunk[i + 1]! + chunk[i + 2]! * 0x100 + chunk[i + 3]! * 0x10000 + chunk[i + 4]! * 0x1000000;
          if (len === 0 || len > MAX_STR) break;
          i += INT_LEN;
          const avail = n - i;
          if (len <= avail) {
            if (this.counting) this.countData(chunk, i, i + len);
            i += len;
            this.pos += INT_LEN + len;
          } else {
            if (this.counting) this.countData(chunk, i, n);
            this.skip = len - avail;
            this.pos += INT_LEN + avail;
            i = n;
          }
        }
        if (i >= n || this.skip > 0) continue;
      }
      if (this.state === S_E_DUMPID && this.pendLen === 0) {
        // Hot path of a long table of contents: whole entries within this chunk, parsed at once.
        let next: number;
        while (this.state === S_E_DUMPID && (next = this.entryFast(chunk, i, n)) >= 0) i = next;
        if (i >= n) continue;
      }
      const need = this.need;
      if (this.pendLen === 0 && n - i >= need) {
        const at = this.pos;
        this.pos += need;
        this.field(chunk, i, at);
        i += need;
      } else {
        const k = Math.min(need - this.pendLen, n - i);
        for (let j = 0; j < k; j++) this.pend[this.pendLen + j] = chunk[i + j]!;
        this.pendLen += k;
        i += k;
        this.pos += k;
        if (this.pendLen === need) {
          this.pendLen = 0;
          this.field(this.pend, 0, this.pos - need);
        }
      }
      if (this.failure !== undefined) return;
    }
  }

  /** After the last byte. */
  end(): ScanResult {
    if (this.failure !== undefined) return { ok: false, reason: this.failure };
    if (this.state !== S_BLOCK_TYPE || this.pendLen !== 0 || this.skip !== 0) {
      const where = this.state < S_TOC_COUNT ? 'the header' : this.state < S_BLOCK_TYPE ? 'the table of contents' : 'a data block';
      return { ok: false, reason: `ends inside ${where} (${this.pos} bytes)` };
    }
    return { ok: true, layout: { version: this.version, size: this.pos, toc: this.toc, blocks: this.blocks, rows: this.rows } };
  }

  private fail(reason: string): void {
    this.failure ??= `${reason} at byte ${this.pos}`;
  }

  /** Reads an int at b[o]; NaN when the sign byte is neither 0 nor 1. */
  private int(b: Uint8Array, o: number): number {
    return readInt(b, o);
  }

  /**
   * A string's length int: skip its bytes (NULL = -1 has none), or keep them as the current
   * entry's `capture` field. Returns false for NULL.
   */
  private str(b: Uint8Array, o: number, capture?: CaptureField): boolean {
    const len = this.int(b, o);
    if (capture) this.entry[capture] = '';
    if (len === -1) return false;
    if (len === 0 && capture) this.captured0(capture);
    if (!(len >= 0 && len <= MAX_STR)) {
      this.fail('bad string length');
      return false;
    }
    this.skip = len;
    if (capture && len > 0 && len <= MAX_CAPTURE) {
      this.capField = capture;
      this.lastCapture = capture;
      this.capBuf = [];
    }
    return true;
  }

  private captured(): void {
    // latin1 keeps every byte as one character: the text is in the archive's client encoding.
    const text = Buffer.concat(this.capBuf).toString('latin1');
    this.capField = undefined;
    this.capBuf = [];
    this.captured0(this.lastCapture!, text);
  }

  private lastCapture: CaptureField | undefined;

  /** A captured string's text (an empty string has no bytes to gather). */
  private captured0(field: CaptureField, text = ''): void {
    if (field === 'dep') {
      const id = Number(text);
      if (Number.isInteger(id) && id > 0) this.deps.push(id);
    } else if (field === 'head') this.headStrings.push(text);
    else this.entry[field] = text;
  }

  /** Whether the entry being read is about the database (its desc and tag are known). */
  private databaseEntry(): boolean {
    return isDatabaseEntry(this.entry.desc, this.entry.tag);
  }

  private go(state: number, need: number = INT_LEN): void {
    this.state = state;
    this.need = need;
  }

  private startEntry(): void {
    if (this.entriesLeft === 0) {
      this.tocEnd = this.pos;
      this.go(S_BLOCK_TYPE, 1);
    } else {
      this.entriesLeft--;
      this.go(S_E_DUMPID);
    }
  }

  /** COPY data bytes b[start..end) of the block being counted. */
  private countData(b: Uint8Array, start: number, end: number): void {
    this.blockRows += countNewlines(b, start, end);
    this.blockBytes += end - start;
    if (end - start >= TAIL) {
      this.lastPiece = b;
      this.lastPieceEnd = end;
      this.tailLen = 0;
      return;
    }
    if (this.tailLen + end - start > TAIL) {
      // Keep the last TAIL bytes, then this piece's.
      const last = this.lastBytes();
      const keep = Math.min(last.length, TAIL - (end - start));
      this.tail.set(last.subarray(last.length - keep));
      this.tailLen = keep;
      this.lastPiece = undefined;
    }
    for (let i = start; i < end; i++) this.tail[this.tailLen++] = b[i]!;
  }

  /** The last (up to TAIL) bytes of the COPY data counted so far, in a buffer reused by the next call (read them at once). */
  private lastBytes(): Uint8Array {
    const out = this.scratch;
    let n = 0;
    if (this.lastPiece) {
      const from = Math.max(0, this.lastPieceEnd - (TAIL - this.tailLen));
      for (let i = from; i < this.lastPieceEnd; i++) out[n++] = this.lastPiece[i]!;
    }
    for (let i = 0; i < this.tailLen; i++) out[n++] = this.tail[i]!;
    return out.subarray(0, n);
  }

  /**
   * Reads one whole TOC entry at b[o..n) at once (state S_E_DUMPID), with the same outcome as
   * the field-by-field path, and returns where it ends; -1 when the entry does not lie whole in
   * the chunk or holds anything that path must judge (a bad id, length or offset flag, a string
   * too long to capture): that path then reads the same bytes, and reports any problem.
   */
  private entryFast(b: Uint8Array, o: number, n: number): number {
    const start = o;
    // dumpId, hadDumper
    if (o + 2 * INT_LEN > n) return -1;
    const id = readInt(b, o);
    if (!(id > 0)) return -1;
    o += 2 * INT_LEN;
    let tag = '';
    let desc = '';
    let defn = '';
    let namespace = '';
    let owner = '';
    let hasCopy = false;
    // tableoid, oid, tag, desc; section; defn, dropStmt, copyStmt, namespace, tablespace, tableam; [relkind]; owner, with-oids
    for (let k = 0; k < 14; k++) {
      if (k === 4 || (k === 11 && this.minor >= 16)) {
        if (o + INT_LEN > n) return -1;
        o += INT_LEN;
        if (k === 4) continue;
      }
      if (k === 11) continue;
      if (o + INT_LEN > n) return -1;
      const len = readInt(b, o);
      o += INT_LEN;
      if (len === -1) continue;
      if (!(len >= 0 && len <= MAX_CAPTURE) || o + len > n) return -1;
      if (k === 2) tag = latin1(b, o, o + len);
      else if (k === 3) desc = this.recent.desc.text(b, o, len);
      else if (k === 5 && isDatabaseEntry(desc, tag)) defn = latin1(b, o, o + len);
      else if (k === 7) hasCopy = len > 0;
      else if (k === 8) namespace = this.recent.namespace.text(b, o, len);
      else if (k === 12) owner = this.recent.owner.text(b, o, len);
      o += len;
    }
    // dependencies, until a NULL string
    const deps: number[] = [];
    for (;;) {
      if (o + INT_LEN > n) return -1;
      const len = readInt(b, o);
      o += INT_LEN;
      if (len === -1) break;
      if (!(len >= 0 && len <= MAX_CAPTURE) || o + len > n) return -1;
      const dep = decimal(b, o, len);
      if (Number.isInteger(dep) && dep > 0) deps.push(dep);
      o += len;
    }
    // the data offset
    if (o + OFFSET_FIELD_LEN > n) return -1;
    const state = b[o]!;
    if (state !== K_OFFSET_POS_NOT_SET && state !== K_OFFSET_POS_SET && state !== K_OFFSET_NO_DATA) return -1;
    const lo = b[o + 1]! + b[o + 2]! * 0x100 + b[o + 3]! * 0x10000 + b[o + 4]! * 0x1000000;
    const hi = b[o + 5]! + b[o + 6]! * 0x100 + b[o + 7]! * 0x10000 + b[o + 8]! * 0x1000000;
    if (hi >= 0x200000) return -1;
    const field = this.pos + (o - start);
    o += OFFSET_FIELD_LEN;
    this.pos += o - start;
    this.dumpId = id;
    this.toc.push({ dumpId: id, field, state, offset: hi * 0x100000000 + lo });
    if (isDatabaseEntry(desc, tag)) this.dbEntries.push({ dumpId: id, desc, tag, defn, owner });
    this.allEntries.push({ dumpId: id, desc, tag, namespace, owner, deps, dataState: state });
    if (hasCopy) this.copyIds.add(id);
    this.startEntry();
    return o;
  }

  private field(b: Uint8Array, o: number, at: number): void {
    switch (this.state) {
      case S_MAGIC:
        if (b[o] !== 0x50 || b[o + 1] !== 0x47 || b[o + 2] !== 0x44 || b[o + 3] !== 0x4d || b[o + 4] !== 0x50) return this.fail('not a custom-format archive (no PGDMP magic)');
        return this.go(S_VERSION, 3);
      case S_VERSION:
        if (b[o] !== 1 || b[o + 1]! < MIN_MINOR || b[o + 1]! > MAX_MINOR) return this.fail(`unsupported archive version ${b[o]}.${b[o + 1]}`);
        this.minor = b[o + 1]!;
        this.version = `1.${this.minor}`;
        return this.go(S_SIZES, 3);
      case S_SIZES:
        if (b[o] !== INT_SIZE || b[o + 1] !== OFF_SIZE) return this.fail(`unsupported integer/offset size ${b[o]}/${b[o + 1]}`);
        if (b[o + 2] !== FORMAT_CUSTOM) return this.fail(`not a custom-format archive (format ${b[o + 2]})`);
        return this.go(S_COMPRESSION, this.minor >= 15 ? 1 : INT_LEN);
      case S_COMPRESSION:
        // 1.15+: the algorithm (0 none); before: the zlib level (0 none, -1 default).
        this.uncompressed = this.minor >= 15 ? b[o] === 0 : this.int(b, o) === 0;
        this.count = 7;
        return this.go(S_HEAD_INT);
      case S_HEAD_INT:
        if (--this.count === 0) {
          this.count = 3;
          this.go(S_HEAD_STR);
        }
        return;
      case S_HEAD_STR:
        if (!this.str(b, o, 'head')) this.headStrings.push('');
        if (--this.count === 0) this.go(S_TOC_COUNT);
        return;
      case S_TOC_COUNT: {
        const n = this.int(b, o);
        if (!(n >= 0)) return this.fail('bad TOC entry count');
        this.entriesLeft = n;
        return this.startEntry();
      }
      case S_E_DUMPID: {
        const id = this.int(b, o);
        if (!(id > 0)) return this.fail('bad TOC entry id');
        this.dumpId = id;
        return this.go(S_E_HADDUMPER);
      }
      case S_E_HADDUMPER:
        this.count = 4;
        this.entry = emptyEntry();
        this.deps = [];
        this.hasCopy = false;
        return this.go(S_E_STR_A);
      case S_E_STR_A:
        // tableoid, oid, tag, desc
        this.str(b, o, this.count === 2 ? 'tag' : this.count === 1 ? 'desc' : undefined);
        if (--this.count === 0) this.go(S_E_SECTION);
        return;
      case S_E_SECTION:
        this.count = 6; // defn, dropStmt, copyStmt, namespace, tablespace, tableam (1.14+)
        return this.go(S_E_STR_B);
      case S_E_STR_B:
        // defn, dropStmt, copyStmt, namespace, tablespace, tableam
        if (this.count === 4) this.hasCopy = this.int(b, o) > 0;
        this.str(b, o, this.count === 6 && this.databaseEntry() ? 'defn' : this.count === 3 ? 'namespace' : undefined);
        if (--this.count === 0) {
          if (this.minor >= 16) this.go(S_E_RELKIND);
          else {
            this.count = 2;
            this.go(S_E_STR_C);
          }
        }
        return;
      case S_E_RELKIND:
        this.count = 2;
        return this.go(S_E_STR_C);
      case S_E_STR_C:
        // owner, with-oids
        this.str(b, o, this.count === 2 ? 'owner' : undefined);
        if (--this.count === 0) this.go(S_E_DEP);
        return;
      case S_E_DEP:
        if (!this.str(b, o, 'dep') && this.failure === undefined) this.go(S_E_OFFSET, OFFSET_FIELD_LEN);
        return;
      case S_E_OFFSET: {
        const state = b[o]!;
        if (state !== K_OFFSET_POS_NOT_SET && state !== K_OFFSET_POS_SET && state !== K_OFFSET_NO_DATA) return this.fail(`bad data offset flag ${state}`);
        const lo = b[o + 1]! + b[o + 2]! * 0x100 + b[o + 3]! * 0x10000 + b[o + 4]! * 0x1000000;
        const hi = b[o + 5]! + b[o + 6]! * 0x100 + b[o + 7]! * 0x10000 + b[o + 8]! * 0x1000000;
        if (hi >= 0x200000) return this.fail('data offset beyond 2^53');
        this.toc.push({ dumpId: this.dumpId, field: at, state, offset: hi * 0x100000000 + lo });
        const { tag, desc, defn, owner, namespace } = this.entry;
        if (this.databaseEntry()) this.dbEntries.push({ dumpId: this.dumpId, desc, tag, defn, owner });
        this.allEntries.push({ dumpId: this.dumpId, desc, tag, namespace, owner, deps: this.deps, dataState: state });
        if (this.hasCopy) this.copyIds.add(this.dumpId);
        return this.startEntry();
      }
      case S_BLOCK_TYPE: {
        const t = b[o];
        if (t !== BLK_DATA && t !== BLK_BLOBS) return this.fail(`unknown data block type ${t}`);
        this.inLo = t === BLK_BLOBS;
        this.blockStart = at;
        return this.go(S_BLOCK_ID);
      }
      case S_BLOCK_ID: {
        const id = this.int(b, o);
        if (!(id > 0)) return this.fail('bad data block id');
        if (this.blocks.has(id)) return this.fail(`second data block for entry ${id}`);
        this.blocks.set(id, this.blockStart);
        this.blockId = id;
        this.counting = this.countRows && !this.inLo && this.uncompressed && this.copyIds.has(id);
        this.blockRows = 0;
        this.lastPiece = undefined;
        this.tailLen = 0;
        this.blockBytes = 0;
        return this.go(this.inLo ? S_LO_OID : S_CHUNK_LEN);
      }
      case S_CHUNK_LEN: {
        const len = this.int(b, o);
        if (len === 0) {
          if (this.counting) {
            const tail = this.lastBytes();
            this.rows.set(this.blockId, copyRows(this.blockRows, tail, tail.length, this.blockBytes));
          }
          this.counting = false;
          return this.go(this.inLo ? S_LO_OID : S_BLOCK_TYPE, this.inLo ? INT_LEN : 1);
        }
        if (!(len > 0 && len <= MAX_STR)) return this.fail('bad chunk length');
        this.skip = len;
        return;
      }
      case S_LO_OID: {
        const oid = this.int(b, o);
        if (Number.isNaN(oid)) return this.fail('bad large object oid');
        if (oid === 0) return this.go(S_BLOCK_TYPE, 1);
        return this.go(S_CHUNK_LEN);
      }
      default:
        return this.fail(`internal: state ${this.state}`);
    }
  }
}

/**
 * TOC entries that announce data (their offset field says "not set" or "set", not "no data")
 * but have no data block in the archive: a truncated archive, cut at a block boundary. pg_dump
 * writes a block for every such entry.
 */
/** Whether a TOC entry has a data block in the archive (its offset is set or not yet set, but not "no data"). */
export function hasDataBlock(e: Pick<ArchiveTocEntry, 'dataState'>): boolean {
  return e.dataState !== K_OFFSET_NO_DATA;
}

export function missingDataBlocks(layout: ArchiveLayout): number[] {
  return layout.toc.filter((e) => e.state !== K_OFFSET_NO_DATA && !layout.blocks.has(e.dumpId)).map((e) => e.dumpId);
}

export type PatchOutcome =
  | { patched: number }
  /** Nothing was written: why. */
  | { skipped: string };

/** What {@link patchArchiveOffsets} would write: one (field, offset) per data block. */
export function offsetPlan(layout: ArchiveLayout): { plan: Array<{ dumpId: number; field: number; offset: number }> } | { skipped: string } {
  const byId = new Map<number, TocOffset>();
  for (const e of layout.toc) {
    if (byId.has(e.dumpId)) return { skipped: `TOC entry ${e.dumpId} appears twice` };
    byId.set(e.dumpId, e);
  }
  if (layout.toc.some((e) => e.state === K_OFFSET_POS_SET)) return { skipped: 'the archive already has data offsets' };
  const plan: Array<{ dumpId: number; field: number; offset: number }> = [];
  for (const [dumpId, offset] of layout.blocks) {
    const e = byId.get(dumpId);
    if (!e) return { skipped: `data block for entry ${dumpId}, which is not in the TOC` };
    if (e.state !== K_OFFSET_POS_NOT_SET) return { skipped: `data block for entry ${dumpId}, whose TOC entry has no data` };
    plan.push({ dumpId, field: e.field, offset });
  }
  plan.sort((a, b) => a.field - b.field);
  return { plan };
}

/**
 * Writes the data offsets found by the scanner into the archive file (which must be exactly
 * what was scanned). Every field and every block header is checked in the file before
 * anything is written; on any mismatch nothing is written. Never throws for an unexpected
 * archive (I/O errors do throw).
 */
export function patchArchiveOffsets(file: string, scan: ScanResult): PatchOutcome {
  if (!scan.ok) return { skipped: scan.reason };
  const p = offsetPlan(scan.layout);
  if ('skipped' in p) return p;
  if (p.plan.length === 0) return { skipped: 'no data blocks' };
  const fd = openSync(file, 'r+');
  try {
    const size = fstatSync(fd).size;
    if (size !== scan.layout.size) return { skipped: `the file has ${size} bytes, ${scan.layout.size} were scanned` };
    // 1. Each block starts where the scan saw it.
    const head = Buffer.alloc(1 + INT_LEN);
    for (const { dumpId, offset } of [...p.plan].sort((a, b) => a.offset - b.offset)) {
      if (readSync(fd, head, 0, head.length, offset) !== head.length || (head[0] !== BLK_DATA && head[0] !== BLK_BLOBS) || head[1] !== 0 || head.readUInt32LE(2) !== dumpId) {
        return { skipped: `no block header for entry ${dumpId} at ${offset}` };
      }
    }
    // 2. The TOC fields, in windows (the TOC is in one piece, fields in file order): all
    //    checked first, then patched; nothing is written unless every one checked out.
    const WINDOW = 1024 * 1024;
    const windows: Array<{ from: number; to: number; start: number; len: number }> = [];
    for (let k = 0; k < p.plan.length; ) {
      const start = p.plan[k]!.field;
      let last = k;
      while (last + 1 < p.plan.length && p.plan[last + 1]!.field + OFFSET_FIELD_LEN - start <= WINDOW) last++;
      windows.push({ from: k, to: last, start, len: p.plan[last]!.field + OFFSET_FIELD_LEN - start });
      k = last + 1;
    }
    const buf = Buffer.alloc(Math.max(...windows.map((w) => w.len)));
    for (const pass of ['check', 'write'] as const) {
      for (const w of windows) {
        if (readSync(fd, buf, 0, w.len, w.start) !== w.len) return { skipped: 'short read of the TOC' };
        for (let j = w.from; j <= w.to; j++) {
          const { dumpId, field, offset } = p.plan[j]!;
          const at = field - w.start;
          if (pass === 'check') {
            if (buf[at] !== K_OFFSET_POS_NOT_SET) return { skipped: `TOC entry ${dumpId}: offset flag ${buf[at]} in the file` };
            continue;
          }
          buf[at] = K_OFFSET_POS_SET;
          buf.writeUInt32LE(offset % 0x100000000, at + 1);
          buf.writeUInt32LE(Math.floor(offset / 0x100000000), at + 5);
        }
        if (pass === 'write') {
          for (let done = 0; done < w.len; ) done += writeSync(fd, buf, done, w.len - done, w.start + done);
        }
      }
    }
    return { patched: p.plan.length };
  } finally {
    closeSync(fd);
  }
}

/** Scans a whole archive file (tests, diagnostics). */
export function scanArchiveFile(file: string, opts: { countRows?: boolean } = {}): ScanResult {
  const s = new ArchiveOffsetScanner(opts);
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(1024 * 1024);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      s.push(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return s.end();
}
