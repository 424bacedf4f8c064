/**
 * `coffer rekey` with the permissions docs/iam.md names (Ceph RGW bucket policy for a user that
 * does not own the bucket): List, Get (which also covers the UploadPartCopy source), Put,
 * PutObjectTagging, AbortMultipartUpload, and no DeleteObject. The server-side copy works under
 * it; `--delete-old` is refused with exit 4 naming the missing permission, after the replacement
 * was committed (the old backup stays whole).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { errorLine, runCoffer, s3Env, writeIdentityFile } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { listAllKeys, putBucketPolicy } from '../harness/rgw.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';

const f = useFixture({ name: 'rekey-access', s3: true, db: { fixture: 'empty', fillMB: 12 } });
let repo: string;
let old: BackupManifest;
let b: { identityFile: string; recipient: string };

beforeAll(async () => {
  b = await writeIdentityFile(f.tmp, 'b.txt');
  repo = f.repo('acc');
  await putBucketPolicy(f.s3, f.bucket, {
    Version: '2012-10-17',
    Statement: [
      { Sid: 'list', Effect: 'Allow', Principal: { AWS: ['arn:aws:iam:::user/other'] }, Action: ['s3:ListBucket'], Resource: [`arn:aws:s3:::${f.bucket}`] },
      {
        Sid: 'rekey',
        Effect: 'Allow',
        Principal: { AWS: ['arn:aws:iam:::user/other'] },
        Action: ['s3:GetObject', 's3:PutObject', 's3:PutObjectTagging', 's3:AbortMultipartUpload'],
        Resource: [`arn:aws:s3:::${f.bucket}/*`],
      },
      { Sid: 'nodelete', Effect: 'Deny', Principal: { AWS: ['arn:aws:iam:::user/other'] }, Action: ['s3:DeleteObject'], Resource: [`arn:aws:s3:::${f.bucket}/*`] },
    ],
  });
  // Uploaded by the same user: RGW 16 checks an UploadPartCopy's source against the object's ACL
  // (its owner) and not only the bucket policy — measured: a source uploaded by another user was
  // refused (403) although the policy allows s3:GetObject.
  old = await f.backup(repo, f.db, [], f.env(s3Env(f.rgw!, 'other')));
}, 300_000);

describe('coffer rekey with the rekey statement of docs/iam.md', () => {
  it('copies server-side, commits the replacement, and refuses --delete-old without s3:DeleteObject (exit 4)', async () => {
    expect(old.dump.size).toBeGreaterThan(10 * 1024 * 1024);
    const env = f.env(s3Env(f.rgw!, 'other'));
    const r = await runCoffer(['rekey', '--from', repo, '--db', f.db, '--add-recipient', b.recipient, '-i', f.identityFile, '--delete-old', '--json'], { env });
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/access denied.*--delete-old needs s3:DeleteObject/);
    const keys = await listAllKeys(f.s3, f.bucket, 'acc/');
    // The old backup is whole (its manifest was the first delete, refused), and so is the replacement.
    expect(keys).toContain(`acc/${old.dump.key}`);
    expect(keys).toContain(`acc/${old.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json')}`);
    const list = await runCoffer(['list', '--from', repo, '--db', f.db, '--json'], { env });
    expect(list.code, list.stderr).toBe(0);
    const rows = JSON.parse(list.stdout) as Array<{ id: string; replaces: string | null; size: number }>;
    expect(rows).toHaveLength(1);
    expect(rows[0]!.replaces).toBe(old.id);
    // Server-copied: the header padded to 5 MiB plus the old payload.
    expect(rows[0]!.size).toBeGreaterThan(old.dump.size + 5 * 1024 * 1024 - 1024);
  }, 300_000);
});
