/**
 * `--object-lock-mode` into a bucket created without object lock (RGW answers the upload with
 * "400 InvalidRequest: UnknownError"): one line that says the bucket has no object lock and what
 * to do, exit 4, nothing listed. The refused upload swept over a small dump (one PutObject), a
 * dump of several parts (CreateMultipartUpload) and a rekey (server-side composition).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { errorLine, writeIdentityFile } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { listAllKeys } from '../harness/rgw.js';

const f = useFixture({ name: 'lockless', s3: true, db: 'vault' });
let big: string;

beforeAll(async () => {
  big = await f.database({ fixture: 'vault', prefix: 'lockless_big', fillMB: 12 });
});

function expectLockless(r: { code: number; stderr: string }, what: string): void {
  expect(r.code, `${what}: ${r.stderr}`).toBe(4);
  const line = errorLine(r.stderr);
  expect(line, what).toMatch(/the bucket s3:\/\/\S+ has no object lock, so --object-lock-mode cannot be applied/);
  expect(line, what).toMatch(/coffer init .*--create-bucket --object-lock/);
  expect(line, what).toMatch(/drop --object-lock-mode/);
  expect(line, what).not.toMatch(/UnknownError \(HTTP 400\)$/);
}

describe('--object-lock-mode on a bucket without object lock', () => {
  for (const [what, db, args] of [
    ['a small dump (one PutObject)', () => f.db, []],
    ['a dump of several parts (multipart upload)', () => big, ['--compress', 'none', '--part-size', '5MiB']],
  ] as const) {
    it(`backup, ${what}: says the bucket has no object lock; exit 4, nothing stored`, async () => {
      const prefix = `lk-${Math.random().toString(36).slice(2, 8)}`;
      for (const mode of ['governance', 'compliance']) {
        const r = await f.run(['backup', '--to', f.repo(prefix), '--db', db(), '--recipient', f.recipient, '--object-lock-mode', mode, ...args]);
        expectLockless(r, `${what} ${mode}`);
      }
      expect(await listAllKeys(f.s3, f.bucket, `${prefix}/`)).toEqual([]);
    });
  }

  it('rekey --object-lock-mode: the same line', async () => {
    const repo = f.repo('lk-rekey');
    await f.backup(repo, f.db);
    const other = await writeIdentityFile(f.tmp, 'other.txt');
    const r = await f.run(['rekey', '--from', repo, '--db', f.db, '-i', f.identityFile, '--add-recipient', other.recipient, '--object-lock-mode', 'governance']);
    expectLockless(r, 'rekey');
  });
});
