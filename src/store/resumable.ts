import { Readable } from 'node:stream';
import { CofferError, IntegrityError, StorageError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import type { ObjectStore } from './object-store.js';

function shorter(key: string, actual: number, expected: number): IntegrityError {
  return new IntegrityError(`the backup object ${key} has ${actual} bytes but its manifest says ${expected}`, {
    hint: 'the object was truncated or replaced; do not trust this backup',
  });
}

/** Errors after which a ranged GET from the current offset is worth trying. */
function isResumable(err: unknown): boolean {
  if (err instanceof StorageError) return err.code === 'Unavailable' || err.code === 'Failed' || err.code === 'Truncated';
  const code = (err as { code?: string })?.code;
  const name = (err as { name?: string })?.name;
  return (
    code === 'ECONNRESET' ||
    code === 'EPIPE' ||
    code === 'ETIMEDOUT' ||
    code === 'ERR_STREAM_PREMATURE_CLOSE' ||
    name === 'TimeoutError' ||
    name === 'AbortError' ||
    (err instanceof Error && /aborted|socket hang up|premature/i.test(err.message))
  );
}

/**
 * Reads a whole object of known `size` (or its bytes `[start, end)`) as one stream. When the
 * connection drops part-way, the read resumes with a ranged GET from the first missing byte (up
 * to `maxResumes` times, with backoff); the caller's sha256 over the whole stream (or the
 * authentication of every chunk it reads) proves the pieces fit together.
 */
export function resumableGet(
  store: ObjectStore,
  key: string,
  size: number,
  opts: {
    signal: AbortSignal;
    log: Logger;
    maxResumes?: number;
    onProgress?: (bytes: number) => void;
    start?: number;
    end?: number;
    /**
     * When the first GET fails with NotFound or AccessDenied (S3 answers 403 for a missing key to
     * a reader without ListBucket on it): the error to report instead, e.g. after a listing shows
     * the object is gone; `undefined` keeps the GET's own error.
     */
    whenMissing?: (err: StorageError) => Promise<Error | undefined>;
  },
): Readable {
  const maxResumes = opts.maxResumes ?? 5;
  const first = opts.start ?? 0;
  const last = opts.end ?? size;
  if (first < 0 || last > size || first >= last) throw new RangeError(`internal: bad range [${first}, ${last}) of an object of ${size} bytes`);
  async function* read(): AsyncGenerator<Buffer> {
    let offset = first;
    let resumes = 0;
    for (;;) {
      try {
        let body: Readable;
        try {
          const got = await store.get(key, { signal: opts.signal, start: offset, ...(opts.end !== undefined ? { end: last } : {}) });
          body = got.body;
          if (got.size !== last - offset) {
            got.body.destroy();
            throw shorter(key, offset + got.size, size);
          }
        } catch (err) {
          // 416: the object ends before the offset we resume from.
          if ((err as { cause?: { $metadata?: { httpStatusCode?: number } } }).cause?.$metadata?.httpStatusCode === 416) throw shorter(key, offset, size);
          if (opts.whenMissing && resumes === 0 && offset === first && err instanceof StorageError && (err.code === 'NotFound' || err.code === 'AccessDenied') && !opts.signal.aborted) {
            throw (await opts.whenMissing(err)) ?? err;
          }
          throw err;
        }
        try {
          for await (const chunk of body as AsyncIterable<Buffer>) {
            if (offset + chunk.length > last) throw new IntegrityError(`download ${key}: the store returned more bytes than the range asked for (${first}-${last - 1})`, { hint: 'the object store does not honour ranged reads; report this' });
            offset += chunk.length;
            opts.onProgress?.(offset - first);
            yield chunk;
          }
        } finally {
          body.destroy();
        }
        if (offset < last) throw new StorageError('Truncated', `download ${key}: the connection closed after ${offset - first} of ${last - first} bytes`);
        return;
      } catch (err) {
        if (opts.signal.aborted) throw err;
        if (!isResumable(err) || resumes >= maxResumes || offset >= last) {
          if (err instanceof CofferError) throw err;
          throw new StorageError('Unavailable', `download ${key}: ${(err as Error).message ?? String(err)} (after ${resumes} resumes)`, { cause: err });
        }
        resumes++;
        opts.log.warn('download interrupted; resuming with a ranged GET', { key, offset, attempt: resumes, error: (err as Error).message });
        await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** (resumes - 1))));
      }
    }
  }
  return Readable.from(read(), { objectMode: false, highWaterMark: 1024 * 1024 });
}
