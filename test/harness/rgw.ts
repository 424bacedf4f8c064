/**
 * Throwaway Ceph RADOS Gateway (a real S3 server) for tests and benchmarks.
 *
 * startRgw() runs scripts/rgw-up.sh in a fresh temp dir (single-node cluster: mon, one BlueStore
 * OSD in a sparse file, radosgw on 127.0.0.1 with free ports) and stop() runs scripts/rgw-down.sh.
 * Several servers can run side by side (own dirs and ports). See
 * /work/shared/notes/s3-test-server.md for what RGW 16 supports and its quirks.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CreateBucketCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutBucketPolicyCommand,
  PutBucketVersioningCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { execa } from 'execa';

export interface S3Keys {
  accessKeyId: string;
  secretAccessKey: string;
}

export interface RgwServer {
  endpoint: string;
  region: string;
  /** The cluster's directory (conf, data, logs under log/); removed by stop(). */
  dir: string;
  /** Keys of the S3 user `coffer-admin`. */
  admin: S3Keys;
  /** Keys of each user asked for in startRgw({ users }), by uid. */
  users: Record<string, S3Keys>;
  /** Stops the daemons and removes dir. Idempotent. */
  stop(): Promise<void>;
}

const SCRIPTS = fileURLToPath(new URL('../../scripts/', import.meta.url));
const UP = join(SCRIPTS, 'rgw-up.sh');
const DOWN = join(SCRIPTS, 'rgw-down.sh');

// Directories of servers still running, stopped best-effort when the process exits.
const live = new Set<string>();
let exitHookInstalled = false;

function stopSync(dir: string): void {
  spawnSync('bash', [DOWN, dir], { stdio: 'ignore', timeout: 30_000 });
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const dir of live) stopSync(dir);
    live.clear();
  });
  // A signal's default action skips 'exit' handlers. Only take over signals nobody else
  // handles (a test runner may have its own); clean up, then, if still nobody else handles the
  // signal, die of it as the default action would have.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    if (process.listenerCount(sig) > 0) continue;
    const onSignal = (): void => {
      for (const dir of live) stopSync(dir);
      live.clear();
      process.removeListener(sig, onSignal);
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

/**
 * A detached shell that stops the cluster if this process dies without cleaning up (SIGKILL,
 * crash); it exits by itself once dir is gone (normal stop()).
 */
function startWatchdog(dir: string): void {
  const script =
    'P=$1; D=$2; DOWN=$3; while kill -0 "$P" 2>/dev/null; do [ -d "$D" ] || exit 0; sleep 1; done; ' +
    '[ -d "$D" ] && exec bash "$DOWN" "$D"';
  const child = spawn('bash', ['-c', script, 'coffer-rgw-watchdog', String(process.pid), dir, DOWN], {
    detached: true,
    stdio: 'ignore',
  });
  child.on('error', () => {});
  child.unref();
}

function envName(user: string): string {
  return user.toUpperCase().replace(/[^A-Z0-9]/g, '_');
}

function tail(text: string, lines: number): string {
  return text.split('\n').slice(-lines).join('\n');
}

/**
 * Starts a throwaway RGW via scripts/rgw-up.sh in a fresh temp dir (mkdtemp under os.tmpdir());
 * stop() runs rgw-down.sh. Also registers process exit cleanup best-effort (an 'exit' hook, and a
 * detached watchdog that stops the cluster if this process is killed outright).
 * Users get random keys; the S3 user `coffer-admin` always exists (keys in `admin`).
 * Env: RGW_OSD_SIZE_GB (sparse OSD file size, default 10), COFFER_RGW_VERBOSE=1 (echo the
 * bring-up log to stderr).
 */
export async function startRgw(opts: { users?: string[] } = {}): Promise<RgwServer> {
  try {
    return await startOnce(opts.users ?? []);
  } catch (e) {
    // One retry: two clusters starting at the same moment can (rarely) pick the same free port.
    if (/missing binaries|bad user name|must not contain/.test(String(e))) throw e;
    return await startOnce(opts.users ?? []);
  }
}

async function startOnce(users: string[]): Promise<RgwServer> {
  // Admin sockets live in the dir: keep its path short (unix socket paths max 107 bytes).
  const base = tmpdir().length <= 40 ? tmpdir() : '/tmp';
  const dir = await mkdtemp(join(base, 'coffer-rgw-'));
  installExitHook();
  live.add(dir);
  startWatchdog(dir);
  const res = await execa('bash', [UP, dir], {
    env: { RGW_USERS: users.join(' ') },
    reject: false,
    timeout: 150_000,
    stdin: 'ignore',
    stderr: process.env.COFFER_RGW_VERBOSE ? ['pipe', 'inherit'] : 'pipe',
  });
  if (res.exitCode !== 0 || res.failed) {
    const why = res.timedOut ? 'timed out' : `failed (exit code ${res.exitCode ?? res.signal})`;
    await execa('bash', [DOWN, dir], { reject: false, stdin: 'ignore', timeout: 60_000 });
    await rm(dir, { recursive: true, force: true }).catch(() => {});
    live.delete(dir);
    throw new Error(`scripts/rgw-up.sh ${why}:\n${tail(String(res.stderr ?? ''), 80)}`);
  }
  const vars: Record<string, string> = {};
  for (const line of String(res.stdout).split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (m) vars[m[1]!] = m[2]!;
  }
  const need = (k: string): string => {
    const v = vars[k];
    if (!v) throw new Error(`scripts/rgw-up.sh did not print ${k}; stdout was:\n${res.stdout}`);
    return v;
  };
  let stopped: Promise<void> | undefined;
  try {
    return {
      endpoint: need('RGW_ENDPOINT'),
      region: need('RGW_REGION'),
      dir,
      admin: { accessKeyId: need('RGW_ADMIN_ACCESS_KEY'), secretAccessKey: need('RGW_ADMIN_SECRET_KEY') },
      users: Object.fromEntries(
        users.map((u) => [
          u,
          {
            accessKeyId: need(`RGW_USER_${envName(u)}_ACCESS_KEY`),
            secretAccessKey: need(`RGW_USER_${envName(u)}_SECRET_KEY`),
          },
        ]),
      ),
      stop() {
        stopped ??= (async () => {
          await execa('bash', [DOWN, dir], { reject: false, stdin: 'ignore', timeout: 60_000 });
          live.delete(dir);
        })();
        return stopped;
      },
    };
  } catch (e) {
    stopSync(dir);
    live.delete(dir);
    throw e;
  }
}

/**
 * An S3Client configured the way coffer will: forcePathStyle, region, endpoint,
 * requestChecksumCalculation/responseChecksumValidation 'WHEN_REQUIRED' (RGW 16 answers 411 to
 * the SDK's default aws-chunked uploads with trailing checksums).
 */
export function s3ClientFor(info: { endpoint: string; region: string }, keys: S3Keys): S3Client {
  return new S3Client({
    endpoint: info.endpoint,
    region: info.region,
    forcePathStyle: true,
    credentials: { accessKeyId: keys.accessKeyId, secretAccessKey: keys.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

/**
 * Runs RGW's own lifecycle engine over one bucket now (`radosgw-admin lc process --bucket`, as
 * the gateway's `client.rgw.a` so `rgw lc debug interval` applies), instead of waiting for the
 * gateway's lifecycle thread: over the many buckets with rules a test run makes, that thread's
 * pass took from 20 s to over 6 minutes. The pass does nothing while that thread holds the
 * bucket's shard or is processing the bucket (for up to 2 lifecycle days): call it again.
 * Returns undefined when radosgw-admin succeeded, else what it said.
 */
export async function processLifecycle(dir: string, bucket: string): Promise<string | undefined> {
  const res = await execa(
    'radosgw-admin',
    ['-c', join(dir, 'ceph.conf'), '-n', 'client.rgw.a', '--admin-socket=', 'lc', 'process', '--bucket', bucket],
    { reject: false, stdin: 'ignore', timeout: 60_000 },
  );
  if (res.exitCode === 0 && !res.failed) return undefined;
  return `radosgw-admin lc process --bucket ${bucket} ${res.timedOut ? 'timed out' : `exit ${res.exitCode}`}: ${tail(String(res.stderr), 5)}`;
}

/** A unique, valid bucket name: `<prefix>-<time>-<random>`. */
export function uniqueBucketName(prefix = 'coffer-test'): string {
  return `${prefix}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`.toLowerCase().slice(0, 63);
}

/**
 * Creates a bucket (unique name by default) and returns its name. objectLock creates it with
 * object lock enabled (which implies versioning); versioning enables versioning.
 */
export async function createTestBucket(
  client: S3Client,
  name?: string,
  opts: { objectLock?: boolean; versioning?: boolean } = {},
): Promise<string> {
  const bucket = name ?? uniqueBucketName();
  await client.send(
    new CreateBucketCommand({ Bucket: bucket, ...(opts.objectLock ? { ObjectLockEnabledForBucket: true } : {}) }),
  );
  if (opts.versioning && !opts.objectLock) {
    await client.send(
      new PutBucketVersioningCommand({ Bucket: bucket, VersioningConfiguration: { Status: 'Enabled' } }),
    );
  }
  return bucket;
}

/** All keys in bucket (under prefix), following ListObjectsV2 pagination, in listing order. */
export async function listAllKeys(client: S3Client, bucket: string, prefix?: string): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await client.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
    );
    for (const o of page.Contents ?? []) if (o.Key !== undefined) keys.push(o.Key);
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return keys;
}

/** All in-progress multipart uploads in bucket (under prefix), following pagination. */
export async function listMultipartUploads(
  client: S3Client,
  bucket: string,
  prefix?: string,
): Promise<{ key: string; uploadId: string }[]> {
  const out: { key: string; uploadId: string }[] = [];
  let keyMarker: string | undefined;
  let uploadIdMarker: string | undefined;
  for (;;) {
    const page = await client.send(
      new ListMultipartUploadsCommand({
        Bucket: bucket,
        Prefix: prefix,
        KeyMarker: keyMarker,
        UploadIdMarker: uploadIdMarker,
      }),
    );
    for (const u of page.Uploads ?? []) {
      if (u.Key !== undefined && u.UploadId !== undefined) out.push({ key: u.Key, uploadId: u.UploadId });
    }
    if (!page.IsTruncated) return out;
    keyMarker = page.NextKeyMarker;
    uploadIdMarker = page.NextUploadIdMarker;
    if (!keyMarker && !uploadIdMarker) return out;
  }
}

/**
 * Sets a bucket policy (an IAM policy document object). RGW principals look like
 * `arn:aws:iam:::user/<uid>`, resources like `arn:aws:s3:::<bucket>/*`.
 */
export async function putBucketPolicy(client: S3Client, bucket: string, policy: object): Promise<void> {
  await client.send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: JSON.stringify(policy) }));
}
