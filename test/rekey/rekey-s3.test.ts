/**
 * `coffer rekey` on S3 (Ceph RGW, through a counting proxy), against real PostgreSQL, age and
 * pg_restore: a backup of a database with one large incompressible table between small ones
 * (≥ 100 MB stored: twenty times the 1 MB bound, and the payload one copy range as at 200 MB;
 * ~1 GB, five ranges, with COFFER_TEST_REKEY_MB=1024), encrypted to A, rekeyed to B.
 *
 * - The payload never passes through coffer: every body byte between coffer and RGW (both
 *   directions, all requests) but the new padded header is under 1 MB; the dump's payload is
 *   composed by UploadPartCopy (requests with a copy source and no body).
 * - B restores it (data equal to the source), selectively too (the rekeyed archive index);
 *   A cannot (exit 5); `age -d -i B` gives the same plaintext as `age -d -i A` of the old object;
 *   the old object is untouched; `list` shows the backup once, as the replacement.
 * - --dry-run writes nothing; a change leaving no recipient, and an identity that is not a
 *   recipient, are refused (exit 2, exit 5) before anything is written.
 */
import { HeadObjectCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { beforeAll, describe, expect, it } from 'vitest';
import { dataFingerprint, dropDatabase, fillLargeTable, listDatabases, type Fingerprint } from '../harness/pg.js';
import { errorLine, runCoffer, writeIdentityFile } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { listAllKeys } from '../harness/rgw.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import type { RekeyResult } from '../../src/pipeline/rekey.js';
import { S3Store } from '../../src/store/s3/store.js';

const MB = Number(process.env.COFFER_TEST_REKEY_MB ?? 100);
const f = useFixture({ name: 'rekey-s3', s3: true, db: 'empty' });
const pg = f.pg;

let repo: string;
let old: BackupManifest;
let source: Fingerprint;
let b: { identityFile: string; recipient: string };
let oldHead: { etag?: string; size?: number; modified?: Date };

async function keys(): Promise<string[]> {
  return (await listAllKeys(f.s3, f.bucket, 'rekey/')).sort();
}

async function headOld(): Promise<{ etag?: string; size?: number; modified?: Date }> {
  const h = await f.s3.send(new HeadObjectCommand({ Bucket: f.bucket, Key: `rekey/${old.dump.key}` }));
  return { etag: h.ETag, size: h.ContentLength, modified: h.LastModified };
}

async function download(key: string, file: string): Promise<void> {
  const o = await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: `rekey/${key}` }));
  await pipeline(o.Body as Readable, createWriteStream(file));
}

/** sha256 of `age -d -i identity file` (streamed, the plaintext never stored). */
function plaintextSha(identity: string, file: string): string {
  const r = spawnSync('bash', ['-c', 'set -o pipefail; age -d -i "$1" "$2" | sha256sum', 'bash', identity, file], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.split(' ')[0]!;
}

beforeAll(async () => {
  await pg.psql(
    `CREATE TABLE a_small (id int PRIMARY KEY, v text);
     INSERT INTO a_small SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
     CREATE TABLE z_small (id int PRIMARY KEY, v text);
     INSERT INTO z_small SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 5000) g;`,
    f.db,
  );
  // Incompressible rows: the dump's hex compresses back to about MB megabytes.
  await fillLargeTable(pg, f.db, MB);
  source = await dataFingerprint(pg, f.db);
  b = await writeIdentityFile(f.tmp, 'b.txt');
  repo = f.repo('rekey');
  old = await f.backup(repo, f.db);
  expect(old.index).toBeDefined();
  oldHead = await headOld();
}, 900_000);

function rekey(args: string[], env = f.env()) {
  return runCoffer(['rekey', '--from', repo, '--db', f.db, ...args], { env });
}

describe('coffer rekey (S3)', () => {
  it('the stored object is large', () => {
    expect(old.dump.size).toBeGreaterThan(MB * 1024 * 1024 * 0.9);
  });

  it('--dry-run names the change and writes nothing', async () => {
    const before = await keys();
    const r = await rekey(['--add-recipient', b.recipient, '--remove-recipient', f.recipient, '-i', f.identityFile, '--dry-run', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout) as RekeyResult;
    expect(res.dryRun).toBe(true);
    expect(res.items).toHaveLength(1);
    expect(res.items[0]).toMatchObject({ id: old.id, action: 'rekey', before: [f.recipient], after: [b.recipient] });
    expect(await keys()).toEqual(before);
  });

  it('refuses a change that leaves no recipient, and an identity that cannot unwrap, writing nothing', async () => {
    const before = await keys();
    const none = await rekey(['--remove-recipient', f.recipient, '-i', f.identityFile]);
    expect(none.code).toBe(2);
    expect(errorLine(none.stderr)).toMatch(/no recipient/);
    const wrong = await rekey(['--add-recipient', b.recipient, '-i', b.identityFile]);
    expect(wrong.code).toBe(5);
    expect(errorLine(wrong.stderr)).toMatch(/cannot unwrap the file key/);
    expect(await keys()).toEqual(before);
  });

  let result: RekeyResult;
  let fresh: BackupManifest;
  it('rekeys A → B server-side: under 1 MB of body bytes through coffer besides the padded header', async () => {
    const proxy = await f.faultProxy();
    const t0 = Date.now();
    const r = await rekey(['--add-recipient', b.recipient, '--remove-recipient', f.recipient, '-i', f.identityFile, '--json'], f.env({}, proxy.endpoint));
    const seconds = (Date.now() - t0) / 1000;
    expect(r.code, r.stderr).toBe(0);
    result = JSON.parse(r.stdout) as RekeyResult;
    const item = result.items[0]!;
    expect(item.action).toBe('rekey');
    const dump = item.objects.find((o) => o.what === 'dump')!;
    expect(dump.method).toBe('server-copy');
    expect(dump.headerBytes).toBeGreaterThanOrEqual(5 * 1024 * 1024);
    const sent = proxy.events.reduce((n, e) => n + (e.requestBytes ?? 0), 0);
    const received = proxy.events.reduce((n, e) => n + e.responseBytes, 0);
    const copies = proxy.events.filter((e) => e.copySource !== undefined);
    // The payload went by UploadPartCopy: no body, a copy source naming the old dump.
    expect(copies.length).toBeGreaterThan(0);
    expect(copies.every((e) => (e.requestBytes ?? 0) === 0 && e.copySource!.endsWith(old.dump.key.split('/').map(encodeURIComponent).join('/')))).toBe(true);
    expect(dump.copiedBytes).toBe(old.dump.size - dump.oldHeaderBytes);
    const besidesHeader = sent + received - dump.headerBytes;
    console.log(`rekey of a ${(old.dump.size / 1e6).toFixed(1)} MB object: ${seconds.toFixed(1)} s; bodies sent ${sent} B, received ${received} B; new header ${dump.headerBytes} B (padding ${dump.padBytes} B); everything else ${besidesHeader} B; ${copies.length} UploadPartCopy requests, ${proxy.events.length} requests`);
    expect(besidesHeader).toBeLessThan(1_000_000);
    const got = await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: `rekey/${item.newManifestKey}` }));
    fresh = JSON.parse(await got.Body!.transformToString()) as BackupManifest;
    expect(fresh.replaces).toMatchObject({ id: old.id, manifestKey: old.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json') });
    expect(fresh.encryption.recipients).toEqual([b.recipient]);
    expect(fresh.startedAt).toBe(old.startedAt);
    expect(fresh.tier).toBe(old.tier);
    expect(fresh.dump.sha256Bytes).toBe(dump.headerBytes + 16);
    expect(fresh.dump.size).toBe(dump.headerBytes + dump.copiedBytes);
    expect(fresh.id.slice(0, 16)).toBe(old.id.slice(0, 16));
    expect(fresh.id > old.id).toBe(true);
  }, 600_000);

  it('the old object is untouched, and still a manifest; list shows the backup once, as the replacement', async () => {
    expect(await headOld()).toEqual(oldHead);
    const all = await keys();
    expect(all).toContain(`rekey/${old.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json')}`);
    const r = await runCoffer(['list', '--from', repo, '--db', f.db, '--json'], { env: f.env() });
    expect(r.code, r.stderr).toBe(0);
    const rows = JSON.parse(r.stdout) as Array<{ id: string; replaces: string | null }>;
    expect(rows).toEqual([expect.objectContaining({ id: fresh.id, replaces: old.id })]);
    const text = await runCoffer(['list', '--from', repo, '--db', f.db], { env: f.env() });
    expect(text.stdout).toMatch(/rekeyed: replaces/);
    expect(text.stdout).toMatch(/1 backup replaced by coffer rekey not shown/);
  });

  it('age -d -i B reads the new object, and its plaintext is the old one\'s (age -d -i A)', async () => {
    const newFile = f.path('new.age');
    const oldFile = f.path('old.age');
    await download(fresh.dump.key, newFile);
    await download(old.dump.key, oldFile);
    expect(plaintextSha(b.identityFile, newFile)).toBe(plaintextSha(f.identityFile, oldFile));
    const a = spawnSync('age', ['-d', '-i', f.identityFile, '-o', '/dev/null', newFile], { encoding: 'utf8' });
    expect(a.status).not.toBe(0);
    expect(a.stderr).toMatch(/no identity matched/);
  }, 300_000);

  it('B restores the latest backup (the replacement): the data equals the source; A cannot (exit 5, nothing created)', async () => {
    const target = f.dropAtEnd(`${f.db}_b`);
    const r = await runCoffer(['restore', '--from', repo, '--db', f.db, '--identity', b.identityFile, '--target-db', target, '--json'], { env: f.env() });
    expect(r.code, r.stderr).toBe(0);
    expect(await dataFingerprint(pg, target)).toEqual(source);
    await dropDatabase(pg, target);
    const ta = `${f.db}_a`;
    const a = await runCoffer(['restore', '--from', repo, '--db', f.db, '--identity', f.identityFile, '--target-db', ta], { env: f.env() });
    expect(a.code).toBe(5);
    expect(errorLine(a.stderr)).toMatch(/no identity matches/);
    expect((await listDatabases(pg)).filter((d) => d.startsWith(ta))).toEqual([]);
  }, 600_000);

  it('a selective restore of the rekeyed backup still reads only its table (the index was rekeyed and points at the new header)', async () => {
    const target = f.dropAtEnd(`${f.db}_z`);
    const r = await runCoffer(['restore', '--from', repo, '--db', f.db, '--identity', b.identityFile, '--target-db', target, '--table', 'z_small', '--json'], { env: f.env() });
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout) as { selection: { download: { bytes: number } | 'whole' } };
    if (s.selection.download === 'whole') throw new Error('downloaded whole');
    // The padded header (5 MiB) is read once, then only the table's chunks.
    expect(s.selection.download.bytes).toBeLessThan(fresh.dump.sha256Bytes! + 0.05 * fresh.dump.size);
    expect(await dataFingerprint(pg, target)).toEqual({ 'public.z_small': source['public.z_small'] });
  }, 300_000);

  it('rekeying the replacement again (add C with B\'s identity): its padded header is read by the length its manifest gives, and still no payload passes', async () => {
    const c = await writeIdentityFile(f.tmp, 'c.txt');
    const proxy = await f.faultProxy();
    const r = await rekey(['--add-recipient', c.recipient, '-i', b.identityFile, '--json'], f.env({}, proxy.endpoint));
    expect(r.code, r.stderr).toBe(0);
    const item = (JSON.parse(r.stdout) as RekeyResult).items[0]!;
    expect(item.id).toBe(fresh.id);
    expect(item.after).toEqual([b.recipient, c.recipient]);
    const dump = item.objects.find((o) => o.what === 'dump')!;
    expect(dump.oldHeaderBytes).toBe(fresh.dump.sha256Bytes! - 16);
    const sent = proxy.events.reduce((n, e) => n + (e.requestBytes ?? 0), 0);
    const received = proxy.events.reduce((n, e) => n + e.responseBytes, 0);
    const other = sent + received - dump.headerBytes - (dump.oldHeaderBytes + 16);
    console.log(`second rekey: bodies sent ${sent} B, received ${received} B; old padded header read ${dump.oldHeaderBytes + 16} B, new header ${dump.headerBytes} B; everything else ${other} B`);
    expect(other).toBeLessThan(1_000_000);
    // C reads the newest object with the standard tool.
    const m = JSON.parse(await (await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: `rekey/${item.newManifestKey}` }))).Body!.transformToString()) as BackupManifest;
    const file = f.path('third.age');
    await download(m.dump.key, file);
    expect(plaintextSha(c.identityFile, file)).toBe(plaintextSha(b.identityFile, file));
  }, 600_000);

  it('rekeying the replaced backup by its id is refused (rekey the replacement)', async () => {
    const r = await rekey(['--backup', old.id, '--add-recipient', f.recipient, '-i', f.identityFile]);
    expect(r.code).toBe(2);
    expect(errorLine(r.stderr)).toMatch(/already replaced by/);
  });

  // Last: it replaces the rekeyed object in the bucket.
  it('a changed byte in the rekeyed object\'s head (its payload nonce) fails the restore (exit 5, nothing created)', async () => {
    const head = Buffer.from(await (await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: `rekey/${fresh.dump.key}`, Range: `bytes=0-${fresh.dump.sha256Bytes! - 1}` }))).Body!.transformToByteArray());
    expect(createHash('sha256').update(head).digest('hex')).toBe(fresh.dump.sha256);
    head[head.length - 3]! ^= 0x01;
    const rgw = f.rgw!;
    const store = new S3Store({ bucket: f.bucket, prefix: 'rekey', endpoint: rgw.endpoint, region: rgw.region, credentials: rgw.admin });
    try {
      await store.putComposed(fresh.dump.key, head, { signal: AbortSignal.timeout(120_000), source: { key: old.dump.key, start: result.items[0]!.objects[0]!.oldHeaderBytes + 16, end: old.dump.size } });
    } finally {
      store.close();
    }
    const target = `${f.db}_bad`;
    const r = await runCoffer(['restore', '--from', repo, '--db', f.db, '--backup', fresh.id, '--identity', b.identityFile, '--target-db', target], { env: f.env() });
    expect(r.code).toBe(5);
    expect(errorLine(r.stderr)).toMatch(/authentication failed|sha256 of the backup object's header/);
    expect((await listDatabases(pg)).filter((d) => d.startsWith(target))).toEqual([]);
  }, 300_000);
});
