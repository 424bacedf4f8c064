import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type PutObjectCommandInput,
  type S3Client,
} from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { StorageError } from '../../errors.js';
import { followAbort, isAbortEcho } from '../../run/abort.js';
import type { ComposeOptions, GetOptions, ObjectInfo, ObjectStore, ObjectRetention, PutBytesOptions, PutStreamOptions } from '../object-store.js';
import { createS3Client, type S3StoreOptions } from './client.js';
import { httpStatus, s3Error, s3UploadError } from './errors.js';
import { abortUpload, removeIfCommitted } from './failed-put.js';
import { MultipartWriter } from './multipart.js';
import { composeObject, MIN_PART } from './compose.js';

/**
 * A repository in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW…).
 *
 * Streams go up as multipart uploads (MultipartWriter, bounded memory) that become visible only on
 * CompleteMultipartUpload; a failed or aborted put aborts the multipart upload. Checksums
 * are sent only when required (`WHEN_REQUIRED`): several S3-compatible servers reject the SDK's
 * default aws-chunked trailers, and coffer keeps its own sha256 anyway.
 */
export class S3Store implements ObjectStore {
  readonly location: string;
  readonly client: S3Client;
  readonly bucket: string;
  readonly prefix: string;

  constructor(readonly options: S3StoreOptions) {
    this.bucket = options.bucket;
    this.prefix = options.prefix.replace(/^\/+|\/+$/g, '');
    this.location = `s3://${this.bucket}${this.prefix ? `/${this.prefix}` : ''}`;
    this.client = createS3Client(options);
  }

  /** Full S3 key for a repository key. */
  fullKey(key: string): string {
    return this.prefix ? `${this.prefix}/${key}` : key;
  }

  private fullName(key: string): string {
    return `s3://${this.bucket}/${this.fullKey(key)}`;
  }

  async putStream(key: string, body: Readable, options: PutStreamOptions): Promise<{ size: number }> {
    const Key = this.fullKey(key);
    // Every request of this upload carries our signal, so an abort also cancels parts in flight
    // (CreateMultipartUpload excepted, see MultipartWriter); its UploadId is kept so that the
    // multipart upload can be aborted whatever happens. Object lock: AWS S3 requires Content-MD5
    // (or a checksum) on every upload request carrying retention (RGW/MinIO verify it too).
    const writer = new MultipartWriter({
      client: this.client,
      Bucket: this.bucket,
      Key,
      objectParams: { ContentType: options.contentType ?? 'application/octet-stream', ...lockParams(options.retention), ...tagging(options.tags) },
      partSize: options.partSize,
      queueSize: options.queueSize ?? 4,
      signal: options.signal,
      ...(options.retention ? { contentMd5 } : {}),
      onProgress: options.onProgress,
    });
    body.on('error', (err) => writer.destroy(err));
    body.pipe(writer);
    const unfollow = followAbort(options.signal, () => writer.destroy(new StorageError('Aborted', `upload ${this.fullName(key)}: aborted`)));
    try {
      await finished(writer);
      if (options.signal.aborted) throw new StorageError('Aborted', `upload ${this.fullName(key)}: aborted`);
      return { size: writer.size };
    } catch (err) {
      // Destroying settles the requests in flight (cancelled) before 'close'.
      if (!writer.destroyed) writer.destroy();
      if (!writer.closed) await new Promise((r) => writer.once('close', r));
      // Once CreateMultipartUpload has answered, an upload without an id cannot be aborted.
      await writer.creating;
      const aborted = writer.uploadId !== undefined && (await abortUpload(this.client, this.bucket, Key, writer.uploadId));
      await removeIfCommitted(this.client, this.bucket, Key, { committing: writer.committing, aborted, error: writer.failure ?? err });
      // An error of the body (the producer: pg_dump, encryption…) is the real cause.
      const bodyErr = (body as unknown as { errored?: unknown }).errored ?? (writer.failure === undefined ? writer.errored : undefined);
      if (bodyErr && !isAbortEcho(bodyErr)) throw bodyErr;
      if (err instanceof StorageError) throw err;
      if (options.signal.aborted) throw new StorageError('Aborted', `upload ${this.fullName(key)}: aborted`, { cause: err });
      throw s3UploadError(writer.failure ?? err, `upload ${this.fullName(key)}`, { locked: options.retention !== undefined, bucket: this.bucket });
    } finally {
      unfollow();
    }
  }

  readonly minComposeHead = MIN_PART;

  /** Server-side composition: `head` uploaded as part 1, the source's range copied by UploadPartCopy (src/store/s3/compose.ts). */
  async putComposed(key: string, head: Uint8Array, options: ComposeOptions): Promise<{ size: number }> {
    try {
      return await composeObject({
        client: this.client,
        Bucket: this.bucket,
        Key: this.fullKey(key),
        sourceKey: this.fullKey(options.source.key),
        head,
        start: options.source.start,
        end: options.source.end,
        objectParams: { ContentType: options.contentType ?? 'application/octet-stream', ...lockParams(options.retention), ...tagging(options.tags) },
        signal: options.signal,
        contentMd5: options.retention !== undefined,
        onProgress: options.onProgress,
      });
    } catch (err) {
      if (err instanceof RangeError) throw err;
      throw s3UploadError(err, `copy ${this.fullName(options.source.key)} to ${this.fullName(key)}`, { locked: options.retention !== undefined, bucket: this.bucket });
    }
  }

  async putBytes(key: string, data: Uint8Array, options?: PutBytesOptions): Promise<void> {
    const input: PutObjectCommandInput = {
      Bucket: this.bucket,
      Key: this.fullKey(key),
      Body: data,
      ContentLength: data.length,
      ContentType: options?.contentType ?? 'application/octet-stream',
      // Write-once: never replace an existing object (412 if the key exists).
      IfNoneMatch: '*',
      // Verified by the server; also what AWS S3 requires for uploads with object-lock retention.
      ContentMD5: contentMd5(data),
      ...lockParams(options?.retention),
      ...tagging(options?.tags),
    };
    try {
      await this.client.send(new PutObjectCommand(input), { abortSignal: options?.signal });
    } catch (err) {
      if (httpStatus(err) === 412) throw new StorageError('Exists', `${this.fullName(key)} already exists; refusing to overwrite`);
      throw s3UploadError(err, `upload ${this.fullName(key)}`, { locked: options?.retention !== undefined, bucket: this.bucket });
    }
  }

  async get(key: string, options?: GetOptions): Promise<{ body: Readable; size: number }> {
    try {
      const out = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key), ...rangeHeader(options) }),
        { abortSignal: options?.signal },
      );
      const body = out.Body as Readable | undefined;
      if (!body) throw new StorageError('Failed', `download ${this.fullName(key)}: empty response body`);
      return { body, size: Number(out.ContentLength ?? 0) };
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw s3Error(err, `download ${this.fullName(key)}`);
    }
  }

  async getBytes(key: string, options?: { signal?: AbortSignal }): Promise<Buffer> {
    const { body } = await this.get(key, options);
    const chunks: Buffer[] = [];
    try {
      for await (const c of body) chunks.push(c as Buffer);
    } catch (err) {
      throw s3Error(err, `download ${this.fullName(key)}`);
    }
    return Buffer.concat(chunks);
  }

  async head(key: string, options?: { signal?: AbortSignal }): Promise<{ size: number } | undefined> {
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key) }), { abortSignal: options?.signal });
      return { size: Number(out.ContentLength ?? 0) };
    } catch (err) {
      const e = s3Error(err, `head ${this.fullName(key)}`);
      if (e.code === 'NotFound') return undefined;
      throw e;
    }
  }

  async *list(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectInfo> {
    const full = this.fullKey(prefix);
    const strip = this.prefix ? this.prefix.length + 1 : 0;
    let token: string | undefined;
    do {
      let out;
      try {
        out = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: full, ContinuationToken: token }),
          { abortSignal: options?.signal },
        );
      } catch (err) {
        throw s3Error(err, `list ${this.location}`);
      }
      for (const o of out.Contents ?? []) {
        if (!o.Key) continue;
        yield { key: o.Key.slice(strip), size: Number(o.Size ?? 0), lastModified: o.LastModified ?? new Date(0) };
      }
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(key: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key) }));
    } catch (err) {
      throw s3Error(err, `delete ${this.fullName(key)}`);
    }
  }

  close(): void {
    this.client.destroy();
  }
}

/** Base64 MD5 of a body, for the Content-MD5 header. */
function contentMd5(data: Uint8Array): string {
  return createHash('md5').update(data).digest('base64');
}

function lockParams(r: ObjectRetention | undefined): Partial<PutObjectCommandInput> {
  return r ? { ObjectLockMode: r.mode, ObjectLockRetainUntilDate: r.retainUntil } : {};
}

function tagging(tags: Record<string, string> | undefined): Partial<PutObjectCommandInput> {
  if (!tags || Object.keys(tags).length === 0) return {};
  return { Tagging: new URLSearchParams(tags).toString() };
}

/** The HTTP Range of a ranged read (`[start, end)`), or nothing for the whole object. */
function rangeHeader(options: GetOptions | undefined): { Range?: string } {
  const start = options?.start ?? 0;
  if (options?.end !== undefined) return { Range: `bytes=${start}-${options.end - 1}` };
  return start > 0 ? { Range: `bytes=${start}-` } : {};
}
