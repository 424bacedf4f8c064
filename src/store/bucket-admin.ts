import type { LifecycleRule } from '@aws-sdk/client-s3';
import type { ObjectRetention } from './object-store.js';

/** A bucket's object-lock configuration as coffer sees it. */
export interface BucketObjectLock {
  enabled: boolean;
  defaultMode?: ObjectRetention['mode'];
  defaultDays?: number;
}

/**
 * The bucket of an S3 repository, for the commands that configure or check it (`coffer init`,
 * `coffer retention check`): existence, lifecycle rules and object lock. Opened from a
 * repository reference with `openBucketAdmin` (src/store/open.ts); only `s3://` repositories
 * have one. Every failure is a StorageError with one line.
 */
export interface BucketAdmin {
  readonly bucket: string;
  /** The repository's key prefix in the bucket ('' for the bucket root). */
  readonly prefix: string;
  /** Whether the bucket exists (and is reachable with these credentials). */
  exists(signal?: AbortSignal): Promise<boolean>;
  /** Creates the bucket in the configured region, with object lock when asked (which also enables versioning). */
  create(objectLock: boolean, signal?: AbortSignal): Promise<void>;
  /** The bucket's lifecycle rules (`[]` when it has none). */
  lifecycleRules(signal?: AbortSignal): Promise<LifecycleRule[]>;
  /** Replaces the bucket's lifecycle configuration with `rules` (the complete, merged set). */
  putLifecycleRules(rules: LifecycleRule[], signal?: AbortSignal): Promise<void>;
  /** The bucket's object-lock state (`enabled: false` when it has no object lock). */
  objectLock(signal?: AbortSignal): Promise<BucketObjectLock>;
  /** Sets the bucket's default retention (object lock must already be enabled). */
  putObjectLockDefault(mode: ObjectRetention['mode'], days: number, signal?: AbortSignal): Promise<void>;
  /** Releases network resources. */
  close(): void;
}
