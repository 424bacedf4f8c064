/**
 * The ObjectStore conformance suite (./conformance.ts): against the file store, the file store
 * under --max-rate (RateLimitedStore), and S3Store on the throwaway Ceph RGW that the global
 * setup starts.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, inject } from 'vitest';
import { TEMP_PREFIX } from '../../src/atomic-write.js';
import { FsStore } from '../../src/store/fs.js';
import { RateLimitedStore, TokenBucket } from '../../src/store/rate-limit.js';
import { S3Store } from '../../src/store/s3/store.js';
import { createTestBucket, listMultipartUploads, s3ClientFor } from '../harness/rgw.js';
import { objectStoreConformance } from './conformance.js';

let tmp: string;
let fresh = 0;
let admin: S3Client | undefined;
let bucket: string | undefined;

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-conformance-'));
});
afterAll(async () => {
  admin?.destroy();
  await fsp.rm(tmp, { recursive: true, force: true });
});

objectStoreConformance('file store', { streamToExistingKey: 'refused', startAtOrPastEnd: 'empty' }, async () => {
  const root = path.join(tmp, `repo-${++fresh}`);
  return {
    store: new FsStore(root),
    async leftovers() {
      const names = await fsp.readdir(root, { recursive: true }).catch(() => [] as string[]);
      return names.map(String).filter((n) => path.basename(n).startsWith(TEMP_PREFIX));
    },
  };
});

// --max-rate wraps either store: the wrapper keeps the contract (errors, aborts, ranged reads).
// A rate high enough that the suite's megabytes pass in well under a second.
objectStoreConformance('file store under --max-rate', { streamToExistingKey: 'refused', startAtOrPastEnd: 'empty' }, async () => {
  const root = path.join(tmp, `repo-${++fresh}`);
  return {
    store: new RateLimitedStore(new FsStore(root), new TokenBucket(400 * 1024 * 1024)),
    async leftovers() {
      const names = await fsp.readdir(root, { recursive: true }).catch(() => [] as string[]);
      return names.map(String).filter((n) => path.basename(n).startsWith(TEMP_PREFIX));
    },
  };
});

objectStoreConformance('S3 (Ceph RGW)', { streamToExistingKey: 'replaces', startAtOrPastEnd: 'fails' }, async () => {
  const rgw = inject('rgw');
  if (!rgw) throw new Error('no RGW: the global setup did not start one (COFFER_TEST_SERVICES=none?)');
  admin ??= s3ClientFor(rgw, rgw.admin);
  bucket ??= await createTestBucket(admin);
  const prefix = `conformance-${++fresh}`;
  const client = admin;
  const name = bucket;
  return {
    store: new S3Store({ bucket: name, prefix, endpoint: rgw.endpoint, region: rgw.region, credentials: rgw.admin }),
    async leftovers() {
      return (await listMultipartUploads(client, name, `${prefix}/`)).map((u) => `multipart upload of ${u.key}`);
    },
  };
});
