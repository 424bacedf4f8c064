/**
 * A backup whose dump object is gone (deleted, or expired by a lifecycle rule before its
 * manifest): restore, selective restore, verify and drill say "the dump object of backup X is
 * missing (deleted or expired?)" with the way out (another backup, --backup ID), exit 4 —
 * both with full rights (S3 answers NoSuchKey) and as the documented reader (minio/
 * coffer-reader.json as a bucket policy on RGW: ListBucket under the prefix only, so a GET of a
 * missing key is 403 AccessDenied). A reader denied the object itself still gets "access denied".
 */
import * as fsp from 'node:fs/promises';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { errorLine, runCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { listDatabases } from '../harness/pg.js';
import { putBucketPolicy } from '../harness/rgw.js';

const f = useFixture({ name: 'nodump', s3: true, db: 'vault' });
const PREFIX = 'backups';
let repo: string;
let intact: BackupManifest;
let gone: BackupManifest;

async function readerPolicy(extra: object[] = []): Promise<void> {
  const text = (await fsp.readFile(new URL('../../minio/coffer-reader.json', import.meta.url), 'utf8')).replaceAll('arn:aws:s3:::coffer', `arn:aws:s3:::${f.bucket}`);
  const doc = JSON.parse(text) as { Statement: object[] };
  await putBucketPolicy(f.s3, f.bucket, {
    Version: '2012-10-17',
    Statement: [...doc.Statement.map((s, i) => ({ ...s, Sid: `reader${i}`, Principal: { AWS: ['arn:aws:iam:::user/reader'] } })), ...extra],
  });
}

beforeAll(async () => {
  repo = f.repo(PREFIX);
  intact = await f.backup(repo, f.db);
  await new Promise((r) => setTimeout(r, 1100));
  gone = await f.backup(repo, f.db);
  await f.s3.send(new DeleteObjectCommand({ Bucket: f.bucket, Key: `${PREFIX}/${gone.dump.key}` }));
  await readerPolicy();
});

const COMMANDS: Array<[string, (target: string) => string[]]> = [
  ['restore (the newest backup, chosen)', (t) => ['restore', '--from', repo, '--db', f.db, '--identity', f.identityFile, '--target-db', t]],
  ['restore --backup ID', (t) => ['restore', '--from', repo, '--backup', gone.id, '--identity', f.identityFile, '--target-db', t]],
  ['selective restore (--table: ranged reads)', (t) => ['restore', '--from', repo, '--backup', gone.id, '--identity', f.identityFile, '--target-db', t, '--table', 'accounts']],
  ['verify --backup ID', () => ['verify', '--from', repo, '--backup', gone.id, '--identity', f.identityFile]],
  ['drill', () => ['drill', '--from', repo, '--db', f.db, '--identity', f.identityFile]],
];

describe('a backup whose dump object is missing', () => {
  for (const [as, user] of [
    ['full rights (NoSuchKey)', undefined],
    ['the documented reader policy (403 for a missing key)', 'reader'],
  ] as const) {
    it(`${as}: restore, selective restore, verify, drill say the dump is missing; exit 4, nothing created`, async () => {
      const before = await listDatabases(f.pg);
      const env = f.env(user ? { AWS_ACCESS_KEY_ID: f.rgw!.users[user]!.accessKeyId, AWS_SECRET_ACCESS_KEY: f.rgw!.users[user]!.secretAccessKey } : {});
      for (const [what, args] of COMMANDS) {
        const r = await runCoffer(args(`nodump_${Math.random().toString(36).slice(2, 8)}`), { env });
        expect(r.code, `${what}: ${r.stderr}`).toBe(4);
        const line = errorLine(r.stderr);
        expect(line, what).toMatch(new RegExp(`the dump object of backup ${gone.id} is missing \\(deleted or expired\\?\\)`));
        expect(line, what).toMatch(/--backup ID/);
        expect(line, what).not.toMatch(/access denied/);
      }
      // Only this file's targets: other files create databases in the shared cluster meanwhile.
      expect((await listDatabases(f.pg)).filter((d) => !before.includes(d) && d.startsWith('nodump_'))).toEqual([]);
      // The intact backup restores as the reader too.
      const ok = await runCoffer(['verify', '--from', repo, '--backup', intact.id, '--identity', f.identityFile], { env });
      expect(ok.code, ok.stderr).toBe(0);
    });
  }

  it('a reader denied an object that exists still gets "access denied"', async () => {
    await readerPolicy([{ Sid: 'denyDump', Effect: 'Deny', Principal: { AWS: ['arn:aws:iam:::user/reader'] }, Action: ['s3:GetObject'], Resource: [`arn:aws:s3:::${f.bucket}/${PREFIX}/${intact.dump.key}`] }]);
    try {
      const env = f.env({ AWS_ACCESS_KEY_ID: f.rgw!.users.reader!.accessKeyId, AWS_SECRET_ACCESS_KEY: f.rgw!.users.reader!.secretAccessKey });
      const r = await runCoffer(['verify', '--from', repo, '--backup', intact.id, '--identity', f.identityFile], { env });
      expect(r.code, r.stderr).toBe(4);
      expect(errorLine(r.stderr)).toMatch(/access denied/);
      expect(errorLine(r.stderr)).not.toMatch(/missing/);
    } finally {
      await readerPolicy();
    }
  });
});
