/**
 * Cleaning up after a put that failed: its multipart upload aborted, and the object removed when
 * the request that makes it (the one PutObject, or CompleteMultipartUpload) may have reached the
 * server. A failed put leaves nothing (the store's contract, test/store/conformance.ts).
 *
 * Both run with fresh signals (the put's own was usually aborted) and drop their failures: they
 * must not replace the put's error, and the bucket's lifecycle rules (AbortIncompleteMultipartUpload,
 * the tiers' expiry by tag) are the last line of defence.
 */
import { AbortMultipartUploadCommand, DeleteObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import pRetry from 'p-retry';
import { httpStatus } from './errors.js';

/**
 * Aborts a multipart upload, tried up to 5 times (200 ms, then doubling, between tries). True
 * when the server aborted it (so it was never completed); false when the upload was gone
 * (completed, or aborted before) or the abort failed.
 */
export async function abortUpload(client: S3Client, Bucket: string, Key: string, UploadId: string): Promise<boolean> {
  return pRetry(
    async () => {
      try {
        await client.send(new AbortMultipartUploadCommand({ Bucket, Key, UploadId }), { abortSignal: AbortSignal.timeout(30_000) });
        return true;
      } catch (err) {
        if ((err as { name?: string }).name === 'NoSuchUpload' || httpStatus(err) === 404) return false;
        throw err;
      }
    },
    { retries: 4, minTimeout: 200, factor: 2 },
  ).catch(() => false);
}

/**
 * After a failed put whose committing request was sent (`committing`): unless the server refused
 * that request (a 4xx answer) or the upload was aborted (`aborted`: it was never completed), the
 * object may exist, its answer lost or its run stopped while the request was in flight. It is
 * deleted, tried up to 3 times; a failure is dropped (the backup host may lack DeleteObject: the
 * object has no manifest, so it is no backup, and lifecycle rules expire it).
 */
export async function removeIfCommitted(client: S3Client, Bucket: string, Key: string, how: { committing: boolean; aborted: boolean; error: unknown }): Promise<void> {
  if (!how.committing || how.aborted || refused(how.error)) return;
  await pRetry(() => client.send(new DeleteObjectCommand({ Bucket, Key }), { abortSignal: AbortSignal.timeout(10_000) }), {
    retries: 2,
    minTimeout: 200,
    factor: 2,
    shouldRetry: ({ error }) => !refused(error),
  }).catch(() => undefined);
}

/** The server answered with a 4xx status: it refused the request. */
function refused(err: unknown): boolean {
  const status = httpStatus(err);
  return status !== undefined && status >= 400 && status < 500;
}
