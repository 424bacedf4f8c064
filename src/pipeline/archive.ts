import { createHash } from 'node:crypto';
import { PassThrough, Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream';
import { explainNoMatch, openDecryptStream } from '../crypto/age.js';
import { IntegrityError } from '../errors.js';
import { ArchiveOffsetScanner, missingDataBlocks, scanProblem, type ArchiveHeaderStrings, type ArchiveLayout, type ArchiveTocEntry, type DatabaseTocEntry } from '../pg/archive-offsets.js';
import { parseArchiveHeader, type ArchiveHeader } from '../pg/archive-toc.js';
import { missingTool } from '../pg/tools.js';
import { PzstdFrameWalker } from '../catalog/archive-index.js';
import { isAbortEcho } from '../run/abort.js';
import { toolEnv, type Child, type Supervisor } from '../run/supervisor.js';
import { readHead } from '../stream-head.js';
import type { TocProgress } from './toc-gate.js';

/** What the manifest says the object holds: checked over the whole stream, before the archive ends. */
export interface ExpectedArchive {
  sha256: string;
  size: number;
  /** `sha256` covers only this many first bytes (a rekeyed object: header + nonce; the AEAD authenticates the rest). */
  sha256Bytes?: number;
  /** Bytes pg_dump produced (0: unknown, not checked). */
  dumpBytes?: number;
  /** `custom`: a pg_dump custom archive; `sql`: plain SQL (schema-only, data-only, globals); `tar`: a physical backup. */
  format?: ArchiveFormat;
  /** The database the archive must be a dump of (a custom archive's header names it). */
  database?: string;
}

/**
 * Why a custom archive's header (the database pg_dump connected to) shows that it is not a dump
 * of `database`: a wrapper (`docker compose exec`, a script in `--pg-bin`) that dumped another
 * database. Names are compared as the bytes libpq was given (UTF-8).
 */
export function otherDatabase(header: ArchiveHeaderStrings | undefined, database: string): string | undefined {
  if (header === undefined || header.dbname === Buffer.from(database, 'utf8').toString('latin1')) return undefined;
  return `the archive is a dump of database ${JSON.stringify(Buffer.from(header.dbname, 'latin1').toString('utf8'))}, not of ${JSON.stringify(database)}`;
}

export interface ArchiveInput {
  /** The stored (encrypted) bytes. */
  ciphertext: Readable;
  expected?: ExpectedArchive;
  identities: string[];
  /** The recipients the manifest says the object was encrypted to: a header they should open but do not is damaged, not a wrong key. */
  recipients?: readonly string[];
  zstdCommand?: string[];
  /** Owns the decompressor and hears every failure of the stages. */
  sup: Supervisor;
  /** The environment children may see (dd, zstd get only the locale and the path of it). */
  env: NodeJS.ProcessEnv;
}

export interface OpenedArchive {
  /**
   * The decrypted, decompressed archive: a pg_dump custom archive or plain SQL. It ends only
   * after the whole object was read, authenticated to its last byte, matched the manifest's
   * sha256 and size, the decompressor exited 0, and the archive itself was whole: a custom
   * archive walked from its header through every data block its table of contents announces,
   * plain SQL non-empty (and, for a backup with a manifest, with pg_dump's closing line), its
   * size equal to the manifest's `dumpBytes`. Otherwise it errors (IntegrityError), and the
   * failure is recorded with the supervisor.
   */
  archive: Readable;
  format: ArchiveFormat;
  compressed: boolean;
  children: Child[];
  /** Bytes of ciphertext read and of archive produced so far. */
  stats(): { storedBytes: number; archiveBytes: number };
  /**
   * A custom archive's entries about the database itself (its CREATE DATABASE, properties,
   * comment, ACL): reads the archive up to the end of its table of contents, keeping what it
   * read in the stream. `undefined` for plain SQL.
   */
  databaseEntries(): Promise<DatabaseTocEntry[] | undefined>;
  /**
   * The database entries that come before its CREATE DATABASE options are known: reads the
   * archive only until its DATABASE entry (pg_dump writes the entries about the database first),
   * or to the end of the table of contents when it has none. Enough to create the database while
   * the rest of a long table of contents streams on; {@link databaseEntries} has them all.
   */
  creationEntries?(): Promise<DatabaseTocEntry[] | undefined>;
  /** A custom archive's header (version bytes, server and pg_dump versions) from its first bytes; `undefined` for plain SQL. */
  header: ArchiveHeader | undefined;
  /**
   * A custom archive's whole table of contents: reads the archive up to its end, keeping what
   * it read in the stream. `undefined` for plain SQL; IntegrityError when it cannot be read.
   */
  tocEntries(): Promise<ArchiveTocEntry[] | undefined>;
  /** Where each data block lies: known once the archive was read to its end (custom archives only). */
  layout(): ArchiveLayout | undefined;
  /** How far the check has read a custom archive's table of contents (for pg_restore's gate, ./toc-gate.ts); absent when the stream is not the archive as stored. */
  tocProgress?(): TocProgress;
  /** A compressed archive's pzstd frames (where each starts), once read to its end; why not, when it has none. */
  frames?(): ReturnType<PzstdFrameWalker['frames']>;
}

export type ArchiveFormat = 'custom' | 'sql' | 'tar';

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** A zstd stream starts with a frame or a skippable frame (pzstd's, before each frame: magic 0x184D2A5?). */
function isZstd(head: Buffer): boolean {
  if (head.subarray(0, 4).equals(ZSTD_MAGIC)) return true;
  return head.length >= 4 && (head[0]! & 0xf0) === 0x50 && head[1] === 0x2a && head[2] === 0x4d && head[3] === 0x18;
}
/** POSIX/GNU tar: "ustar" at offset 257 of the first header block. */
const TAR_MAGIC = Buffer.from('ustar');
const TAR_BLOCK = 512;

function formatOf(head: Buffer): ArchiveFormat {
  if (head.subarray(0, 5).equals(PGDMP_MAGIC)) return 'custom';
  if (head.length >= 262 && head.subarray(257, 262).equals(TAR_MAGIC)) return 'tar';
  return 'sql';
}
const PGDMP_MAGIC = Buffer.from('PGDMP');
/** pg_dump's and pg_dumpall's last comment line in plain format. */
const SQL_TRAILER = /-- PostgreSQL database (cluster )?dump complete\n/;
/** How far from the end pg_dump's closing line may stand (pg_dump 15.14+ adds `\unrestrict <key>` after it). */
const SQL_TRAILER_WINDOW = 4096;

/**
 * How much of the checked archive may wait for its reader (here, and in each writable after it:
 * ./fanout.ts, ./toc-gate.ts). The check walks every byte as it comes: with a MiB at each hop,
 * node walked some 3 MiB ahead of pg_restore, which for an archive of many tables is the table
 * of contents pg_restore must read before it connects, and that walk took CPU from pg_restore
 * and CREATE DATABASE just then (on 2 cores, ~55 ms later to pg_restore's first connection for
 * 4,000 tables). The bytes before the check (the decompressor's output) are still buffered.
 */
export const CHECKED_AHEAD = 64 * 1024;

/**
 * ciphertext ─▶ sha256/size check ─▶ age decrypt ─▶ (zstd -d, detected by its magic) ─▶ whole-archive check ─▶ archive
 *
 * The age header is read and authenticated before this resolves, and the first bytes of the
 * archive are known: a wrong identity, a foreign file, an empty plaintext or an archive of
 * another kind than the manifest says fails here, before any database is touched.
 */
export async function openArchive(input: ArchiveInput): Promise<OpenedArchive> {
  const { sup, expected } = input;
  let storedBytes = 0;
  let archiveBytes = 0;
  const hash = createHash('sha256');
  const tap = new Transform({
    highWaterMark: 1024 * 1024,
    transform(chunk: Buffer, _e, cb) {
      storedBytes += chunk.length;
      if (expected && storedBytes > expected.size) {
        cb(new IntegrityError(`the backup object is larger than its manifest says (${expected.size} bytes)`, { hint: 'the object or the manifest was replaced; do not trust this backup' }));
        return;
      }
      const hashed = expected?.sha256Bytes;
      if (hashed === undefined) hash.update(chunk);
      else if (storedBytes - chunk.length < hashed) hash.update(chunk.subarray(0, hashed - (storedBytes - chunk.length)));
      cb(null, chunk);
    },
    flush(cb) {
      if (expected) {
        if (storedBytes !== expected.size) {
          cb(new IntegrityError(`the backup object is truncated: ${storedBytes} of ${expected.size} bytes`, { hint: 'use another backup' }));
          return;
        }
        if (hash.digest('hex') !== expected.sha256) {
          cb(new IntegrityError(`sha256 of the backup object${expected.sha256Bytes !== undefined ? "'s header" : ''} does not match its manifest: it was modified or corrupted`, { hint: 'the object was modified or swapped; do not trust this backup' }));
          return;
        }
      }
      cb();
    },
  });
  const failStage = (err: Error): void => {
    if (!isAbortEcho(err)) sup.fail(err);
  };
  tap.on('error', failStage);
  input.ciphertext.on('error', failStage);
  pipeline(input.ciphertext, tap, () => undefined);
  const { plaintext } = await openDecryptStream(tap, input.identities).catch(async (err: unknown) => {
    throw await explainNoMatch(err, input.identities, input.recipients);
  });
  plaintext.on('error', failStage);

  const first = await peek(plaintext);
  if (first.length === 0) {
    throw new IntegrityError('the backup holds no data: its encrypted content is empty', { hint: 'this backup stored nothing; use another backup' });
  }
  const compressed = isZstd(first);
  const walker = new PzstdFrameWalker();
  const children: Child[] = [];
  let source: Readable = plaintext;
  /** Settles when everything upstream of the check ended cleanly. */
  let upstreamDone: Promise<unknown>;
  if (compressed) {
    const zstd = sup.spawn({
      argv: [...(input.zstdCommand ?? ['zstd']), '-d', '-q', '-c'],
      env: toolEnv(input.env),
      stdin: 'pipe',
      what: 'zstd -d',
      missing: missingTool('zstd -d', 'this backup is zstd-compressed: install zstd (apt-get install zstd)'),
      // Its input was authenticated (or the age error came first, and wins): what it rejects is the archive itself.
      explain: (f) => new IntegrityError(`the compressed archive is damaged or truncated (zstd: ${f.stderr.lastLines(1, 200) || `exit ${f.code ?? f.signal}`})`, { hint: 'use another backup' }),
    });
    children.push(zstd);
    plaintext.on('data', (c: Buffer) => walker.push(c));
    const fed = new Promise<void>((resolve, reject) => pipeline(plaintext, zstd.stdin!, (err) => (err ? reject(err) : resolve())));
    fed.catch(() => undefined);
    upstreamDone = Promise.all([fed, zstd.done]);
    source = zstd.stdout!;
  } else {
    upstreamDone = new Promise<void>((resolve, reject) => {
      plaintext.once('end', resolve);
      plaintext.once('error', reject);
    });
  }
  upstreamDone.catch(() => undefined);

  const check = new ArchiveCheck(expected);
  /** Called once the check has read a chunk: what waits for it while the archive is piped ({@link checkedUntil}). */
  const onChecked = new Set<() => void>();
  const checked = new Transform({
    highWaterMark: CHECKED_AHEAD,
    transform(chunk: Buffer, _e, cb) {
      archiveBytes += chunk.length;
      check.push(chunk);
      for (const f of onChecked) f();
      cb(null, chunk);
    },
    flush(cb) {
      upstreamDone.then(
        () => {
          const problem = check.end(archiveBytes);
          cb(problem);
        },
        (err: Error) => cb(err),
      );
    },
  });
  checked.on('error', failStage);
  pipeline(source, checked, () => undefined);
  const head = await readAhead(checked, (held) => held.reduce((n, b) => n + b.length, 0) >= TAR_BLOCK);
  if (head.length === 0) {
    await upstreamDone.catch((err: unknown) => {
      throw err;
    });
    throw new IntegrityError('the backup holds no data: the decompressed archive is empty', { hint: 'this backup stored nothing; use another backup' });
  }
  const format = formatOf(head);
  if (format === 'tar' && expected?.format !== 'tar') {
    throw new IntegrityError('this is a physical backup (a tar archive of a data directory), not a pg_dump archive', { hint: 'restore it with coffer restore --physical' });
  }
  if (expected?.format && expected.format !== format) {
    const what = (f: string): string => (f === 'custom' ? 'a pg_dump custom archive' : f === 'tar' ? 'a tar archive' : 'plain SQL');
    throw new IntegrityError(`the backup holds ${what(format)}, but its manifest says ${what(expected.format)}`, { hint: 'the object or the manifest was replaced; do not trust this backup' });
  }
  // Until the check has read far enough: ahead of the consumer (the bytes put back) while nothing
  // consumes the archive; once it is piped, as the bytes pass (reading ahead of a consumer
  // would hand it the bytes read twice: a read emits them to it, then they are put back).
  const checkedAhead = (done: () => boolean): Promise<unknown> => (checked.listenerCount('data') > 0 ? checkedUntil(checked, done, onChecked) : readAhead(checked, done));
  const databaseEntries = async (): Promise<DatabaseTocEntry[] | undefined> => {
    if (format !== 'custom') return undefined;
    await checkedAhead(() => check.tocRead);
    return check.databaseEntries();
  };
  const creationEntries = async (): Promise<DatabaseTocEntry[] | undefined> => {
    if (format !== 'custom') return undefined;
    await checkedAhead(() => check.tocRead || check.databaseEntries().some((e) => e.desc === 'DATABASE'));
    return [...check.databaseEntries()];
  };
  const tocEntries = async (): Promise<ArchiveTocEntry[] | undefined> => {
    if (format !== 'custom') return undefined;
    await checkedAhead(() => check.tocRead);
    const entries = check.tocEntries();
    if (entries === undefined) {
      throw new IntegrityError(`the archive's table of contents cannot be read (${check.scanFailure() ?? 'it ends early'})`, { hint: 'use another backup' });
    }
    return entries;
  };
  const header = format === 'custom' ? parseArchiveHeader(head) : undefined;
  // An archive shorter than the read-ahead ended inside it: the stream can take nothing back
  // after its end, so its bytes are served from what was read.
  const archive = checked.readableEnded ? new PassThrough().end(head) : checked;
  return { archive, format, compressed, children, stats: () => ({ storedBytes, archiveBytes }), databaseEntries, creationEntries, header, tocEntries, layout: () => check.layout(), tocProgress: () => check.tocProgress(), frames: () => walker.frames() };
}

/**
 * Proves an archive is whole as it streams by: a custom archive is walked from its header
 * through its table of contents and every data block (payloads skipped by arithmetic), and
 * every entry that announces data must have its block; plain SQL must be non-empty and, when
 * a manifest says it is a pg_dump output, end with pg_dump's closing line. The size must be
 * the manifest's `dumpBytes` when that is known.
 */
export class ArchiveCheck {
  private scanner: ArchiveOffsetScanner | undefined;
  private format: ArchiveFormat | undefined;
  private bytes = 0;
  private tail = Buffer.alloc(0);

  constructor(private readonly expected: Pick<ExpectedArchive, 'format' | 'dumpBytes' | 'database'> | undefined) {}

  /** A custom archive's table of contents has been read whole (or cannot be: bad input). */
  get tocRead(): boolean {
    return this.scanner === undefined ? this.format !== undefined : this.scanner.tocComplete || this.scanner.failed;
  }

  databaseEntries(): DatabaseTocEntry[] {
    return this.scanner?.databaseEntries() ?? [];
  }

  /** Every TOC entry, once the table of contents was read whole; undefined if it could not be. */
  tocEntries(): ArchiveTocEntry[] | undefined {
    return this.scanner && this.scanner.tocComplete && !this.scanner.failed ? this.scanner.entries() : undefined;
  }

  /** Where the table of contents ends, once read (a custom archive). */
  tocProgress(): TocProgress {
    const s = this.scanner;
    return { end: s && s.tocComplete ? s.tocEndOffset : undefined, failed: s === undefined || s.failed };
  }

  /** Why the scan stopped (bad input), if it did. */
  scanFailure(): string | undefined {
    const r = this.scanner?.failed ? this.scanner.end() : undefined;
    return r && !r.ok ? r.reason : undefined;
  }

  private scanned: ArchiveLayout | undefined;

  /** The data blocks' places, after {@link end} found the archive whole. */
  layout(): ArchiveLayout | undefined {
    return this.scanned;
  }

  push(chunk: Buffer): void {
    if (this.format === undefined) {
      // openArchive reads ahead at least a tar block before the first push
      this.format = formatOf(chunk);
      if (this.format === 'custom') this.scanner = new ArchiveOffsetScanner({ countRows: true });
    }
    this.bytes += chunk.length;
    if (this.scanner) this.scanner.push(chunk);
    else {
      this.tail = Buffer.concat([this.tail, chunk.subarray(Math.max(0, chunk.length - SQL_TRAILER_WINDOW))]);
      if (this.tail.length > SQL_TRAILER_WINDOW) this.tail = this.tail.subarray(this.tail.length - SQL_TRAILER_WINDOW);
    }
  }

  /** `null` when whole; otherwise the IntegrityError to fail with. */
  end(archiveBytes: number): IntegrityError | null {
    const damaged = (what: string): IntegrityError => new IntegrityError(`the backup is truncated or damaged: ${what}`, { hint: 'use another backup' });
    if (archiveBytes === 0) return new IntegrityError('the backup holds no data: the archive is empty', { hint: 'this backup stored nothing; use another backup' });
    if (this.scanner) {
      const scan = this.scanner.end();
      if (!scan.ok) return damaged(scanProblem('the custom archive', scan.reason));
      this.scanned = scan.layout;
      const other = this.expected?.database === undefined ? undefined : otherDatabase(this.scanner.headerStrings(), this.expected.database);
      if (other) return new IntegrityError(other, { hint: 'this backup is not a copy of the database its manifest names; use another backup, or, if this archive is the one you want, restore its object by itself: coffer restore --file <object> (no manifest is checked)' });
      const missing = missingDataBlocks(scan.layout);
      if (missing.length > 0) return damaged(`the custom archive ends without the data of ${missing.length} of its table-of-contents entries (first: entry ${missing[0]})`);
    } else if (this.format === 'tar') {
      // A whole tar ends with two zero blocks (then, from GNU tar, zero padding to its record size).
      if (this.bytes % TAR_BLOCK !== 0 || this.tail.length < 2 * TAR_BLOCK || this.tail.subarray(-2 * TAR_BLOCK).some((b) => b !== 0)) {
        return damaged('the tar archive does not end with its end-of-archive blocks');
      }
    } else if (this.expected?.format === 'sql' && !SQL_TRAILER.test(this.tail.toString('latin1'))) {
      return damaged("the SQL dump does not end with pg_dump's closing line");
    }
    const want = this.expected?.dumpBytes ?? 0;
    if (want > 0 && archiveBytes !== want) return damaged(`the archive has ${archiveBytes} bytes, its manifest says pg_dump wrote ${want}`);
    return null;
  }
}

/**
 * Waits until `done()` holds (asked each time the check has read a chunk: `onChecked`) or the
 * archive stream ends, while it flows to its consumer: nothing is read here.
 */
function checkedUntil(s: Readable, done: () => boolean, onChecked: Set<() => void>): Promise<void> {
  if (done() || s.readableEnded) return Promise.resolve();
  if (s.errored) return Promise.reject(s.errored);
  if (s.destroyed) return Promise.reject(new Error('the archive stream was closed before it was read'));
  return new Promise<void>((resolve, reject) => {
    const off = (): void => {
      onChecked.delete(onChunk);
      s.off('end', onEnd);
      s.off('error', onError);
      s.off('close', onClose);
    };
    const onChunk = (): void => {
      if (!done()) return;
      off();
      resolve();
    };
    const onEnd = (): void => {
      off();
      resolve();
    };
    const onError = (err: Error): void => {
      off();
      reject(err);
    };
    const onClose = (): void => {
      off();
      reject(s.errored ?? new Error('the archive stream was closed before it was read'));
    };
    onChecked.add(onChunk);
    s.on('end', onEnd);
    s.on('error', onError);
    s.on('close', onClose);
  });
}

/** The format of an archive opened for a logical restore (openArchive refuses a tar unless the manifest says tar). */
export function logicalFormat(format: ArchiveFormat): 'custom' | 'sql' {
  if (format === 'tar') throw new IntegrityError('this is a physical backup (a tar archive of a data directory), not a pg_dump archive', { hint: 'restore it with coffer restore --physical' });
  return format;
}

/** The first bytes of a stream, left in it (unshifted). Empty at end of stream. */
export function peek(s: Readable): Promise<Buffer> {
  return readAhead(s, (held) => held.length > 0);
}

/**
 * Reads `s` until `enough(held)` (or its end), then puts back what it read: the consumer sees
 * every byte. Returns what was read. At the end of the stream nothing can be put back (and
 * nothing is left for a consumer).
 */
export function readAhead(s: Readable, enough: (held: Buffer[]) => boolean): Promise<Buffer> {
  // A stream that already failed, ended or closed emits nothing more: waiting for an event
  // would leave the run with nothing to wait for (it failed while the caller was busy elsewhere).
  if (s.errored) return Promise.reject(s.errored);
  if (s.readableEnded) return Promise.resolve(Buffer.alloc(0));
  if (s.destroyed) return Promise.reject(new Error('the archive stream was closed before it was read'));
  const held: Buffer[] = [];
  return readHead(s, {
    event: 'readable',
    step: () => {
      let c: Buffer | null;
      while (!enough(held) && (c = s.read() as Buffer | null) !== null) held.push(c);
      return enough(held) ? Buffer.concat(held) : undefined;
    },
    done: (all) => {
      try {
        if (all.length > 0) s.unshift(all);
      } catch {
        // The stream failed meanwhile: its error is what the run reports.
      }
    },
    atEnd: () => Buffer.concat(held),
    // Destroyed without an error (by a teardown): nothing more will come.
    closed: 'the archive stream was closed before it was read',
  });
}
