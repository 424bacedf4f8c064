/**
 * Least privilege and object lock against a real S3 server (Ceph RGW): the shipped policies in
 * minio/ are applied as a bucket policy for the RGW users "writer" and "reader"; the bucket is
 * set up by `coffer init --create-bucket --object-lock governance`.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  GetObjectRetentionCommand,
  GetObjectTaggingCommand,
  HeadObjectCommand,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDatabase, dataFingerprint, dropDatabase, pgFromInject } from '../harness/pg.js';
import { putBucketPolicy, s3ClientFor, uniqueBucketName } from '../harness/rgw.js';
import { baseEnv, errorLine, pgEnv, runCoffer, s3Env, writeIdentityFile } from '../harness/cli.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { S3Store } from '../../src/store/s3/store.js';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';

const rgwInfo = inject('rgw')!;
const pgInfo = inject('pg')!;
const pg = pgFromInject(pgInfo);
const MINIO_DIR = new URL('../../minio/', import.meta.url);
const PREFIX = 'backups';

let tmp: string;
let identityFile: string;
let recipient: string;
let admin: S3Client;
let writer: S3Client;
let reader: S3Client;
let bucket: string;
let db: string;
let manifest: BackupManifest;
let backupStarted: number;
let backupEnded: number;

/** A shipped IAM policy (minio/<role>.json) turned into bucket-policy statements for `user`. */
async function statementsFor(role: string, user: string): Promise<object[]> {
  const text = (await fsp.readFile(new URL(`coffer-${role}.json`, MINIO_DIR), 'utf8'))
    .replaceAll('arn:aws:s3:::coffer', `arn:aws:s3:::${bucket}`)
    .replaceAll('"backups/*"', `"${PREFIX}/*"`);
  const doc = JSON.parse(text) as { Statement: object[] };
  return doc.Statement.map((s, i) => ({ ...s, Sid: `${role}${i}`, Principal: { AWS: [`arn:aws:iam:::user/${user}`] } }));
}

function env(user?: string): Record<string, string> {
  return baseEnv({ ...pgEnv(pgInfo), ...s3Env(rgwInfo, user) });
}

/** HTTP status of a request: 200 when it succeeded. */
async function statusOf(request: () => Promise<unknown>): Promise<number | undefined> {
  try {
    await request();
    return 200;
  } catch (err) {
    return (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  }
}

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-access-test-'));
  ({ identityFile, recipient } = await writeIdentityFile(tmp));
  admin = s3ClientFor(rgwInfo, rgwInfo.admin);
  writer = s3ClientFor(rgwInfo, rgwInfo.users.writer!);
  reader = s3ClientFor(rgwInfo, rgwInfo.users.reader!);
  bucket = uniqueBucketName('coffer-access');
  db = await createDatabase(pg, undefined, 'vault');

  const init = await runCoffer(['init', '--to', `s3://${bucket}/${PREFIX}`, '--create-bucket', '--object-lock', 'governance', '--keep-daily', '1d'], { env: env() });
  expect(init.code, init.stderr).toBe(0);
  expect(init.stdout).toContain('with object lock (governance)');
  await putBucketPolicy(admin, bucket, {
    Version: '2012-10-17',
    Statement: [
      ...(await statementsFor('writer', 'writer')),
      ...(await statementsFor('reader', 'reader')),
      // Test plumbing: on RGW an object belongs to its uploader, so the bucket owner needs a grant
      // to inspect (and, for the lock test, try to delete) the writer's objects.
      {
        Sid: 'testadmin',
        Effect: 'Allow',
        Principal: { AWS: ['arn:aws:iam:::user/coffer-admin'] },
        Action: ['s3:GetObject', 's3:GetObjectVersion', 's3:GetObjectRetention', 's3:GetObjectTagging', 's3:DeleteObject', 's3:DeleteObjectVersion', 's3:BypassGovernanceRetention'],
        Resource: [`arn:aws:s3:::${bucket}/*`],
      },
    ],
  });

  backupStarted = Date.now();
  const r = await runCoffer(
    ['backup', '--to', `s3://${bucket}/${PREFIX}`, '--db', db, '--recipient', recipient, '--object-lock-mode', 'governance', '--keep-monthly', '40d', '--json'],
    { env: env('writer') },
  );
  backupEnded = Date.now();
  expect(r.code, r.stderr).toBe(0);
  manifest = (JSON.parse(r.stdout) as BackupManifest[])[0]!;
});

afterAll(async () => {
  admin?.destroy();
  writer?.destroy();
  reader?.destroy();
  await dropDatabase(pg, db).catch(() => undefined);
  await fsp.rm(tmp, { recursive: true, force: true });
});

describe('writer role (minio/coffer-writer.json)', () => {
  it('backs up with object lock: every object retained for its tier and tagged', async () => {
    expect(manifest.tier).toBe('monthly'); // the first backup of this database in this month
    const manifestKey = `${PREFIX}/${manifest.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json')}`;
    for (const key of [`${PREFIX}/${manifest.dump.key}`, manifestKey]) {
      const ret = await admin.send(new GetObjectRetentionCommand({ Bucket: bucket, Key: key }));
      expect(ret.Retention?.Mode).toBe('GOVERNANCE');
      const until = ret.Retention!.RetainUntilDate!.getTime();
      // --keep-monthly 40d: retained 40 days from the backup's start (second precision).
      expect(until).toBeGreaterThanOrEqual(backupStarted - 1000 + 40 * 86_400_000);
      expect(until).toBeLessThanOrEqual(backupEnded + 1000 + 40 * 86_400_000);
      const tags = await admin.send(new GetObjectTaggingCommand({ Bucket: bucket, Key: key }));
      expect(tags.TagSet).toEqual([{ Key: 'coffer-tier', Value: 'monthly' }]);
    }
  });

  it('cannot read or delete backups', async () => {
    const key = `${PREFIX}/${manifest.dump.key}`;
    expect(await statusOf(() => writer.send(new GetObjectCommand({ Bucket: bucket, Key: key })))).toBe(403);
    expect(await statusOf(() => writer.send(new HeadObjectCommand({ Bucket: bucket, Key: key })))).toBe(403);
    expect(await statusOf(() => writer.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })))).toBe(403);
    // Outside the repository prefix it cannot even write.
    expect(await statusOf(() => writer.send(new PutObjectCommand({ Bucket: bucket, Key: 'elsewhere/x', Body: 'x' })))).toBe(403);
    // `coffer verify` as the writer fails with a storage error (exit 4), not a crash.
    const v = await runCoffer(['verify', '--from', `s3://${bucket}/${PREFIX}`, '--identity', identityFile], { env: env('writer') });
    expect(v.code, v.stderr).toBe(4);
    expect(errorLine(v.stderr)).toMatch(/access denied/);
  });
});

describe('reader role (minio/coffer-reader.json)', () => {
  it('verifies and restores, but cannot write or delete', async () => {
    const from = `s3://${bucket}/${PREFIX}`;
    const v = await runCoffer(['verify', '--from', from, '--identity', identityFile], { env: env('reader') });
    expect(v.code, v.stderr).toBe(0);
    const target = `${db}_rr`;
    const r = await runCoffer(['restore', '--from', from, '--identity', identityFile, '--target-db', target], { env: env('reader') });
    expect(r.code, r.stderr).toBe(0);
    expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, db));
    await dropDatabase(pg, target);

    const key = `${PREFIX}/${manifest.dump.key}`;
    expect(await statusOf(() => reader.send(new PutObjectCommand({ Bucket: bucket, Key: `${PREFIX}/x/daily/new.bin`, Body: 'x' })))).toBe(403);
    expect(await statusOf(() => reader.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })))).toBe(403);
    // A backup as the reader fails cleanly (exit 4) and leaves nothing behind.
    const b = await runCoffer(['backup', '--to', from, '--db', db, '--recipient', recipient], { env: env('reader') });
    expect(b.code, b.stderr).toBe(4);
  });

  it('coffer report: the reader sees the backups but not the bucket configuration (a note says so); the admin sees the retention checked against the policy, and drift', async () => {
    const from = `s3://${bucket}/${PREFIX}`;
    interface Report {
      retention: Array<{ checked: boolean; drift: string[]; note?: string }>;
      databases: Array<{ database: string; backups: unknown[] }>;
    }
    const asReader = await runCoffer(['report', '--from', from, '--keep-daily', '1d'], { env: env('reader') });
    expect(asReader.code, asReader.stderr).toBe(0);
    const r = JSON.parse(asReader.stdout) as Report;
    expect(r.databases.map((d) => d.database)).toEqual([db]);
    expect(r.retention).toEqual([{ repository: from, checked: false, drift: [], note: "not checked: these credentials may not read the bucket's configuration (coffer retention check with the admin's)" }]);
    // The admin's credentials: the lifecycle coffer init wrote matches the policy it was given, and not another.
    const same = JSON.parse((await runCoffer(['report', '--from', from, '--keep-daily', '1d'], { env: env() })).stdout) as Report;
    expect(same.retention[0]).toMatchObject({ checked: true, drift: [] });
    const other = await runCoffer(['report', '--from', from, '--keep-daily', '30d', '--html', path.join(tmp, 'drift.html'), '--json'], { env: env() });
    expect(other.code, other.stderr).toBe(0);
    const drift = (JSON.parse(other.stdout) as Report).retention[0]!;
    expect(drift.checked).toBe(true);
    expect(drift.drift.join('\n')).toMatch(/lifecycle rule .*daily.* differs/);
    const html = await fsp.readFile(path.join(tmp, 'drift.html'), 'utf8');
    expect(html).toContain('DRIFT');
  });

  it('refuses an identity file readable by others (mode 0644), with the fix', async () => {
    const loose = path.join(tmp, 'loose-identity.txt');
    await fsp.copyFile(identityFile, loose);
    await fsp.chmod(loose, 0o644);
    const v = await runCoffer(['verify', '--from', `s3://${bucket}/${PREFIX}`, '--identity', loose], { env: env('reader') });
    expect(v.code, v.stderr).toBe(2);
    expect(errorLine(v.stderr)).toContain(`chmod 600 ${loose}`);
  });
});

describe('object lock', () => {
  it("a backup's object version cannot be deleted before its retention date (403), even by the owner", async () => {
    const key = `${PREFIX}/${manifest.dump.key}`;
    const head = await admin.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    expect(head.VersionId).toBeTruthy();
    expect(await statusOf(() => admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: key, VersionId: head.VersionId })))).toBe(403);
    expect((await admin.send(new HeadObjectCommand({ Bucket: bucket, Key: key, VersionId: head.VersionId }))).ContentLength).toBe(manifest.dump.size);
    // The 403 is the lock, not a missing permission: the same request bypassing governance passes.
    const bypass = await statusOf(() => admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: key, VersionId: head.VersionId, BypassGovernanceRetention: true })));
    expect([200, 204]).toContain(bypass);
  });

  it('with a retention of seconds: refused before the date, allowed after it', async () => {
    const store = new S3Store({ bucket, prefix: PREFIX, endpoint: rgwInfo.endpoint, region: rgwInfo.region, credentials: rgwInfo.admin });
    try {
      const retainUntil = new Date(Date.now() + 4000);
      await store.putBytes('short/lock.bin', Buffer.from('locked'), { retention: { mode: 'GOVERNANCE', retainUntil } });
      const key = `${PREFIX}/short/lock.bin`;
      const { VersionId } = await admin.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      expect(await statusOf(() => admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: key, VersionId })))).toBe(403);
      // Poll (bounded) until the retention date has passed and the delete goes through.
      let status: number | undefined;
      for (let i = 0; i < 40 && status !== 204 && status !== 200; i++) {
        await new Promise((r) => setTimeout(r, 500));
        if (Date.now() <= retainUntil.getTime()) continue;
        status = await statusOf(() => admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: key, VersionId })));
      }
      expect([200, 204]).toContain(status);
    } finally {
      store.close();
    }
  });

  it('uploads with retention carry a Content-MD5 on every request with a body (AWS requires it; RGW verifies it)', async () => {
    const store = new S3Store({ bucket, prefix: PREFIX, endpoint: rgwInfo.endpoint, region: rgwInfo.region, credentials: rgwInfo.admin });
    const seen: Array<{ command: string; md5: string | undefined; bodyMd5: string | undefined }> = [];
    store.client.middlewareStack.add(
      (next, context) => async (args) => {
        const req = args.request as { headers: Record<string, string>; body?: unknown };
        const body = req.body instanceof Uint8Array ? createHash('md5').update(req.body).digest('base64') : undefined;
        seen.push({ command: String(context.commandName), md5: req.headers['content-md5'], bodyMd5: body });
        return next(args);
      },
      { step: 'finalizeRequest', name: 'recordContentMd5' },
    );
    try {
      const retention = { mode: 'GOVERNANCE' as const, retainUntil: new Date(Date.now() + 60_000) };
      const data = Buffer.alloc(11 * 1024 * 1024, 7);
      await store.putStream('md5/multi.bin', Readable.from([data]), { signal: new AbortController().signal, partSize: 5 * 1024 * 1024, retention });
      await store.putBytes('md5/manifest.json', Buffer.from('{}'), { retention });
    } finally {
      store.close();
    }
    const uploads = seen.filter((s) => s.command === 'UploadPartCommand' || s.command === 'PutObjectCommand');
    expect(uploads.map((s) => s.command)).toEqual(['UploadPartCommand', 'UploadPartCommand', 'UploadPartCommand', 'PutObjectCommand']);
    for (const u of uploads) expect(u.md5, u.command).toBe(u.bodyMd5);
  });
});
