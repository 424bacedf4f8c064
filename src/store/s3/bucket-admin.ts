import {
  CreateBucketCommand,
  GetBucketLifecycleConfigurationCommand,
  GetObjectLockConfigurationCommand,
  HeadBucketCommand,
  PutBucketLifecycleConfigurationCommand,
  PutObjectLockConfigurationCommand,
  type LifecycleRule,
  type S3Client,
} from '@aws-sdk/client-s3';
import { StorageError } from '../../errors.js';
import type { BucketAdmin, BucketObjectLock } from '../bucket-admin.js';
import type { ObjectRetention } from '../object-store.js';
import { createS3Client, type S3StoreOptions } from './client.js';
import { httpStatus, s3Error } from './errors.js';

type ObjectLockMode = ObjectRetention['mode'];

/**
 * {@link BucketAdmin} of an S3 bucket: reading and writing its configuration (existence,
 * lifecycle, object lock) for `coffer init` and `coffer retention check`, with a client
 * configured as the repository's store would be. Every failure is a StorageError with one line.
 */
export class S3BucketAdmin implements BucketAdmin {
  readonly bucket: string;
  readonly prefix: string;
  readonly #client: S3Client;
  readonly #region: string;

  constructor(options: S3StoreOptions) {
    this.bucket = options.bucket;
    this.prefix = options.prefix.replace(/^\/+|\/+$/g, '');
    this.#region = options.region;
    this.#client = createS3Client(options);
  }

  exists(signal?: AbortSignal): Promise<boolean> {
    return bucketExists(this.#client, this.bucket, signal);
  }
  create(objectLock: boolean, signal?: AbortSignal): Promise<void> {
    return createBucket(this.#client, this.bucket, objectLock, this.#region, signal);
  }
  lifecycleRules(signal?: AbortSignal): Promise<LifecycleRule[]> {
    return getLifecycleRules(this.#client, this.bucket, signal);
  }
  putLifecycleRules(rules: LifecycleRule[], signal?: AbortSignal): Promise<void> {
    return putLifecycleRules(this.#client, this.bucket, rules, signal);
  }
  objectLock(signal?: AbortSignal): Promise<BucketObjectLock> {
    return getObjectLock(this.#client, this.bucket, signal);
  }
  putObjectLockDefault(mode: ObjectLockMode, days: number, signal?: AbortSignal): Promise<void> {
    return putObjectLockDefault(this.#client, this.bucket, mode, days, signal);
  }
  close(): void {
    this.#client.destroy();
  }
}

function errName(err: unknown): string {
  return (err as { name?: string; Code?: string }).name ?? (err as { Code?: string }).Code ?? '';
}

/** Whether the bucket exists (and is reachable with these credentials). */
async function bucketExists(client: S3Client, bucket: string, signal?: AbortSignal): Promise<boolean> {
  try {
    await client.send(new HeadBucketCommand({ Bucket: bucket }), { abortSignal: signal });
    return true;
  } catch (err) {
    if (httpStatus(err) === 404 || errName(err) === 'NotFound' || errName(err) === 'NoSuchBucket') return false;
    throw s3Error(err, `check bucket s3://${bucket}`);
  }
}

/** Creates the bucket, with object lock enabled when asked (which also enables versioning). */
async function createBucket(client: S3Client, bucket: string, objectLock: boolean, region: string, signal?: AbortSignal): Promise<void> {
  try {
    await client.send(
      new CreateBucketCommand({
        Bucket: bucket,
        ...(objectLock ? { ObjectLockEnabledForBucket: true } : {}),
        ...(region !== 'us-east-1' ? { CreateBucketConfiguration: { LocationConstraint: region as never } } : {}),
      }),
      { abortSignal: signal },
    );
  } catch (err) {
    if (errName(err) === 'BucketAlreadyOwnedByYou') return;
    if (errName(err) === 'BucketAlreadyExists') {
      throw new StorageError('Exists', `bucket s3://${bucket} already exists and belongs to someone else`, { cause: err, hint: 'choose another bucket name' });
    }
    throw s3Error(err, `create bucket s3://${bucket}`);
  }
}

/** The bucket's lifecycle rules (`[]` when it has none). */
async function getLifecycleRules(client: S3Client, bucket: string, signal?: AbortSignal): Promise<LifecycleRule[]> {
  try {
    const out = await client.send(new GetBucketLifecycleConfigurationCommand({ Bucket: bucket }), { abortSignal: signal });
    return out.Rules ?? [];
  } catch (err) {
    if (errName(err) === 'NoSuchLifecycleConfiguration') return [];
    throw s3Error(err, `read the lifecycle configuration of s3://${bucket}`);
  }
}

/** Replaces the bucket's lifecycle configuration with `rules` (the complete, merged set). */
async function putLifecycleRules(client: S3Client, bucket: string, rules: LifecycleRule[], signal?: AbortSignal): Promise<void> {
  try {
    await client.send(new PutBucketLifecycleConfigurationCommand({ Bucket: bucket, LifecycleConfiguration: { Rules: rules } }), { abortSignal: signal });
  } catch (err) {
    throw s3Error(err, `write the lifecycle configuration of s3://${bucket}`);
  }
}

/** The bucket's object-lock state (`enabled: false` when it has no object lock). */
async function getObjectLock(client: S3Client, bucket: string, signal?: AbortSignal): Promise<BucketObjectLock> {
  try {
    const out = await client.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }), { abortSignal: signal });
    const c = out.ObjectLockConfiguration;
    const r = c?.Rule?.DefaultRetention;
    const state: BucketObjectLock = { enabled: c?.ObjectLockEnabled === 'Enabled' };
    if (r?.Mode) state.defaultMode = r.Mode as ObjectLockMode;
    if (r?.Days !== undefined) state.defaultDays = r.Days;
    else if (r?.Years !== undefined) state.defaultDays = r.Years * 365;
    return state;
  } catch (err) {
    const n = errName(err);
    if (n === 'ObjectLockConfigurationNotFoundError' || n === 'ObjectLockConfigurationNotFound' || n === 'InvalidRequest') return { enabled: false };
    if (httpStatus(err) === 404 && n !== 'NoSuchBucket') return { enabled: false };
    throw s3Error(err, `read the object-lock configuration of s3://${bucket}`);
  }
}

/** Sets the bucket's default retention (object lock must already be enabled). */
async function putObjectLockDefault(client: S3Client, bucket: string, mode: ObjectLockMode, days: number, signal?: AbortSignal): Promise<void> {
  try {
    await client.send(
      new PutObjectLockConfigurationCommand({
        Bucket: bucket,
        ObjectLockConfiguration: { ObjectLockEnabled: 'Enabled', Rule: { DefaultRetention: { Mode: mode, Days: days } } },
      }),
      { abortSignal: signal },
    );
  } catch (err) {
    throw s3Error(err, `write the object-lock configuration of s3://${bucket}`);
  }
}
