/**
 * Shared fixtures of the reliability suite: a bucket, an identity, coffer environments (direct
 * to RGW or through a fault proxy), and the "nothing visible" checks every test ends with.
 */
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { generateIdentity } from '../../src/crypto/age.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { baseEnv, pgEnv, runCoffer, s3Env } from '../harness/cli.js';
import type { PgInfo, RgwInfo } from '../harness/global-setup.js';
import { listDatabases, type PgLike } from '../harness/pg.js';
import { createTestBucket, listAllKeys, listMultipartUploads, s3ClientFor } from '../harness/rgw.js';

export interface Fixture {
  tmp: string;
  identityFile: string;
  recipient: string;
  s3: S3Client;
  bucket: string;
  /** Environment for coffer: the test cluster and RGW, or `endpoint` instead of RGW. */
  env(extra?: Record<string, string>, endpoint?: string): Record<string, string>;
}

export async function setupFixture(rgw: RgwInfo, pg: PgInfo, name: string): Promise<Fixture> {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), `coffer-${name}-`));
  const id = await generateIdentity();
  const identityFile = path.join(tmp, 'identity.txt');
  await fsp.writeFile(identityFile, id.fileText, { mode: 0o600 });
  const s3 = s3ClientFor(rgw, rgw.admin);
  const bucket = await createTestBucket(s3);
  return {
    tmp,
    identityFile,
    recipient: id.recipient,
    s3,
    bucket,
    env: (extra = {}, endpoint) => baseEnv({ ...pgEnv(pg), ...s3Env(rgw), ...(endpoint ? { AWS_ENDPOINT_URL_S3: endpoint } : {}), ...extra }),
  };
}

/** Runs `coffer backup` and returns its manifest (throws with stderr on failure). */
export async function backupOk(f: Fixture, repo: string, db: string, extraArgs: string[] = [], env = f.env()): Promise<BackupManifest> {
  const r = await runCoffer(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--json', ...extraArgs], { env });
  if (r.code !== 0) throw new Error(`backup failed (${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as BackupManifest[])[0]!;
}

/** Backups `coffer list` shows (ids). */
export async function listedIds(f: Fixture, repo: string): Promise<string[]> {
  const r = await runCoffer(['list', '--from', repo, '--json'], { env: f.env() });
  if (r.code !== 0) throw new Error(`list failed (${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as Array<{ id: string }>).map((x) => x.id).sort();
}

/** Keys and in-progress multipart uploads under a prefix of the fixture's bucket. */
export async function bucketState(f: Fixture, prefix: string): Promise<{ keys: string[]; uploads: number }> {
  return {
    keys: (await listAllKeys(f.s3, f.bucket, `${prefix}/`)).sort(),
    uploads: (await listMultipartUploads(f.s3, f.bucket, `${prefix}/`)).length,
  };
}

/** Scratch databases of restores (`<target>__restoring_…`). */
export async function scratchDatabases(pg: PgLike): Promise<string[]> {
  return (await listDatabases(pg)).filter((d) => d.includes('__restoring_'));
}

/**
 * A small seeded PRNG (mulberry32): tests log the seed (COFFER_TEST_SEED reproduces a run).
 */
export function seededRandom(label: string): { seed: number; next: () => number } {
  const seed = process.env.COFFER_TEST_SEED ? Number(process.env.COFFER_TEST_SEED) : randomBytes(4).readUInt32LE(0);
  console.log(`[${label}] random seed ${seed} (set COFFER_TEST_SEED=${seed} to reproduce)`);
  let a = seed >>> 0;
  return {
    seed,
    next: () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    },
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` every 50 ms until it returns true (or `limitMs` passes: returns false). */
export async function waitFor(probe: () => Promise<boolean> | boolean, limitMs = 60_000): Promise<boolean> {
  const end = Date.now() + limitMs;
  while (Date.now() < end) {
    if (await probe()) return true;
    await sleep(50);
  }
  return false;
}
