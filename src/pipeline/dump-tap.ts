/**
 * What node learns from pg_dump's output on its way to pzstd (the indexed pipeline of
 * ./backup.ts): the byte count, the first bytes, the table of contents and where each data
 * block begins ({@link DataBlockFinder}), and, when pg_dump runs through a wrapper, whether the
 * archive is whole ({@link ArchiveCheck}). The same code runs on node's main thread (a small
 * dump) or in a worker thread that reads and writes real pipes ({@link ./dump-tap-thread.ts}).
 */
import { DataBlockFinder } from '../catalog/archive-index.js';
import { ArchiveOffsetScanner, hasDataBlock } from '../pg/archive-offsets.js';
import { ArchiveCheck } from './archive.js';

/** What a {@link DumpTap} saw, in a form a worker thread can post. */
export interface DumpTapSummary {
  dumpBytes: number;
  /** The first 16 bytes (fewer if the dump was shorter). */
  head: Uint8Array;
  /** Why the archive is not whole (a wrapped pg_dump only); undefined when it is, or was not walked. */
  wholeProblem?: string;
  /** Where the data begins and each data block starts, or why that is not known. */
  index: { dataStart: number; blocks: Array<[number, number]> } | { problem: string };
}

export class DumpTap {
  private dumpBytes = 0;
  private head = Buffer.alloc(0);
  private readonly toc = new ArchiveOffsetScanner();
  private readonly whole: ArchiveCheck | undefined;
  private finder: DataBlockFinder | undefined;
  private dataStart = -1;

  /** @param wrapped - pg_dump runs through a wrapper: the whole archive is walked as well. */
  constructor(wrapped: boolean) {
    this.whole = wrapped ? new ArchiveCheck({ format: 'custom' }) : undefined;
  }

  /** The bytes seen so far. */
  get bytes(): number {
    return this.dumpBytes;
  }

  /** The next bytes of the dump (kept only by copy: the caller may reuse the buffer). */
  push(chunk: Buffer): void {
    const at = this.dumpBytes;
    this.dumpBytes += chunk.length;
    if (this.head.length < 16) this.head = Buffer.concat([this.head, chunk.subarray(0, 16 - this.head.length)]);
    this.whole?.push(chunk);
    if (this.finder) this.finder.push(chunk);
    else if (!this.toc.failed) {
      this.toc.push(chunk);
      if (this.toc.tocComplete) {
        const entries = this.toc.entries();
        this.dataStart = this.toc.tocEndOffset;
        this.finder = new DataBlockFinder(entries.filter(hasDataBlock).map((e) => ({ dumpId: e.dumpId, blobs: e.desc === 'BLOBS' })), this.dataStart);
        if (this.dataStart < this.dumpBytes) this.finder.push(chunk.subarray(this.dataStart - at));
      }
    }
  }

  /** After the last push. */
  summary(): DumpTapSummary {
    let wholeProblem: string | undefined;
    if (this.whole) {
      const err = this.whole.end(this.dumpBytes);
      if (err) wholeProblem = err.message.replace(/^the backup is truncated or damaged: /, '');
    }
    let index: DumpTapSummary['index'];
    if (!this.finder) index = { problem: `the table of contents could not be read${this.toc.failed ? ` (${(this.toc.end() as { reason?: string }).reason})` : ''}` };
    else {
      const blocks = this.finder.blocks();
      index = Array.isArray(blocks) ? { dataStart: this.dataStart, blocks } : blocks;
    }
    return { dumpBytes: this.dumpBytes, head: Uint8Array.from(this.head), ...(wholeProblem !== undefined ? { wholeProblem } : {}), index };
  }
}
