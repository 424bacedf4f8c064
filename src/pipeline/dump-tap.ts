/**
 * What node learns from pg_dump's output on its way to pzstd (the indexed pipeline of
 * ./backup.ts): the byte count, the first bytes, the table of contents and where each data
 * block begins ({@link DataBlockFinder}), and whether the archive is whole: the table of
 * contents' reader goes on through every data block (payloads skipped by arithmetic: ~0.2 ms of
 * CPU per MB), so a dump cut short (by a `docker compose exec` wrapper in `--pg-bin` that lost
 * the end of pg_dump's output and still exited 0) is never stored as a backup. The same code
 * runs on node's main thread (a small dump) or in a worker thread that reads and writes real
 * pipes ({@link ./dump-tap-thread.ts}).
 */
import { DataBlockFinder } from '../catalog/archive-index.js';
import { ArchiveOffsetScanner, hasDataBlock, missingDataBlocks, type ArchiveHeaderStrings } from '../pg/archive-offsets.js';

/** What a {@link DumpTap} saw, in a form a worker thread can post. */
export interface DumpTapSummary {
  dumpBytes: number;
  /** The first 16 bytes (fewer if the dump was shorter). */
  head: Uint8Array;
  /** Why the archive is not whole; undefined when it is, or could not be walked (a format the reader does not know, unless strict). */
  wholeProblem?: string;
  /** The database name, server and pg_dump versions in the archive's header (once it was read). */
  header?: ArchiveHeaderStrings;
  /** Where the data begins and each data block starts, or why that is not known. */
  index: { dataStart: number; blocks: Array<[number, number]> } | { problem: string };
}

export class DumpTap {
  private dumpBytes = 0;
  private head = Buffer.alloc(0);
  private readonly toc = new ArchiveOffsetScanner();
  private finder: DataBlockFinder | undefined;
  private dataStart = -1;

  /**
   * @param strict - pg_dump runs through a command wrapper (`--pg-dump-command`): an archive whose
   * header or table of contents cannot be read is not whole either (otherwise it is stored with
   * no index, and a warning).
   */
  constructor(private readonly strict: boolean) {}

  /** The bytes seen so far. */
  get bytes(): number {
    return this.dumpBytes;
  }

  /** The next bytes of the dump (kept only by copy: the caller may reuse the buffer). */
  push(chunk: Buffer): void {
    const at = this.dumpBytes;
    this.dumpBytes += chunk.length;
    if (this.head.length < 16) this.head = Buffer.concat([this.head, chunk.subarray(0, 16 - this.head.length)]);
    this.toc.push(chunk);
    if (this.finder) this.finder.push(chunk);
    else if (this.toc.tocComplete) {
      const entries = this.toc.entries();
      this.dataStart = this.toc.tocEndOffset;
      this.finder = new DataBlockFinder(entries.filter(hasDataBlock).map((e) => ({ dumpId: e.dumpId, blobs: e.desc === 'BLOBS' })), this.dataStart);
      if (this.dataStart < this.dumpBytes) this.finder.push(chunk.subarray(this.dataStart - at));
    }
  }

  /** After the last push. */
  summary(): DumpTapSummary {
    const scan = this.toc.end();
    let wholeProblem: string | undefined;
    if (scan.ok) {
      const missing = missingDataBlocks(scan.layout);
      if (missing.length > 0) wholeProblem = `the archive ends without the data of ${missing.length} of its table-of-contents entries (first: entry ${missing[0]})`;
    } else if (this.strict || this.toc.tocComplete || scan.reason.startsWith('ends inside')) {
      // Cut short, or damaged after a table of contents that was read: not what pg_dump writes.
      wholeProblem = scan.reason.startsWith('ends inside') ? `the archive ${scan.reason}` : scan.reason;
    }
    let index: DumpTapSummary['index'];
    if (!this.finder) index = { problem: `the table of contents could not be read${scan.ok ? '' : ` (${scan.reason})`}` };
    else {
      const blocks = this.finder.blocks();
      index = Array.isArray(blocks) ? { dataStart: this.dataStart, blocks } : blocks;
    }
    const header = this.toc.headerStrings();
    return { dumpBytes: this.dumpBytes, head: Uint8Array.from(this.head), ...(wholeProblem !== undefined ? { wholeProblem } : {}), ...(header ? { header } : {}), index };
  }
}
