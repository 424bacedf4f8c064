import { Writable } from 'node:stream';
import { CHECKED_AHEAD } from './archive.js';

/** How far the whole-archive check has read a custom archive's table of contents. */
export interface TocProgress {
  /** Offset of the table of contents' end (where the first data block starts); undefined until read. */
  end: number | undefined;
  /** The check could not follow the archive (bad input): where the table of contents ends is unknown. */
  failed: boolean;
}

/**
 * pg_restore's stdin, held back at the last byte of the archive's table of contents until
 * `open` settles: pg_restore reads the whole table of contents before it connects to the
 * database (OpenArchive reads it; RestoreArchive connects), so it can be started, and read a
 * long table of contents, while the database it restores into is still being created.
 *
 * `progress` is asked on every write: the check has read every byte written here (it reads the
 * stream before the fan-out does), so while it has not found the table of contents' end, the
 * bytes written precede it and go through. From the byte before the end on, bytes wait (the
 * write's callback too: back-pressure) until `open` resolves; if it rejects, they never go
 * through and the caller tears pg_restore down. Nothing passes once the check has failed.
 */
export class TocGate extends Writable {
  private pos = 0;
  private opened = false;
  private held: { chunk: Buffer; cb: (err?: Error | null) => void } | undefined;

  constructor(
    private readonly out: Writable,
    private readonly progress: () => TocProgress,
    open: Promise<unknown>,
  ) {
    super({ highWaterMark: CHECKED_AHEAD });
    open.then(
      () => {
        this.opened = true;
        const h = this.held;
        this.held = undefined;
        if (h) this.forward(h.chunk, h.cb);
      },
      () => undefined,
    );
    out.on('error', (err) => this.destroy(err));
    out.on('close', () => {
      if (!this.destroyed && !this.writableFinished) this.destroy();
    });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.opened) return this.forward(chunk, cb);
    const p = this.progress();
    // Bytes before the table of contents' last byte go through now; the rest waits for `open`.
    const free = p.failed ? 0 : p.end === undefined ? chunk.length : Math.max(0, Math.min(chunk.length, p.end - 1 - this.pos));
    if (free === chunk.length) return this.forward(chunk, cb);
    if (free > 0) this.send(chunk.subarray(0, free));
    this.held = { chunk: chunk.subarray(free), cb };
  }

  override _final(cb: (err?: Error | null) => void): void {
    // The fan-out ends its targets only after the whole stream went through, so `open` resolved.
    this.out.end(() => cb());
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const h = this.held;
    this.held = undefined;
    h?.cb(err ?? new Error('pg_restore input closed'));
    cb(err);
  }

  private send(chunk: Buffer): boolean {
    this.pos += chunk.length;
    return this.out.write(chunk);
  }

  private forward(chunk: Buffer, cb: (err?: Error | null) => void): void {
    // pg_restore gone: its exit status tells the run why (this gate is destroyed by its close).
    if (this.out.destroyed || this.out.writableEnded) return cb();
    if (this.send(chunk)) return cb();
    const done = (): void => {
      this.out.off('drain', done);
      this.out.off('close', done);
      cb();
    };
    this.out.once('drain', done);
    this.out.once('close', done);
  }
}
