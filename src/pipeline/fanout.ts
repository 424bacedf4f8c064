import { Writable } from 'node:stream';
import { CHECKED_AHEAD } from './archive.js';

export interface FanOutTarget {
  name: string;
  stream: Writable;
  /**
   * `child`: a process's stdin. It may close early (pg_restore --list stops after the table of
   * contents; a failing pg_restore exits): the fan-out then stops writing to it and goes on, and
   * the child's exit status tells whether that was fine. `file`: a write error fails the fan-out.
   */
  kind: 'child' | 'file';
}

/**
 * Writes every chunk to several destinations with back-pressure from each live one, so the
 * source is always read to its very end (the end is what authenticates an age stream).
 */
export class FanOut extends Writable {
  private readonly live: Set<FanOutTarget>;
  constructor(targets: FanOutTarget[]) {
    super({ highWaterMark: CHECKED_AHEAD });
    this.live = new Set(targets);
    for (const t of targets) {
      t.stream.on('error', (err) => {
        if (!this.live.has(t)) return;
        this.live.delete(t);
        if (t.kind === 'file') this.destroy(err);
      });
      if (t.kind === 'child') t.stream.on('close', () => this.live.delete(t));
    }
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const waits: Promise<void>[] = [];
    for (const t of this.live) {
      if (t.stream.destroyed || t.stream.writableEnded) {
        this.live.delete(t);
        continue;
      }
      if (!t.stream.write(chunk)) waits.push(waitDrain(t.stream, () => !this.live.has(t)));
    }
    if (waits.length === 0) cb();
    else Promise.all(waits).then(() => cb(), cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    const waits: Promise<void>[] = [];
    for (const t of this.live) {
      waits.push(
        new Promise<void>((resolve) => {
          const done = (): void => resolve();
          t.stream.once('finish', done);
          t.stream.once('close', done);
          t.stream.once('error', done);
          t.stream.end();
        }),
      );
    }
    Promise.all(waits).then(() => {
      // A file destination that failed while finishing has already destroyed us.
      cb();
    }, cb);
  }
}

function waitDrain(s: Writable, gone: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      s.off('drain', done);
      s.off('close', done);
      s.off('error', done);
      resolve();
    };
    if (gone()) return resolve();
    s.once('drain', done);
    s.once('close', done);
    s.once('error', done);
  });
}
