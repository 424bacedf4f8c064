/**
 * A selective restore that fetches only its bytes: with the backup's archive index
 * (../catalog/archive-index.ts) it reads the age header, the frames that hold the table of
 * contents, and, once the selection is known, only the frames that hold the selected tables'
 * data, each with a ranged GET:
 *
 *   ranged GET ─▶ chunks authenticated one by one ─▶ the frames' bytes ─▶ zstd -d ─▶ the wanted dump ranges
 *
 * and gives pg_restore an archive made of the header, the table of contents and the selected
 * data blocks, in file order (pg_restore reads a streamed archive in order and skips to each
 * block it needs by its id: the others need not be there). That archive is walked whole before
 * it ends (header, TOC, every block to its end), and it must hold exactly the blocks selected.
 *
 * What is not fetched is not checked: damage outside the selected ranges does not matter to this
 * restore (coffer verify reads every byte). Damage inside them fails it (IntegrityError, exit 5).
 */
import { createHash } from 'node:crypto';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream';
import { blockRange, decodeIndex, planRanges, type ArchiveIndex, type FrameGroup } from '../catalog/archive-index.js';
import { missingDump, type BackupEntry } from '../catalog/catalog.js';
import type { BackupManifest, StoredObject } from '../catalog/manifest.js';
import { ChunkRangeDecrypter, CHUNK_SIZE, MAX_HEADER_SIZE, explainNoMatch, openDecryptStream, openPayloadKey } from '../crypto/age.js';
import { IntegrityError, StorageError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { ArchiveOffsetScanner, scanProblem } from '../pg/archive-offsets.js';
import { parseArchiveHeader } from '../pg/archive-toc.js';
import { missingTool } from '../pg/tools.js';
import { isAbortEcho } from '../run/abort.js';
import { toolEnv, type Supervisor } from '../run/supervisor.js';
import { resumableGet } from '../store/resumable.js';
import type { ObjectStore } from '../store/object-store.js';
import type { OpenedArchive } from './archive.js';

/** An opened archive whose data blocks are fetched once the selection is known. */
export interface RangedArchive extends OpenedArchive {
  format: 'custom';
  /** The dump ids pg_restore will be given (its -L list): their data blocks follow the table of contents. Call once, before reading `archive`. */
  select(ids: number[]): void;
  /** What was fetched: see {@link RangedDownload}. */
  fetched(): RangedDownload;
  /** Each data block's size in the dump, by dump id, from the index. */
  blockSizes(): Map<number, number>;
}

export interface RangedRequest {
  store: ObjectStore;
  entry: BackupEntry;
  identities: string[];
  zstdCommand?: string[];
  log: Logger;
  onProgress?: (storedBytes: number) => void;
}

/** The first read of the age header; a longer one follows only for a header this long (many recipients). */
const HEAD_READ = 16 * 1024;
const MAX_HEAD_READ = MAX_HEADER_SIZE + 16;

/** What a selective restore fetched. */
export interface RangedDownload {
  /** Distinct bytes of the dump object fetched (a byte read twice counts once): at most `of`. */
  bytes: number;
  /** The dump object's size. */
  of: number;
  /** GET requests: the ranged reads of the dump object and the read of the index. */
  requests: number;
  /** The index object's bytes (a separate object, not part of `of`). */
  indexBytes: number;
  /** Every byte received, the index's and the bytes of overlapping reads (the header's read, frames shared by two reads) included. */
  transferred: number;
}

/** Total length of the union of `spans` ([start, end) pairs, sorted by start: no copy, no sort, as it runs on every chunk). */
function unionLength(spans: ReadonlyArray<readonly [number, number]>): number {
  let total = 0;
  let end = -1;
  for (const [a, b] of spans) {
    if (b <= end) continue;
    total += b - Math.max(a, end);
    end = b;
  }
  return total;
}

/** Inserts `span` into `spans`, which stay sorted by start. */
function insertSorted(spans: Array<[number, number]>, span: [number, number]): void {
  let i = spans.length;
  while (i > 0 && spans[i - 1]![0] > span[0]) i--;
  spans.splice(i, 0, span);
}

/** Whether this backup can be restored selectively with ranged reads. */
export function hasIndex(m: BackupManifest): m is BackupManifest & { index: StoredObject } {
  return m.index !== undefined && m.kind === 'custom' && m.compression.kind === 'zstd';
}

/**
 * Opens a backup with an archive index for a ranged selective restore. Resolves once the table
 * of contents is in hand (before any database exists); `undefined` when the index itself cannot
 * be used (damaged, or not this backup's): the caller then streams the whole backup, after a warning.
 */
export async function openRangedSource(req: RangedRequest, sup: Supervisor, env: NodeJS.ProcessEnv): Promise<RangedArchive | undefined> {
  const m = req.entry.manifest;
  if (!hasIndex(m)) return undefined;
  // The dump object's spans fetched (reads overlap: the header's read and the first frames', two
  // groups sharing a chunk): the download is their union; what crossed the network is counted apart.
  // Kept sorted by start, so that the union is one pass on each progress callback.
  const spans: Array<[number, number]> = [];
  let indexBytes = 0;
  let transferred = 0;
  let requests = 0;
  const fetchedBytes = (): number => unionLength(spans);
  /** A progress callback for one GET: of the dump object from `start`, or of the index (`undefined`). */
  const counted = (start?: number): ((n: number) => void) => {
    requests++;
    const span: [number, number] = [start ?? 0, start ?? 0];
    if (start !== undefined) insertSorted(spans, span);
    let seen = 0;
    return (n) => {
      transferred += n - seen;
      seen = n;
      if (start !== undefined) span[1] = start + n;
      else indexBytes = n;
      req.onProgress?.(fetchedBytes() + indexBytes);
    };
  };
  const get = (start: number, end: number): Readable =>
    resumableGet(req.store, m.dump.key, m.dump.size, { signal: sup.signal, log: req.log, start, end, onProgress: counted(start), whenMissing: missingDump(req.store, m, sup.signal) });

  // 1. The index: its object checked against the manifest, then decrypted and checked against the dump it describes.
  // The head of the dump (its age header) is fetched meanwhile.
  // A rekeyed object's manifest names its header's length (with the nonce) and pins its sha256: read exactly that.
  const firstHead = Math.min(m.dump.sha256Bytes ?? HEAD_READ, m.dump.size);
  const headRead = collect(get(0, firstHead));
  headRead.catch(() => undefined);
  let index: ArchiveIndex;
  try {
    index = await readIndex(req, m.index, m, sup.signal, counted());
  } catch (err) {
    if (!(err instanceof IndexProblem)) throw err;
    req.log.warn(`${err.message}: the selective restore reads the whole backup instead`, { backup: m.id });
    return undefined;
  }

  // 2. The age header (the identity is checked here, before anything else is read).
  const headBytes = await headRead;
  if (m.dump.sha256Bytes !== undefined && createHash('sha256').update(headBytes).digest('hex') !== m.dump.sha256) {
    throw new IntegrityError("sha256 of the backup object's header does not match its manifest: it was modified or corrupted", { hint: 'the object was modified or swapped; do not trust this backup' });
  }
  const damaged = async (err: unknown): Promise<never> => {
    throw await explainNoMatch(err, req.identities, m.encryption.recipients);
  };
  let access = await openPayloadKey(headBytes, req.identities, firstHead === m.dump.size).catch(damaged);
  // A header longer than the first read (many recipients): once more, up to the longest header there can be.
  if (access === 'more') access = await openPayloadKey(await collect(get(0, Math.min(MAX_HEAD_READ, m.dump.size))), req.identities, true).catch(damaged);
  if (access === 'more') throw new IntegrityError('not an age file, or its header was modified or corrupted (the header is incomplete)');
  if (access.headerLength !== index.age.headerLength) {
    throw new IntegrityError(`the archive index does not match backup ${m.id} (its age header is ${access.headerLength} bytes, the index says ${index.age.headerLength})`, { hint: 'restore it whole, or run coffer verify on this backup' });
  }
  const payload = access;
  const zstdArgv = req.zstdCommand ?? ['zstd'];

  /** The dump bytes of a group's frames, in order, cut to its wanted ranges. */
  async function* groupBytes(g: FrameGroup, finalChunk: number): AsyncGenerator<Buffer> {
    const zstd = sup.spawn({
      argv: [...zstdArgv, '-d', '-q', '-c'],
      env: toolEnv(env),
      stdin: 'pipe',
      what: 'zstd -d',
      missing: missingTool('zstd -d', 'this backup is zstd-compressed: install zstd (apt-get install zstd)'),
      explain: (f) => new IntegrityError(`the compressed archive is damaged (zstd: ${f.stderr.lastLines(1, 200) || `exit ${f.code ?? f.signal}`})`, { hint: 'use another backup' }),
    });
    const chunks = new ChunkRangeDecrypter(payload.key, g.firstChunk, finalChunk, payload.payloadOffset);
    const trim = new Trim(g.compressedStart - g.firstChunk * CHUNK_SIZE, g.compressedEnd - g.compressedStart);
    pipeline(get(g.start, g.end), chunks, trim, zstd.stdin!, (err) => {
      if (err && !isAbortEcho(err)) sup.fail(err);
    });
    let pos = g.spanStart;
    let w = 0;
    for await (const b of zstd.stdout! as AsyncIterable<Buffer>) {
      const from = pos;
      const to = pos + b.length;
      pos = to;
      while (w < g.wanted.length) {
        const [ws, we] = g.wanted[w]!;
        if (we <= from) {
          w++;
          continue;
        }
        if (ws >= to) break;
        yield b.subarray(Math.max(ws, from) - from, Math.min(we, to) - from);
        if (we <= to) w++;
        else break;
      }
    }
    await zstd.done;
    if (sup.failed) throw sup.cause();
    if (pos !== g.spanEnd) {
      throw new IntegrityError(`the archive index does not match backup ${m.id}: frames ${g.firstFrame}-${g.lastFrame} decompress to ${pos - g.spanStart} bytes, the index says ${g.spanEnd - g.spanStart}`, { hint: 'restore it whole, or run coffer verify on this backup' });
    }
  }

  // 3. The table of contents: the frames up to where the data begins, kept whole in memory
  //    (the data blocks they also hold are served from there).
  const dataStart = index.archive.dataStart;
  const tocPlan = planRanges(index, [[0, Math.max(1, dataStart)]], 0);
  const tocGroup = { ...tocPlan.groups[0]!, wanted: [[0, tocPlan.groups[0]!.spanEnd]] as Array<[number, number]> };
  const headParts: Buffer[] = [];
  for await (const b of groupBytes(tocGroup, tocPlan.finalChunk)) headParts.push(Buffer.from(b));
  const head = Buffer.concat(headParts);
  const tocScan = new ArchiveOffsetScanner();
  tocScan.push(head.subarray(0, dataStart));
  if (!tocScan.tocComplete || tocScan.failed) {
    throw new IntegrityError(`the archive's table of contents cannot be read from the frames the index names (${tocScan.failed ? (tocScan.end() as { reason?: string }).reason : 'it ends early'})`, { hint: 'restore it whole, or run coffer verify on this backup' });
  }
  const header = parseArchiveHeader(head);

  // 4. The archive pg_restore reads: the head, then the selected blocks.
  let choose: (ids: number[]) => void = () => undefined;
  const chosen = new Promise<number[]>((resolve) => (choose = resolve));
  let archiveBytes = 0;
  const out = new ArchiveOffsetScanner({ countRows: true });
  let layout: ReturnType<ArchiveOffsetScanner['end']> | undefined;
  async function* reduced(): AsyncGenerator<Buffer> {
    const emit = (b: Buffer): Buffer => {
      out.push(b);
      archiveBytes += b.length;
      return b;
    };
    yield emit(head.subarray(0, dataStart));
    const ids = await chosen;
    const ranges = ids.map((id) => blockRange(index, id)).filter((r): r is [number, number] => r !== undefined).sort((a, b) => a[0] - b[0]);
    const wantBlocks = new Set(ids.filter((id) => blockRange(index, id) !== undefined));
    // Blocks in the frames already fetched come from memory; the rest from ranged reads.
    const inHead = ranges.filter(([, e]) => e <= head.length);
    const rest = ranges.filter(([, e]) => e > head.length);
    for (const [s, e] of inHead) yield emit(head.subarray(s, e));
    const plan = planRanges(index, rest);
    if (plan.groups.length === 0) req.log.info('selective restore: the selected data came with the table of contents (no further reads)', { blocks: wantBlocks.size });
    else req.log.info('selective restore: fetching the selected data', { blocks: wantBlocks.size, ...(inHead.length > 0 ? { withTableOfContents: inHead.length } : {}), requests: plan.groups.length, bytes: plan.bytes, of: m.dump.size });
    for (const g of plan.groups) for await (const b of groupBytes(g, plan.finalChunk)) yield emit(b);
    layout = out.end();
    if (!layout.ok) throw new IntegrityError(`the selected data does not form a whole archive: ${scanProblem('the archive', layout.reason)}`, { hint: 'restore it whole, or run coffer verify on this backup' });
    const got = [...layout.layout.blocks.keys()];
    if (got.length !== wantBlocks.size || got.some((id) => !wantBlocks.has(id))) {
      throw new IntegrityError(`the selected data holds the blocks of entries ${got.join(',') || 'none'}, not those selected (${[...wantBlocks].join(',') || 'none'})`, { hint: 'restore it whole, or run coffer verify on this backup' });
    }
  }
  const archive = Readable.from(reduced(), { objectMode: false, highWaterMark: 1024 * 1024 });
  archive.on('error', (err) => {
    if (!isAbortEcho(err)) sup.fail(err);
  });
  const entries = tocScan.entries();
  return {
    archive,
    format: 'custom',
    compressed: true,
    children: [],
    header,
    // The backup's size, as for a whole restore: the bytes fetched are in fetched().
    stats: () => ({ storedBytes: m.dump.size, archiveBytes }),
    databaseEntries: () => Promise.resolve(tocScan.databaseEntries()),
    tocEntries: () => Promise.resolve(entries),
    layout: () => (layout?.ok ? layout.layout : undefined),
    select: (ids) => choose(ids),
    fetched: () => ({ bytes: fetchedBytes(), of: m.dump.size, requests, indexBytes, transferred }),
    blockSizes: () => new Map(index.archive.blocks.map(([id]) => [id, blockRange(index, id)![1] - blockRange(index, id)![0]])),
  };
}

/** The index is not usable (the backup itself may be fine). */
export class IndexProblem extends IntegrityError {}

/**
 * Reads and checks a backup's index object (size and sha256 from the manifest), decrypts and
 * decodes it. IndexProblem when it is missing, damaged (truncated, resized, a flipped byte) or
 * not this backup's; a StorageError when the store cannot be read (access denied, unreachable).
 */
export async function readIndex(req: Pick<RangedRequest, 'store' | 'identities' | 'log'>, o: StoredObject, m: BackupManifest, signal: AbortSignal, progress?: (n: number) => void): Promise<ArchiveIndex> {
  let bytes: Buffer;
  try {
    bytes = await collect(resumableGet(req.store, o.key, o.size, { signal, log: req.log, onProgress: progress }));
  } catch (err) {
    if (signal.aborted) throw err;
    // The object is not the size its manifest says (resumableGet's check): the same damage as a wrong sha256.
    if (err instanceof IntegrityError) throw new IndexProblem(`the archive index of backup ${m.id} does not match its manifest (${err.message})`, { hint: 'run coffer verify on this backup', cause: err });
    if (err instanceof StorageError && err.code === 'NotFound') throw new IndexProblem(`the archive index of backup ${m.id} is missing (${o.key}: deleted or expired?)`, { hint: 'run coffer verify on this backup', cause: err });
    throw err;
  }
  if (bytes.length !== o.size || createHash('sha256').update(bytes).digest('hex') !== o.sha256) {
    throw new IndexProblem(`the archive index of backup ${m.id} does not match its manifest (size or sha256)`, { hint: 'run coffer verify on this backup' });
  }
  const { plaintext } = await openDecryptStream(Readable.from([bytes]), req.identities);
  let json: Buffer;
  try {
    json = await collect(plaintext);
  } catch (err) {
    throw new IndexProblem(`the archive index of backup ${m.id} does not decrypt (${(err as Error).message})`, { hint: 'run coffer verify on this backup' });
  }
  try {
    return decodeIndex(json, m.id, m.dump);
  } catch (err) {
    throw new IndexProblem((err as Error).message, { hint: 'run coffer verify on this backup' });
  }
}

/** Everything a readable yields. */
async function collect(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of s as AsyncIterable<Buffer>) parts.push(b);
  return Buffer.concat(parts);
}

/** Passes `take` bytes after skipping `skip`, and drops the rest. */
class Trim extends Transform {
  #skip: number;
  #take: number;
  constructor(skip: number, take: number) {
    super();
    this.#skip = skip;
    this.#take = take;
  }
  override _transform(b: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    let part = b;
    if (this.#skip > 0) {
      const n = Math.min(this.#skip, part.length);
      this.#skip -= n;
      part = part.subarray(n);
    }
    if (this.#take > 0 && part.length > 0) {
      const keep = part.subarray(0, this.#take);
      this.#take -= keep.length;
      cb(null, keep);
      return;
    }
    cb();
  }
  override _flush(cb: TransformCallback): void {
    cb(this.#take > 0 || this.#skip > 0 ? new IntegrityError('the ranged read ended before the frames it should hold') : null);
  }
}
