/**
 * `--max-rate`: a cap on the bytes a run moves to and from its repository, shared by every
 * transfer of the process (a backup's objects, several databases at once with --parallel, a
 * restore's download, a selective restore's ranged reads).
 *
 * A token bucket: `rate` bytes per second, at most `burst` saved up while idle. Each chunk takes
 * its bytes from the bucket and waits until the debt is paid before it moves on, so the average
 * rate over any stretch longer than a burst is at most `rate`. Downloads are paced at the socket
 * (a body not read fills TCP's window), uploads as the stored object is produced: a multipart
 * part is sent when it is full, at the link's speed, and the parts follow at the capped rate.
 */
import { pipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import { UsageError } from '../errors.js';
import type { GetOptions, ObjectInfo, ObjectStore, PutBytesOptions, PutStreamOptions } from './object-store.js';

export class TokenBucket {
  private tokens: number;
  private last: number;

  /**
   * @param rate - bytes per second (> 0).
   * @param burst - the most that passes at once after an idle spell (default: a tenth of a second's worth, at least 64 KiB).
   */
  constructor(
    readonly rate: number,
    readonly burst = Math.max(64 * 1024, Math.floor(rate / 10)),
  ) {
    this.tokens = burst;
    this.last = performance.now();
  }

  /** Takes `n` bytes; the milliseconds to wait before they may pass (0: at once). */
  take(n: number): number {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.rate) / 1000);
    this.last = now;
    this.tokens -= n;
    return this.tokens >= 0 ? 0 : (-this.tokens / this.rate) * 1000;
  }
}

/** A pass-through stream that lets its bytes through at the bucket's pace. */
export class Throttle extends Transform {
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly bucket: TokenBucket) {
    super({ highWaterMark: 64 * 1024 });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    // Pieces no larger than a burst, so one large chunk does not pass whole and then stall.
    let at = 0;
    const next = (): void => {
      this.timer = undefined;
      if (at >= chunk.length) return cb();
      const piece = chunk.subarray(at, at + this.bucket.burst);
      at += piece.length;
      const wait = this.bucket.take(piece.length);
      const go = (): void => {
        this.push(piece);
        next();
      };
      if (wait <= 0) go();
      else this.timer = setTimeout(() => ((this.timer = undefined), go()), wait);
    };
    next();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    cb(err);
  }
}

const waitFor = (ms: number, signal?: AbortSignal): Promise<void> =>
  ms <= 0
    ? Promise.resolve()
    : new Promise((resolve, reject) => {
        const t = setTimeout(() => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        }, ms);
        const onAbort = (): void => {
          clearTimeout(t);
          reject(signal!.reason);
        };
        signal?.addEventListener('abort', onAbort, { once: true });
      });

/** A store whose every transfer (objects, small ones too) shares one {@link TokenBucket}. */
export class RateLimitedStore implements ObjectStore {
  readonly location: string;

  readonly putComposed?: ObjectStore['putComposed'];
  readonly minComposeHead?: number;

  constructor(
    private readonly inner: ObjectStore,
    readonly bucket: TokenBucket,
  ) {
    this.location = inner.location;
    // A server-side copy moves only the head through this process: that is what is throttled.
    const compose = inner.putComposed?.bind(inner);
    if (compose) {
      this.minComposeHead = inner.minComposeHead;
      this.putComposed = async (key, head, options) => {
        await waitFor(this.bucket.take(head.length), options.signal);
        return compose(key, head, options);
      };
    }
  }

  putStream(key: string, body: Readable, options: PutStreamOptions): Promise<{ size: number }> {
    // pipeline(): an error on either side destroys the other (the caller's stream, the store's reader).
    return this.inner.putStream(key, pipeline(body, new Throttle(this.bucket), () => undefined), options);
  }

  async putBytes(key: string, data: Uint8Array, options?: PutBytesOptions): Promise<void> {
    await waitFor(this.bucket.take(data.length), options?.signal);
    return this.inner.putBytes(key, data, options);
  }

  async get(key: string, options?: GetOptions): Promise<{ body: Readable; size: number }> {
    const got = await this.inner.get(key, options);
    return { body: pipeline(got.body, new Throttle(this.bucket), () => undefined), size: got.size };
  }

  async getBytes(key: string, options?: { signal?: AbortSignal }): Promise<Buffer> {
    const bytes = await this.inner.getBytes(key, options);
    await waitFor(this.bucket.take(bytes.length), options?.signal);
    return bytes;
  }

  async assertPresent(options?: { signal?: AbortSignal }): Promise<void> {
    await this.inner.assertPresent?.(options);
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<{ size: number } | undefined> {
    return this.inner.head(key, options);
  }

  list(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix, options);
  }

  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }

  close(): void {
    this.inner.close();
  }
}

/**
 * Parses a rate: bytes per second with a unit, `/s` optional. `kB`, `MB`, `GB` are decimal
 * (5MB/s = 5,000,000 bytes a second, as links are sold); `KiB`, `MiB`, `GiB` binary; `kbit`,
 * `Mbit`, `Gbit` (or `Mbps`) bits. A bare number is bytes per second.
 */
export function parseRate(s: string, what = '--max-rate'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(?:([kKmMgG])(i)?(B|bit|bps)|(B|bit|bps))?\s*(?:\/\s*s(?:ec)?)?\s*$/.exec(s);
  const fail = (): never => {
    throw new UsageError(`${what}: invalid rate ${JSON.stringify(s)}`, { hint: 'use e.g. 5MB/s, 512KiB/s or 40Mbit/s (MB = 1,000,000 bytes, MiB = 1,048,576)' });
  };
  if (!m) return fail();
  const n = Number(m[1]);
  const prefix = m[2]?.toLowerCase();
  const binary = m[3] !== undefined;
  const unit = m[4] ?? m[5] ?? 'B';
  if (binary && unit !== 'B') return fail();
  const mult = prefix === undefined ? 1 : (binary ? 1024 : 1000) ** ({ k: 1, m: 2, g: 3 } as Record<string, number>)[prefix]!;
  const bytes = (n * mult) / (unit === 'B' ? 1 : 8);
  if (!(bytes >= 1024)) throw new UsageError(`${what} ${s}: the rate must be at least 1 KiB/s`, { hint: 'use e.g. 5MB/s' });
  return Math.floor(bytes);
}
