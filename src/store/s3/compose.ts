import {
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  HeadObjectCommand,
  UploadPartCommand,
  UploadPartCopyCommand,
  type CompletedPart,
  type PutObjectCommandInput,
  type S3Client,
} from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import { StorageError } from '../../errors.js';
import { abortUpload, removeIfCommitted } from './failed-put.js';

/** S3's smallest part (every part of a multipart upload but the last). */
export const MIN_PART = 5 * 1024 * 1024;
/** S3's largest part, uploaded or copied. */
export const MAX_PART = 5 * 1024 * 1024 * 1024;
/** S3's most parts in one upload. */
export const MAX_PARTS = 10_000;
/** The copy part size coffer prefers: few requests, each short enough to retry. */
const COPY_PART = 256 * 1024 * 1024;
/** Copy requests in flight at once. */
const COPY_CONCURRENCY = 4;

export interface ComposeRequest {
  client: S3Client;
  Bucket: string;
  Key: string;
  /** The source object's full S3 key (same bucket). */
  sourceKey: string;
  head: Uint8Array;
  start: number;
  end: number;
  objectParams: Partial<PutObjectCommandInput>;
  signal: AbortSignal;
  /** Content-MD5 for the uploaded part (object lock needs it on AWS). */
  contentMd5: boolean;
  onProgress?: (bytes: number) => void;
}

/**
 * Byte ranges `[start, end)` for UploadPartCopy: at most `MAX_PARTS - 1` ranges (the head is
 * part 1), each at most 5 GiB and, all but the last, at least 5 MiB.
 */
export function copyRanges(start: number, end: number): Array<[number, number]> {
  const total = end - start;
  if (total <= 0) return [];
  const size = Math.min(MAX_PART, Math.max(MIN_PART, COPY_PART, Math.ceil(total / (MAX_PARTS - 1))));
  const out: Array<[number, number]> = [];
  for (let s = start; s < end; s += size) out.push([s, Math.min(end, s + size)]);
  return out;
}

/** `bucket/key` for x-amz-copy-source: each key segment URL-encoded, the slashes kept. */
export function copySource(bucket: string, key: string): string {
  return `${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
}

/**
 * Writes `head` followed by bytes `[start, end)` of an existing object as one new object, the
 * copied bytes never leaving the server: CreateMultipartUpload, UploadPart 1 (the head),
 * UploadPartCopy with CopySourceRange for the rest (up to 4 at a time), CompleteMultipartUpload.
 * Any failure aborts the multipart upload, and removes the object if its completion may have
 * reached the server (nothing is left under `Key`).
 *
 * @throws {RangeError} if a range follows a head shorter than {@link MIN_PART}.
 */
export async function composeObject(r: ComposeRequest): Promise<{ size: number }> {
  const ranges = copyRanges(r.start, r.end);
  if (ranges.length > 0 && r.head.length < MIN_PART) throw new RangeError(`the head of a composed object must be at least ${MIN_PART} bytes (S3's smallest part); it is ${r.head.length}`);
  if (ranges.length + 1 > MAX_PARTS) throw new RangeError('too many parts');
  const created = await r.client.send(new CreateMultipartUploadCommand({ ...r.objectParams, Bucket: r.Bucket, Key: r.Key }));
  const UploadId = created.UploadId;
  if (typeof UploadId !== 'string') throw new Error('CreateMultipartUpload returned no UploadId');
  const ac = new AbortController();
  const onAbort = (): void => ac.abort(r.signal.reason);
  r.signal.addEventListener('abort', onAbort, { once: true });
  if (r.signal.aborted) onAbort();
  let done = 0;
  /** CompleteMultipartUpload was sent (`committing`), and answered 200 (`completed`). */
  let committing = false;
  let completed = false;
  const progress = (n: number): void => {
    done += n;
    r.onProgress?.(done);
  };
  try {
    const parts: CompletedPart[] = [];
    const head = Buffer.from(r.head.buffer, r.head.byteOffset, r.head.byteLength);
    const up = await r.client.send(
      new UploadPartCommand({
        Bucket: r.Bucket,
        Key: r.Key,
        UploadId,
        PartNumber: 1,
        Body: head,
        ContentLength: head.length,
        ...(r.contentMd5 ? { ContentMD5: createHash('md5').update(head).digest('base64') } : {}),
      }),
      { abortSignal: ac.signal },
    );
    if (!up.ETag) throw new Error('part 1: the server returned no ETag');
    parts.push({ PartNumber: 1, ETag: up.ETag });
    progress(head.length);
    const CopySource = copySource(r.Bucket, r.sourceKey);
    let next = 0;
    const worker = async (): Promise<void> => {
      // One failed range stops the others (their copies would be thrown away).
      while (next < ranges.length && !ac.signal.aborted) {
        const i = next++;
        const [s, e] = ranges[i]!;
        const PartNumber = i + 2;
        const out = await r.client
          .send(new UploadPartCopyCommand({ Bucket: r.Bucket, Key: r.Key, UploadId, PartNumber, CopySource, CopySourceRange: `bytes=${s}-${e - 1}` }), { abortSignal: ac.signal })
          .catch((err: unknown) => {
            if (!ac.signal.aborted) ac.abort(err);
            throw err;
          });
        const ETag = out.CopyPartResult?.ETag;
        if (!ETag) throw new Error(`part ${PartNumber}: the server returned no ETag for the copied range`);
        parts.push({ PartNumber, ETag });
        progress(e - s);
      }
    };
    const workers = Array.from({ length: Math.min(COPY_CONCURRENCY, ranges.length) }, worker);
    const settled = await Promise.allSettled(workers);
    const failed = settled.find((x): x is PromiseRejectedResult => x.status === 'rejected');
    if (failed) {
      ac.abort(failed.reason);
      throw failed.reason;
    }
    parts.sort((a, b) => a.PartNumber! - b.PartNumber!);
    committing = true;
    await r.client.send(new CompleteMultipartUploadCommand({ Bucket: r.Bucket, Key: r.Key, UploadId, MultipartUpload: { Parts: parts } }), { abortSignal: ac.signal });
    completed = true;
    // The size the store holds (the caller compares it with what was composed).
    const stored = await r.client.send(new HeadObjectCommand({ Bucket: r.Bucket, Key: r.Key }), { abortSignal: ac.signal });
    return { size: Number(stored.ContentLength ?? -1) };
  } catch (err) {
    if (!ac.signal.aborted) ac.abort(err);
    const aborted = await abortUpload(r.client, r.Bucket, r.Key, UploadId);
    // Completed, then the size check failed: the object exists whatever that failure was.
    await removeIfCommitted(r.client, r.Bucket, r.Key, { committing, aborted, error: completed ? undefined : err });
    if (r.signal.aborted && !(err instanceof StorageError)) throw new StorageError('Aborted', `copy to s3://${r.Bucket}/${r.Key}: aborted`, { cause: err });
    throw err;
  } finally {
    r.signal.removeEventListener('abort', onAbort);
  }
}
