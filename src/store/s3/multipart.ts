import {
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  UploadPartCommand,
  type CompletedPart,
  type PutObjectCommandInput,
  type S3Client,
} from '@aws-sdk/client-s3';
import { Writable } from 'node:stream';
import { followAbort } from '../../run/abort.js';

export interface MultipartOptions {
  client: S3Client;
  Bucket: string;
  Key: string;
  /** Object-level parameters (content type, object lock, tagging), sent with PutObject or CreateMultipartUpload. */
  objectParams: Partial<PutObjectCommandInput>;
  partSize: number;
  /** Part buffers besides the one being filled: up to queueSize + 1 parts are in flight when the producer is faster than the upload. */
  queueSize: number;
  /** Cancels every request but CreateMultipartUpload (see `creating`). */
  signal: AbortSignal;
  /** Content-MD5 for each upload request (object lock needs it on AWS), when given. */
  contentMd5?: (data: Uint8Array) => string;
  /** Bytes acknowledged by the server so far. */
  onProgress?: (bytes: number) => void;
}

/**
 * The sink of a streamed multipart upload, with memory bounded by `(queueSize + 1) × partSize`
 * whatever the stream's length.
 *
 * Written bytes are copied into one of at most `queueSize + 1` part buffers, allocated once and
 * reused for the whole upload: one being filled, the others in flight (an UploadPart keeps its
 * buffer until the request settled, SDK retries included). When every buffer is busy, writes wait
 * (back-pressure to the producer). Incoming chunks are therefore short-lived, and no buffer is
 * allocated, concatenated or freed per part. (lib-storage's Upload keeps every chunk of a part
 * until the part is full, then concatenates them into a fresh part-sized buffer: per part, a
 * part's worth of chunks promoted to V8's old generation and a part-sized allocation, all freed
 * only by the next major GC — garbage that showed as peak RSS growing with the stream's length.)
 *
 * A stream that fits in one part is stored with one PutObject; otherwise the upload is created
 * when the first part is full and completed in `final` (the multipart object becomes visible only
 * then). A full buffer is sent only once more data arrives, so the last part is never empty. On
 * any failure the requests in flight are cancelled and settled before the stream errors; the
 * caller aborts the multipart upload (its id is in `uploadId`, and `creating` settles once
 * CreateMultipartUpload has answered).
 */
export class MultipartWriter extends Writable {
  /** Bytes written (and, once finished, stored). */
  size = 0;
  uploadId: string | undefined;
  /** Settles (never rejects) when CreateMultipartUpload has answered, if it was sent. */
  creating: Promise<unknown> | undefined;
  /** The request that makes the object (the one PutObject, or CompleteMultipartUpload) was sent: after a failure the object may exist. */
  committing = false;

  readonly #o: MultipartOptions;
  /** Cancels our own requests in flight on failure, and follows the caller's signal. */
  readonly #ac = new AbortController();
  readonly #free: Buffer[] = [];
  #allocated = 0;
  #waiter: (() => void) | undefined;
  #cur: Buffer | undefined;
  #fill = 0;
  #partNumber = 0;
  readonly #parts: CompletedPart[] = [];
  readonly #inflight = new Set<Promise<void>>();
  #created: Promise<string> | undefined;
  #failure: unknown;
  #acked = 0;
  readonly #unfollow: () => void;

  constructor(options: MultipartOptions) {
    // Chunks are copied out at once: a small queue is enough.
    super({ highWaterMark: 64 * 1024 });
    if (!(options.partSize >= 1) || !(options.queueSize >= 1)) throw new RangeError('partSize and queueSize must be positive');
    this.#o = options;
    this.#unfollow = followAbort(options.signal, () => this.#ac.abort(options.signal.reason));
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const data = chunk;
    let off = 0;
    const step = (): void => {
      try {
        while (off < data.length) {
          if (this.#failure !== undefined) return cb(this.#failure as Error);
          if (this.destroyed) return cb(new Error('upload stream destroyed'));
          if (this.#cur === undefined || this.#fill === this.#o.partSize) {
            // More data: the full buffer (if any) was not the last part; send it, take a free one.
            if (this.#cur !== undefined) this.#dispatch();
            const buf = this.#take();
            if (buf === undefined) {
              this.#waiter = step;
              return;
            }
            this.#cur = buf;
            this.#fill = 0;
          }
          const n = Math.min(this.#o.partSize - this.#fill, data.length - off);
          data.copy(this.#cur, this.#fill, off, off + n);
          this.#fill += n;
          off += n;
          this.size += n;
        }
        cb();
      } catch (err) {
        cb(err as Error);
      }
    };
    step();
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.#finish().then(
      () => cb(),
      (err: unknown) => {
        // PutObject or CompleteMultipartUpload failed: an S3 failure like a part's.
        this.#failure ??= err;
        cb(err as Error);
      },
    );
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // Cancel what is in flight (the producer failed, or the caller gave up), then settle.
    if (!this.#ac.signal.aborted) this.#ac.abort(err ?? new Error('upload stream destroyed'));
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
    this.#settle().then(() => cb(err));
  }

  async #finish(): Promise<void> {
    if (this.#partNumber === 0) {
      // The whole stream fits in one part: a plain PutObject.
      const body = this.#cur ? this.#cur.subarray(0, this.#fill) : Buffer.alloc(0);
      this.committing = true;
      await this.#o.client.send(
        new PutObjectCommand({ ...this.#o.objectParams, Bucket: this.#o.Bucket, Key: this.#o.Key, Body: body, ContentLength: body.length, ...this.#md5(body) }),
        { abortSignal: this.#ac.signal },
      );
      this.#progress(body.length);
      return;
    }
    if (this.#fill > 0) this.#dispatch();
    while (this.#inflight.size > 0) await Promise.all(this.#inflight);
    if (this.#failure !== undefined) throw this.#failure;
    const UploadId = await this.#created!;
    this.#parts.sort((a, b) => a.PartNumber! - b.PartNumber!);
    this.committing = true;
    await this.#o.client.send(
      new CompleteMultipartUploadCommand({ Bucket: this.#o.Bucket, Key: this.#o.Key, UploadId, MultipartUpload: { Parts: this.#parts } }),
      { abortSignal: this.#ac.signal },
    );
  }

  /** A free part buffer, or undefined when all are in flight. */
  #take(): Buffer | undefined {
    const b = this.#free.pop();
    if (b) return b;
    if (this.#allocated < this.#o.queueSize + 1) {
      this.#allocated++;
      // Not from the pool of small buffers, and not zero-filled: every byte sent is written first.
      return Buffer.allocUnsafeSlow(this.#o.partSize);
    }
    return undefined;
  }

  #release(buf: Buffer): void {
    this.#free.push(buf);
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }

  /** Sends the current buffer as the next part; its buffer returns to the pool when the request settles. */
  #dispatch(): void {
    const buf = this.#cur!;
    const body = buf.subarray(0, this.#fill);
    const PartNumber = ++this.#partNumber;
    this.#cur = undefined;
    this.#fill = 0;
    const p = this.#uploadPart(PartNumber, body).then(
      () => undefined,
      (err: unknown) => this.#fail(err),
    );
    const tracked = p.finally(() => {
      this.#inflight.delete(tracked);
      this.#release(buf);
    });
    this.#inflight.add(tracked);
  }

  async #uploadPart(PartNumber: number, body: Buffer): Promise<void> {
    const UploadId = await this.#create();
    this.#ac.signal.throwIfAborted();
    const out = await this.#o.client.send(
      new UploadPartCommand({ Bucket: this.#o.Bucket, Key: this.#o.Key, UploadId, PartNumber, Body: body, ContentLength: body.length, ...this.#md5(body) }),
      { abortSignal: this.#ac.signal },
    );
    if (!out.ETag) throw new Error(`part ${PartNumber}: the server returned no ETag`);
    this.#parts.push({ PartNumber, ETag: out.ETag });
    this.#progress(body.length);
  }

  #create(): Promise<string> {
    if (!this.#created) {
      // Not cancelled by the signal: a CreateMultipartUpload that reached the server but whose
      // answer was dropped would leave an upload that nobody can abort (no UploadId). It is short
      // and bounded by the socket timeout; the parts after it see the abort.
      const pending = this.#o.client.send(new CreateMultipartUploadCommand({ ...this.#o.objectParams, Bucket: this.#o.Bucket, Key: this.#o.Key }));
      this.creating = pending.catch(() => undefined);
      this.#created = pending.then((out) => {
        if (typeof out.UploadId !== 'string') throw new Error('CreateMultipartUpload returned no UploadId');
        this.uploadId = out.UploadId;
        return out.UploadId;
      });
    }
    return this.#created;
  }

  #md5(body: Uint8Array): { ContentMD5?: string } {
    return this.#o.contentMd5 ? { ContentMD5: this.#o.contentMd5(body) } : {};
  }

  #progress(n: number): void {
    this.#acked += n;
    this.#o.onProgress?.(this.#acked);
  }

  /** Records the first failure, cancels the requests in flight, wakes a waiting write, fails the stream. */
  #fail(err: unknown): void {
    if (this.#failure === undefined) this.#failure = err;
    if (!this.#ac.signal.aborted) this.#ac.abort(err);
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
    // Fail the stream now, not at the next write: the producer may be slow.
    if (!this.destroyed) this.destroy(err instanceof Error ? err : new Error(String(err)));
  }

  /** Waits for every request in flight to settle (after `#fail` they were cancelled). */
  async #settle(): Promise<void> {
    this.#unfollow();
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
  }

  /** The first failure of an S3 request (not of the producer), if any. */
  get failure(): unknown {
    return this.#failure;
  }
}
