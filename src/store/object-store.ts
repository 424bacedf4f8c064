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

export interface GetOptions {
  signal?: AbortSignal;
  /** First byte to return (ranged read). */
  start?: number;
}

/**
 * A repository backend: a flat key space under a root (an S3 bucket + prefix, or a directory).
 *
 * Contract, shared by every implementation and checked by one conformance suite:
 * - Keys are `/`-separated relative paths made of the characters coffer's layout uses.
 * - **Atomic, write-once puts.** An object becomes visible under its key only when it is
 *   complete. A put to a key that already exists fails with `StorageError('Exists')` and leaves
 *   the existing object untouched. A failed or aborted put leaves nothing under the key.
 * - **Errors** are always {@link StorageError}s with a `code`: `NotFound` (no such key),
 *   `NoSuchBucket`, `AccessDenied`, `Exists`, `Aborted`, `Unavailable` (network/endpoint), or
 *   `Failed` (anything else), and a one-line message saying what to check.
 * - `list` returns every key under the prefix (all pages), in no particular order.
 */
export interface ObjectStore {
  /** Human-readable location without credentials, e.g. `s3://bucket/prefix` or `file:///srv/backups`. */
  readonly location: string;
  /** Streams `body` to `key`. Resolves with the number of bytes stored once the object is visible. */
  putStream(key: string, body: Readable, options: PutStreamOptions): Promise<{ size: number }>;
  /** Stores a small object (manifests) in one request. */
  putBytes(key: string, data: Uint8Array, options?: PutBytesOptions): Promise<void>;
  /** Opens an object for reading. Throws `NotFound` before returning if it does not exist. */
  get(key: string, options?: GetOptions): Promise<{ body: Readable; size: number }>;
  /** Reads a whole small object. */
  getBytes(key: string, options?: { signal?: AbortSignal }): Promise<Buffer>;
  /** Size of an object, or `undefined` when it does not exist. */
  head(key: string, options?: { signal?: AbortSignal }): Promise<{ size: number } | undefined>;
  /** Every object under `prefix` (all pages). */
  list(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectInfo>;
  /** Deletes an object; deleting a missing key is not an error. */
  delete(key: string): Promise<void>;
  /** Releases network resources. */
  close(): void;
}
