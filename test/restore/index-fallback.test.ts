/**
 * An archive index that is truncated, lengthened, replaced by another backup's (of another size)
 * or missing is not used: the selective restore says so and downloads the whole backup (README),
 * as for a flipped byte. A store that cannot be read (access denied) still fails the restore.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { errorLine, runCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { dataFingerprint, dropDatabase, listDatabases } from '../harness/pg.js';

const f = useFixture({ name: 'idxfb', s3: true, db: 'empty' });
const pg = f.pg;

let fileRepo: string;
let s3Repo: string;
let fileManifest: BackupManifest;
let s3Manifest: BackupManifest;
/** The index of another backup (another database: another size). */
let otherIndex: Buffer;
let source: Record<string, unknown>;

interface Summary {
  selection: { download: { bytes: number; of: number } | 'whole' };
}

beforeAll(async () => {
  await pg.psql(
    `CREATE TABLE a AS SELECT g, md5(g::text) m FROM generate_series(1, 3000) g;
     CREATE TABLE b AS SELECT g FROM generate_series(1, 10) g;`,
    f.db,
  );
  source = await dataFingerprint(pg, f.db);
  fileRepo = f.path('repo');
  s3Repo = f.repo('idx');
  fileManifest = await f.backup(fileRepo, f.db);
  s3Manifest = await f.backup(s3Repo, f.db);
  const other = await f.database({ prefix: 'idxfb_other' });
  await pg.psql('CREATE TABLE t1 (x int); CREATE TABLE t2 (y text); CREATE TABLE t3 (z int);', other);
  const om = await f.backup(fileRepo, other);
  otherIndex = await fsp.readFile(path.join(fileRepo, om.index!.key));
});

async function restoreB(repo: string, env = f.env()): Promise<{ code: number; stderr: string; download?: Summary['selection']['download']; target: string }> {
  const target = f.dropAtEnd(`${f.db}_r${Math.random().toString(36).slice(2, 8)}`);
  const r = await runCoffer(['restore', '--from', repo, '--db', f.db, '--identity', f.identityFile, '--target-db', target, '--table', 'b', '--json'], { env });
  return { code: r.code, stderr: r.stderr, target, ...(r.code === 0 ? { download: (JSON.parse(r.stdout) as Summary).selection.download } : {}) };
}

async function expectFallback(r: Awaited<ReturnType<typeof restoreB>>, what: string, message: RegExp): Promise<void> {
  expect(r.code, `${what}: ${r.stderr}`).toBe(0);
  expect(r.stderr, what).toMatch(message);
  expect(r.stderr, what).toMatch(/reads the whole backup instead/);
  expect(r.download, what).toBe('whole');
  expect(await dataFingerprint(pg, r.target), what).toEqual({ 'public.b': source['public.b'] });
  await dropDatabase(pg, r.target);
}

describe('a damaged or missing archive index: the selective restore downloads the whole backup', () => {
  it('file repository: truncated to 0, 1, half, size-1 bytes; one byte longer; another backup\'s index; deleted', async () => {
    const file = path.join(fileRepo, fileManifest.index!.key);
    const good = await fsp.readFile(file);
    expect(otherIndex.length).not.toBe(good.length);
    const cases: Array<[string, Buffer | undefined, RegExp]> = [
      ['truncated to 0 bytes', good.subarray(0, 0), /does not match its manifest/],
      ['truncated to 1 byte', good.subarray(0, 1), /does not match its manifest/],
      ['truncated to half', good.subarray(0, good.length >> 1), /does not match its manifest/],
      ['truncated by its last byte', good.subarray(0, good.length - 1), /does not match its manifest/],
      ['one byte longer', Buffer.concat([good, Buffer.from([0])]), /does not match its manifest/],
      ["another backup's index", otherIndex, /does not match its manifest/],
      ['deleted', undefined, /archive index of backup .* is missing/],
    ];
    try {
      for (const [what, bytes, message] of cases) {
        if (bytes) await fsp.writeFile(file, bytes);
        else await fsp.rm(file);
        await expectFallback(await restoreB(fileRepo), what, message);
      }
    } finally {
      await fsp.writeFile(file, good);
    }
  });

  it('S3: truncated, replaced by another backup\'s index, deleted; access denied to it still fails (exit 4)', async () => {
    const key = `idx/${s3Manifest.index!.key}`;
    const got = await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: key }));
    const good = Buffer.from(await got.Body!.transformToByteArray());
    const put = (body: Buffer) => f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: key, Body: body }));
    try {
      await put(good.subarray(0, good.length >> 1));
      await expectFallback(await restoreB(s3Repo), 'S3 truncated', /does not match its manifest/);
      await put(otherIndex);
      await expectFallback(await restoreB(s3Repo), "S3 another backup's index", /does not match its manifest/);
      await f.s3.send(new DeleteObjectCommand({ Bucket: f.bucket, Key: key }));
      await expectFallback(await restoreB(s3Repo), 'S3 deleted', /archive index of backup .* is missing/);
      await put(good);
      // Not "no such object": the restore fails as any unreadable backup does, nothing created.
      const proxy = await f.faultProxy();
      proxy.script([{ op: 'GetObject', path: /\.index\./, times: Infinity, fault: { kind: 'status', status: 403, code: 'AccessDenied' } }]);
      const before = await listDatabases(pg);
      const r = await restoreB(s3Repo, f.env({}, proxy.endpoint));
      expect(r.code, r.stderr).toBe(4);
      expect(errorLine(r.stderr)).toMatch(/access denied/);
      // Only this restore's target (and its scratch): other files create databases in the shared cluster meanwhile.
      expect((await listDatabases(pg)).filter((d) => !before.includes(d) && d.startsWith(r.target))).toEqual([]);
    } finally {
      await put(good);
    }
  });
});
