/**
 * Damaged backups and a full disk: a flipped byte, a truncated object, a swapped manifest and a
 * wrong key are each detected with exit 5 and nothing restored; a spool that runs out of space
 * fails clearly with the target untouched and the spool removed.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { CopyObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { errorLine, runCoffer, startCoffer } from '../harness/cli.js';
import { startFaultProxy, type FaultProxy } from '../harness/fault-proxy.js';
import { createDatabase, databaseExists, dropDatabase, fillLargeTable, listDatabases, pgFromInject, uniqueDbName } from '../harness/pg.js';
import { generateIdentity } from '../../src/crypto/age.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { backupOk, listedIds, setupFixture, waitFor, type Fixture } from './common.js';
import { record, writeResults } from './matrix.js';

const rgwInfo = inject('rgw')!;
const pgInfo = inject('pg')!;
const pg = pgFromInject(pgInfo);

let f: Fixture;
let source: string;
const proxies: FaultProxy[] = [];
const repo = (prefix: string): string => `s3://${f.bucket}/${prefix}`;

beforeAll(async () => {
  f = await setupFixture(rgwInfo, pgInfo, 'integ');
  source = await createDatabase(pg, uniqueDbName('integ'), 'varied');
  await fillLargeTable(pg, source, 3);
});

afterAll(async () => {
  await Promise.all(proxies.map((p) => p.stop()));
  await dropDatabase(pg, source);
  f?.s3.destroy();
  if (f) await fsp.rm(f.tmp, { recursive: true, force: true });
  writeResults('integrity');
});

async function objectBytes(key: string): Promise<Buffer> {
  const out = await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: key }));
  return Buffer.from(await out.Body!.transformToByteArray());
}

/** Restores `selector` of `prefix` into a fresh name; asserts exit 5 and that nothing was restored. */
async function expectRejected(prefix: string, selector: string, identityFile = f.identityFile): Promise<string> {
  const target = uniqueDbName('integ_never');
  const r = await runCoffer(['restore', '--from', repo(prefix), '--db', source, '--backup', selector, '--identity', identityFile, '--target-db', target], { env: f.env() });
  expect(r.code, r.stderr).toBe(5);
  // Neither the target nor a scratch database of it exists (other tests run concurrently).
  expect((await listDatabases(pg)).filter((d) => d.startsWith(target))).toEqual([]);
  return errorLine(r.stderr);
}

describe.concurrent('damaged or mismatched backups: detected, nothing restored, exit 5', () => {
  it('one flipped byte in the stored object', async () => {
    const m = await backupOk(f, repo('flip'), source, ['--compress', 'none']);
    const key = `flip/${m.dump.key}`;
    const bytes = await objectBytes(key);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
    await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: key, Body: bytes }));
    expect(await expectRejected('flip', m.id)).toMatch(/sha256|authentication failed/);
    record({ id: 'itg-01', area: 'integrity', fault: 'one flipped bit in the middle of the stored object', injected: 'object rewritten in the bucket with one bit flipped', outcome: 'detected (sha256 / age authentication); exit 5; no database created, scratch dropped', dataLost: 'none' });
  });

  it('a truncated object', async () => {
    const m = await backupOk(f, repo('trunc'), source, ['--compress', 'none']);
    const key = `trunc/${m.dump.key}`;
    const bytes = await objectBytes(key);
    await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: key, Body: bytes.subarray(0, Math.floor(bytes.length * 0.6)) }));
    expect(await expectRejected('trunc', m.id)).toMatch(/has \d+ bytes but its manifest says \d+/);
    record({ id: 'itg-02', area: 'integrity', fault: 'truncated object', injected: 'object rewritten in the bucket with its first 60 %', outcome: 'detected before any database is created (size differs from the manifest); exit 5', dataLost: 'none' });
  });

  it('a swapped manifest (the manifest of another backup under this id) is refused by restore and skipped by list', async () => {
    const a = await backupOk(f, repo('swap'), source);
    const b = await backupOk(f, repo('swap'), source);
    const aKey = `swap/${a.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json')}`;
    const bKey = `swap/${b.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json')}`;
    await f.s3.send(new CopyObjectCommand({ Bucket: f.bucket, Key: aKey, CopySource: `${f.bucket}/${bKey}` }));
    expect(await expectRejected('swap', a.id)).toMatch(/describes another backup/);
    const list = await runCoffer(['list', '--from', repo('swap'), '--json'], { env: f.env() });
    expect(list.code, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as Array<{ id: string }>).map((x) => x.id)).toEqual([b.id]);
    expect(list.stderr).toMatch(/skipping an unreadable manifest/);
    record({ id: 'itg-03', area: 'integrity', fault: 'swapped manifest', injected: "manifest of backup B copied over backup A's manifest key", outcome: 'restore of A: exit 5 "describes another backup"; list skips A with a warning and shows B', dataLost: 'none' });
  });

  it('a wrong identity', async () => {
    const m = await backupOk(f, repo('wrongkey'), source);
    const other = await generateIdentity();
    const otherFile = path.join(f.tmp, 'other-identity.txt');
    await fsp.writeFile(otherFile, other.fileText, { mode: 0o600 });
    expect(await expectRejected('wrongkey', m.id, otherFile)).toMatch(/no identity matches/);
    record({ id: 'itg-04', area: 'integrity', fault: 'wrong key', injected: 'restore with an identity that is not a recipient of the backup', outcome: 'refused at the age header, before any database is created; exit 5', dataLost: 'none' });
  });
});

describe('disk full', () => {
  it('the spool of a --jobs restore runs out of space: clear error, target untouched, spool removed', async () => {
    const m = await backupOk(f, repo('spool'), source, ['--compress', 'none']);
    const mnt = await fsp.mkdtemp(path.join(f.tmp, 'tmpfs-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${Math.ceil((m.dump.dumpBytes * 1.5) / 1024)}k`, 'tmpfs', mnt]);
    const p = await startFaultProxy(rgwInfo.endpoint);
    proxies.push(p);
    // The first GET of the object goes silent after 1 MiB (resumed after the 2 s --s3-timeout):
    // meanwhile another writer fills the filesystem, as a neighbour on a shared /tmp would.
    p.script([{ op: 'GetObject', path: /\.dump\.age$/, fault: { kind: 'stall-response', afterBytes: 1 << 20 } }]);
    try {
      const target = uniqueDbName('integ_spool');
      const child = startCoffer(
        ['restore', '--from', repo('spool'), '--db', source, '--identity', f.identityFile, '--target-db', target, '--jobs', '2', '--spool-dir', mnt, '--s3-timeout', '2s'],
        { env: f.env({}, p.endpoint) },
      );
      const spoolFile = async (): Promise<string | undefined> => {
        for (const d of await fsp.readdir(mnt)) if (d.startsWith('coffer-spool-')) return path.join(mnt, d, 'archive.dump');
        return undefined;
      };
      expect(await waitFor(async () => p.fired(0) === 1 && (await spoolFile()) !== undefined)).toBe(true);
      const st = await fsp.statfs(mnt);
      await fsp.writeFile(path.join(mnt, 'filler'), Buffer.alloc(Number(st.bavail) * Number(st.bsize)).fill(1)).catch(() => undefined);
      const r = await child;
      expect(r.exitCode, String(r.stderr)).toBe(4);
      expect(errorLine(String(r.stderr))).toMatch(/no space left.*--spool-dir/i);
      expect(await databaseExists(pg, target)).toBe(false);
      expect((await listDatabases(pg)).filter((d) => d.startsWith(target))).toEqual([]);
      expect(fs.readdirSync(mnt)).toEqual(['filler']);
      expect(await listedIds(f, repo('spool'))).toEqual([m.id]);
      record({
        id: 'dsk-01',
        area: 'disk',
        fault: 'disk full while spooling a --jobs restore',
        injected: 'spool on a small tmpfs; once spooling began (download held by the proxy) another file filled the filesystem',
        outcome: 'exit 4 "no space left on the spool directory" with a hint; the target never created; the spool directory removed; the backup untouched',
        dataLost: 'none',
      });
    } finally {
      execFileSync('umount', ['-l', mnt]);
      await fsp.rm(mnt, { recursive: true, force: true });
    }
  });
});
