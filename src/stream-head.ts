/** Reading the first bytes of a stream before handing it on (the age header, the archive's start). */
import type { Readable } from 'node:stream';

export interface HeadReader<T> {
  /** Listens to `'data'` (`step` gets each chunk; the stream is paused once done) or to `'readable'` (`step` reads). */
  event: 'data' | 'readable';
  /** Called for every event: the result once enough was read, else `undefined`. May throw (the promise rejects). */
  step: (chunk?: Buffer | string) => T | undefined;
  /** The stream ended first: the result from what was read, or throw. */
  atEnd: () => T;
  /** The message when the stream is closed (destroyed) without an error before it was read. */
  closed: string;
  /** Called with `step`'s result once the listeners are gone, before the promise resolves (e.g. to put back what was read); not at the end of the stream. */
  done?: (result: T) => void;
}

/**
 * Reads the head of `s` until `reader.step` has a result, settling once whichever comes first:
 * that result, the end of the stream, its error, or its close. Every listener is removed before
 * the promise settles (and, with `'data'`, the stream paused, so that no chunk is lost).
 */
export function readHead<T>(s: Readable, reader: HeadReader<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const cleanup = (): void => {
      s.off(reader.event, onEvent);
      s.off('end', onEnd);
      s.off('error', onError);
      s.off('close', onClose);
      if (reader.event === 'data') s.pause();
    };
    const settle = (get: () => T | undefined, done?: (result: T) => void): void => {
      let r: T | undefined;
      try {
        r = get();
      } catch (err) {
        cleanup();
        reject(err);
        return;
      }
      if (r === undefined) return;
      cleanup();
      done?.(r);
      resolve(r);
    };
    const onEvent = (chunk?: Buffer | string): void => settle(() => reader.step(chunk), reader.done);
    const onEnd = (): void => settle(reader.atEnd);
    const onError = (err: Error): void => {
      cleanup();
      reject(err);
    };
    const onClose = (): void => {
      cleanup();
      reject(s.errored ?? new Error(reader.closed));
    };
    s.on(reader.event, onEvent);
    s.on('end', onEnd);
    s.on('error', onError);
    s.on('close', onClose);
  });
}
