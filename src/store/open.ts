import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UsageError } from '../errors.js';
import { FsStore } from './fs.js';
import { RateLimitedStore, TokenBucket } from './rate-limit.js';
import type { BucketAdmin } from './bucket-admin.js';
import type { ObjectStore } from './object-store.js';
import type { S3StoreOptions } from './s3/client.js';

export type RepositoryRef =
  | { kind: 'file'; root: string }
  | { kind: 's3'; bucket: string; prefix: string };

/** A repository in an S3 bucket: the only kind with a {@link BucketAdmin}. */
export type S3RepositoryRef = Extract<RepositoryRef, { kind: 's3' }>;

/** Store settings that do not live in the repository URL: the S3 connection, and the transfer rate cap. */
export interface S3Settings {
  /** `--max-rate`: bytes per second for all transfers of the process ({@link RateLimitedStore}). */
  maxRate?: number;
  endpoint?: string;
  region?: string;
  credentials?: S3StoreOptions['credentials'];
  maxAttempts?: number;
  requestTimeoutMs?: number;
}

// S3 bucket naming rules (lenient on dots, which some providers allow).
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/**
 * Parses a repository location: `s3://bucket[/prefix]`, `file:///abs/path`, or a plain path
 * (relative paths are resolved against `cwd`). Throws UsageError with the accepted forms.
 */
export function parseRepository(input: string, cwd = process.cwd()): RepositoryRef {
  const text = input.trim();
  if (text === '') throw new UsageError('repository location is empty', { hint: 'use s3://bucket/prefix, file:///path or a directory path' });
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(text)?.[1]?.toLowerCase();
  if (scheme === 's3') {
    const m = /^s3:\/\/([^/?#]*)(\/[^?#]*)?$/i.exec(text);
    if (!m) throw new UsageError(`invalid repository URL ${JSON.stringify(input)}`, { hint: 'expected s3://bucket/prefix' });
    const bucket = m[1] ?? '';
    if (!BUCKET_RE.test(bucket) || bucket.includes('..')) {
      throw new UsageError(`invalid S3 bucket name ${JSON.stringify(bucket)} in ${JSON.stringify(input)}`, {
        hint: 'bucket names are 3-63 characters: lowercase letters, digits, dots and hyphens',
      });
    }
    const prefix = (m[2] ?? '').replace(/^\/+|\/+$/g, '');
    if (prefix.split('/').some((p) => p === '.' || p === '..') || prefix.includes('//')) {
      throw new UsageError(`invalid S3 prefix in ${JSON.stringify(input)}`, { hint: 'the prefix may not contain empty, "." or ".." segments' });
    }
    return { kind: 's3', bucket, prefix };
  }
  if (scheme === 'file') {
    let root: string;
    try {
      root = fileURLToPath(text);
    } catch (err) {
      throw new UsageError(`invalid file URL ${JSON.stringify(input)}`, { cause: err, hint: 'expected file:///absolute/path' });
    }
    return { kind: 'file', root: path.resolve(root) };
  }
  if (scheme && scheme.length > 1) {
    throw new UsageError(`unsupported repository scheme "${scheme}:" in ${JSON.stringify(input)}`, {
      hint: 'use s3://bucket/prefix, file:///path or a directory path',
    });
  }
  if (text.includes('\0')) throw new UsageError('repository path contains a NUL byte');
  return { kind: 'file', root: path.resolve(cwd, text) };
}

/** Opens the store for a repository location. The S3 SDK is loaded only when needed. */
export async function openStore(input: string | RepositoryRef, s3: S3Settings = {}): Promise<ObjectStore> {
  const ref = typeof input === 'string' ? parseRepository(input) : input;
  const capped = (store: ObjectStore): ObjectStore => (s3.maxRate !== undefined ? new RateLimitedStore(store, new TokenBucket(s3.maxRate)) : store);
  if (ref.kind === 'file') return capped(new FsStore(ref.root));
  const { S3Store } = await import('./s3/store.js');
  return capped(new S3Store(s3StoreOptions(ref, s3)));
}

/**
 * Opens the bucket administration (existence, lifecycle, object lock) of an S3 repository, with
 * the same connection settings as its store. The S3 SDK is loaded only when needed.
 */
export async function openBucketAdmin(ref: S3RepositoryRef, s3: S3Settings = {}): Promise<BucketAdmin> {
  const { S3BucketAdmin } = await import('./s3/bucket-admin.js');
  return new S3BucketAdmin(s3StoreOptions(ref, s3));
}

function s3StoreOptions(ref: S3RepositoryRef, s3: S3Settings): S3StoreOptions {
  return {
    bucket: ref.bucket,
    prefix: ref.prefix,
    region: s3.region ?? 'us-east-1',
    ...(s3.endpoint ? { endpoint: s3.endpoint } : {}),
    ...(s3.credentials ? { credentials: s3.credentials } : {}),
    ...(s3.maxAttempts ? { maxAttempts: s3.maxAttempts } : {}),
    ...(s3.requestTimeoutMs ? { requestTimeoutMs: s3.requestTimeoutMs } : {}),
  };
}
