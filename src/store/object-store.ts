import type { Readable } from 'node:stream';

/** One object as seen in a listing. */
export interface ObjectInfo {
  /** Full key relative to the store's root (the repository prefix is NOT included). */
  key: string;
  size: number;
  lastModified: Date;
}

/** Write-once retention for an object (S3 object lock). Ignored by stores without object lock. */
export interface ObjectRetention {
  mode: 'GOVERNANCE' | 'COMPLIANCE';
  retainUntil: Date;
}

export interface PutStreamOptions {
  /** Aborting it aborts the upload: nothing is left under the key (multipart upload aborted, temp file removed). */
  signal: AbortSignal;
  /** Multipart part size in bytes (S3). */
  partSize: number;
  /** Parallel part uploads (S3): up to queueSize + 1 while the producer waits for a free buffer. Memory is partSize × (queueSize + 1). */
  queueSize?: number;
  retention?: ObjectRetention;
  tags?: Record<string, string>;
  contentType?: string;
  /** Called with the number of bytes accepted by the store so far. */
  onProgress?: (bytes: number) => void;
}

export interface PutBytesOptions {
  signal?: AbortSignal;
  retention?: ObjectRetention;
  tags?: Record<string, string>;
  contentType?: string;
}

/** {@link ObjectStore.putComposed}: where the copied bytes come from, and how the new object is written. */
export interface ComposeOptions {
  signal: AbortSignal;
  /** The existing object whose bytes `[start, end)` follow the head. */
  source: { key: string; start: number; end: number };
  retention?: ObjectRetention;
  tags?: Record<string, string>;
  contentType?: string;
  /** Called with the number of bytes of the new object committed so far (head uploaded, ranges copied). */
  onProgress?: (bytes: number) => void;
}

export interface GetOptions {
  signal?: AbortSignal;
  /**
   * First byte to return (ranged read): the body runs from there to the end, and `size` counts
   * those bytes. It must lie inside the object (`start < size`), which is all coffer asks for
   * (a resumed download starts at its first missing byte). At or past the end the stores differ:
   * S3 fails (`StorageError('Failed')`, HTTP 416 InvalidRange), the file store returns an empty body.
   */
  start?: number;
  /**
   * One past the last byte to return (ranged read of `[start, end)`); the default is the
   * object's end. It must lie inside the object and after `start`.
   */
  end?: number;
}

/**
 * A repository backend: a flat key space under a root (an S3 bucket + prefix, or a directory).
 *
 * Contract, shared by every implementation and checked by one conformance suite
 * (test/store/conformance.ts, run against the file store and against a real Ceph RGW):
 * - Keys are `/`-separated relative paths made of the characters coffer's layout uses.
 * - **Atomic puts.** An object becomes visible under its key only when it is complete. A failed
 *   or aborted put leaves nothing under the key: no object, no temporary file, no multipart
 *   upload.
 * - **Write-once small puts.** `putBytes` to a key that already exists fails with
 *   `StorageError('Exists')` and leaves the existing object untouched, on every store (S3:
 *   `If-None-Match: *`, 412). This is what coffer relies on: a backup is committed by its manifest,
 *   which is written with `putBytes`.
 * - **Streamed puts are write-once on the file store only** (an exclusive hard link). On S3 a
 *   `putStream` to an existing key replaces the object (readers see one whole version, never a
 *   mix): the multipart upload is committed by CompleteMultipartUpload, and Ceph RGW 16 (Debian
 *   12's Ceph, the S3 server the tests run against) ignores `If-None-Match: *` there — measured:
 *   200 and the object replaced (AWS S3 honours it only since August 2024). A conditional
 *   PutObject for the streams that fit in one part alone would make the promise depend on the
 *   stream's length, so no stream upload is conditional. coffer never streams twice to one key:
 *   dump keys carry the backup's unique id.
 * - **Errors** are always {@link StorageError}s with a `code` (`StorageErrorCode`, src/errors.ts):
 *   `NotFound` (no such key), `NoSuchBucket`, `AccessDenied`, `Exists`, `Aborted`, `Unavailable`
 *   (network/endpoint), `Truncated` (a download closed before the object's end; resumable) or
 *   `Failed` (anything else), and a one-line message saying what to check.
 * - `list` returns every key under the prefix (all pages: S3 answers 1,000 keys a page), in no
 *   particular order; the prefix need not end at a `/`.
 */
export interface ObjectStore {
  /** Human-readable location without credentials, e.g. `s3://bucket/prefix` or `file:///srv/backups`. */
  readonly location: string;
  /**
   * Streams `body` to `key`. Resolves with the number of bytes stored once the object is visible.
   * Write-once on the file store only (see above); an aborted or failed put leaves nothing.
   */
  putStream(key: string, body: Readable, options: PutStreamOptions): Promise<{ size: number }>;
  /** Stores a small object (manifests) in one request. Write-once on every store: `Exists` if the key is taken. */
  putBytes(key: string, data: Uint8Array, options?: PutBytesOptions): Promise<void>;
  /** Opens an object for reading. Throws `NotFound` before returning if it does not exist. */
  get(key: string, options?: GetOptions): Promise<{ body: Readable; size: number }>;
  /** Reads a whole small object. */
  getBytes(key: string, options?: { signal?: AbortSignal }): Promise<Buffer>;
  /** Size of an object, or `undefined` when it does not exist. */
  head(key: string, options?: { signal?: AbortSignal }): Promise<{ size: number } | undefined>;
  /** Every object under `prefix` (all pages). */
  list(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectInfo>;
  /**
   * Server-side composition, where the store can copy without the bytes passing through this
   * process (S3: a multipart upload whose first part is `head`, uploaded, and whose other parts
   * are UploadPartCopy ranges of `source`). Absent on stores without it (the file store: a
   * local copy through {@link putStream} is as cheap). Same visibility rules as `putStream`:
   * the object appears only when complete; a failure aborts the multipart upload. `head` must
   * be at least {@link minComposeHead} bytes when a range follows (every part but the last).
   * Resolves with the new object's size.
   */
  putComposed?(key: string, head: Uint8Array, options: ComposeOptions): Promise<{ size: number }>;
  /** The smallest `head` {@link putComposed} accepts before a copied range (S3: 5 MiB, the smallest part). */
  readonly minComposeHead?: number;
  /**
   * Throws `NoSuchBucket` when the repository itself is not there, where {@link list} cannot
   * tell (a file repository's directory: a listing under it is empty; S3's listing of a missing
   * bucket throws already). For answers that "nothing is stored" must not be taken from a
   * repository that is not mounted (wal-fetch's "not in the archive" ends a recovery).
   */
  assertPresent?(options?: { signal?: AbortSignal }): Promise<void>;
  /** Deletes an object; deleting a missing key is not an error. */
  delete(key: string): Promise<void>;
  /** Releases network resources. */
  close(): void;
}
