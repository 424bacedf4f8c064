/**
 * Damaged backups and a full disk: a flipped byte, a truncated object, a swapped manifest and a
 * wrong key are each detected with exit 5 and nothing restored; a spool that runs out of space
 * fails clearly with the target untouched and the spool removed.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { CopyObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorLine, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { dropDatabase, listDatabases } from '../harness/pg.js';
import { generateIdentity } from '../../src/crypto/age.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { dataLoss, existingTarget, listedIds, makeGolden, seedRepository, waitFor, type GoldenBackup, type RepoBaseline, type TargetBaseline } from './common.js';
import { record, writeResults, type MatrixRow } from './matrix.js';

const f = useFixture({ name: 'integ', s3: true });
const pg = f.pg;

let source: string;
/** A good backup of `source`, copied into every test's repository before the damage. */
let golden: GoldenBackup;

beforeAll(async () => {
  source = await f.database({ fixture: 'varied', prefix: 'integ', fillMB: 3 });
  golden = await makeGolden(f, pg, 'golden', source);
});

/** Records the row with the measured data loss, then requires it to be none. */
async function recordMeasured(row: Omit<MatrixRow, 'dataLost'>, measure: { repo?: RepoBaseline; targets?: TargetBaseline[] }): Promise<void> {
  const lost = await dataLoss(f, pg, measure);
  record({ ...row, dataLost: lost });
  expect(lost).toBe('none');
  for (const t of measure.targets ?? []) await dropDatabase(pg, t.db);
}

afterAll(() => writeResults('integrity'));

async function objectBytes(key: string): Promise<Buffer> {
  const out = await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: key }));
  return Buffer.from(await out.Body!.transformToByteArray());
}

/**
 * Restores `selector` of `prefix` with --replace onto an existing database with known content;
 * asserts exit 5 and that nothing was restored, renamed aside or left behind.
 */
async function expectRejected(prefix: string, selector: string, identityFile = f.identityFile): Promise<{ error: string; existing: TargetBaseline }> {
  const existing = await existingTarget(pg, 'integ_existing');
  const r = await f.run(['restore', '--from', f.repo(prefix), '--db', source, '--backup', selector, '--identity', identityFile, '--target-db', existing.db, '--replace']);
  expect(r.code, r.stderr).toBe(5);
  // No scratch database, nothing renamed aside (other tests run concurrently).
  expect((await listDatabases(pg)).filter((d) => d.startsWith(existing.db))).toEqual([existing.db]);
  return { error: errorLine(r.stderr), existing };
}

describe.concurrent('damaged or mismatched backups: detected, nothing restored, exit 5', () => {
  it('one flipped byte in the stored object: age authentication fires first (at that chunk, before the whole-object sha256)', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'flip');
    const m = await f.backup(f.repo('flip'), source, ['--compress', 'none']);
    const key = `flip/${m.dump.key}`;
    const bytes = await objectBytes(key);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
    await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: key, Body: bytes }));
    const { error, existing } = await expectRejected('flip', m.id);
    expect(error).toMatch(/^authentication failed at byte offset \d+/);
    await recordMeasured(
      { id: 'itg-01', area: 'integrity', fault: 'one flipped bit in the middle of the stored object', injected: 'object rewritten in the bucket with one bit flipped', outcome: 'detected by age authentication at the damaged 64 KiB chunk ("authentication failed at byte offset N"); exit 5; restore --replace: the existing target untouched, scratch dropped' },
      { repo: baseline, targets: [existing] },
    );
  });

  it('another valid object of the same size swapped in: only the manifest sha256 can tell, and it fires', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'same-size');
    const a = await f.backup(f.repo('same-size'), source, ['--compress', 'none']);
    const b = await f.backup(f.repo('same-size'), source, ['--compress', 'none']);
    // Same database, same recipient, no compression: two valid age files of the same length.
    expect(b.dump.size).toBe(a.dump.size);
    expect(b.dump.sha256).not.toBe(a.dump.sha256);
    await f.s3.send(new CopyObjectCommand({ Bucket: f.bucket, Key: `same-size/${a.dump.key}`, CopySource: `${f.bucket}/same-size/${b.dump.key}` }));
    const { error, existing } = await expectRejected('same-size', a.id);
    expect(error).toMatch(/^sha256 of the backup object does not match its manifest/);
    // The baseline holds the golden backup only (b is intact, a damaged on purpose).
    await recordMeasured(
      { id: 'itg-05', area: 'integrity', fault: 'another valid backup object of the same size swapped in', injected: "backup B's object (same size, decrypts and authenticates with the same key) copied over backup A's object", outcome: 'age decrypts it without complaint; the manifest sha256 check fires at the end of the object ("sha256 of the backup object does not match its manifest"), before pg_restore\'s input ends; exit 5; the existing target untouched' },
      { repo: baseline, targets: [existing] },
    );
  });

  it('a flipped byte with the manifest sha256 rewritten to match: age authentication alone catches it', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'flip-resha');
    const m = await f.backup(f.repo('flip-resha'), source, ['--compress', 'none']);
    const key = `flip-resha/${m.dump.key}`;
    const bytes = await objectBytes(key);
    bytes[bytes.length - 100]! ^= 0x01; // in the final chunk
    await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: key, Body: bytes }));
    const manifestKey = key.replace(/\.dump\.age$/, '.manifest.json');
    const manifest = JSON.parse((await objectBytes(manifestKey)).toString('utf8')) as BackupManifest;
    manifest.dump.sha256 = createHash('sha256').update(bytes).digest('hex');
    await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: manifestKey, Body: JSON.stringify(manifest, null, 2) }));
    const { error, existing } = await expectRejected('flip-resha', m.id);
    expect(error).toMatch(/^authentication failed at byte offset \d+/);
    await recordMeasured(
      { id: 'itg-06', area: 'integrity', fault: 'a flipped bit in the final chunk, the manifest sha256 rewritten to match the damaged object', injected: 'object rewritten with one bit flipped 100 bytes before its end; manifest rewritten with that object\'s sha256', outcome: 'the size and sha256 checks pass; age authentication of the final chunk fires ("authentication failed at byte offset N"); exit 5; the existing target untouched' },
      { repo: baseline, targets: [existing] },
    );
  });

  it('a truncated object', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'trunc');
    const m = await f.backup(f.repo('trunc'), source, ['--compress', 'none']);
    const key = `trunc/${m.dump.key}`;
    const bytes = await objectBytes(key);
    await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: key, Body: bytes.subarray(0, Math.floor(bytes.length * 0.6)) }));
    const { error, existing } = await expectRejected('trunc', m.id);
    expect(error).toMatch(/has \d+ bytes but its manifest says \d+/);
    await recordMeasured(
      { id: 'itg-02', area: 'integrity', fault: 'truncated object', injected: 'object rewritten in the bucket with its first 60 %', outcome: 'detected before any database is created (size differs from the manifest); exit 5; the existing target untouched' },
      { repo: baseline, targets: [existing] },
    );
  });

  it('a swapped manifest (the manifest of another backup under this id) is refused by restore and skipped by list', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'swap');
    const a = await f.backup(f.repo('swap'), source);
    const b = await f.backup(f.repo('swap'), source);
    const aKey = `swap/${a.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json')}`;
    const bKey = `swap/${b.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json')}`;
    await f.s3.send(new CopyObjectCommand({ Bucket: f.bucket, Key: aKey, CopySource: `${f.bucket}/${bKey}` }));
    const { error, existing } = await expectRejected('swap', a.id);
    expect(error).toMatch(/describes another backup/);
    const list = await f.run(['list', '--from', f.repo('swap'), '--json']);
    expect(list.code, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as Array<{ id: string }>).map((x) => x.id).sort()).toEqual([b.id, ...baseline.backups.map((x) => x.id)].sort());
    expect(list.stderr).toMatch(/skipping an unreadable manifest/);
    await recordMeasured(
      { id: 'itg-03', area: 'integrity', fault: 'swapped manifest', injected: "manifest of backup B copied over backup A's manifest key", outcome: 'restore of A: exit 5 "describes another backup"; list skips A with a warning and shows B; the existing target untouched' },
      { repo: baseline, targets: [existing] },
    );
  });

  it('a wrong identity', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'wrongkey');
    const m = await f.backup(f.repo('wrongkey'), source);
    const other = await generateIdentity();
    const otherFile = f.path('other-identity.txt');
    await fsp.writeFile(otherFile, other.fileText, { mode: 0o600 });
    const { error, existing } = await expectRejected('wrongkey', m.id, otherFile);
    expect(error).toMatch(/no identity matches/);
    await recordMeasured(
      { id: 'itg-04', area: 'integrity', fault: 'wrong key', injected: 'restore with an identity that is not a recipient of the backup', outcome: 'refused at the age header, before any database is created; exit 5; the existing target untouched' },
      { repo: baseline, targets: [existing] },
    );
  });
});

describe('disk full', () => {
  it('a local repository, or a restore --output, runs out of space mid-stream: exit 4 with the fix, never "unexpected", nothing that looks like a backup', { timeout: 240_000 }, async () => {
    const m = await f.backup(f.repo('fullsrc'), source, ['--compress', 'none']);
    // Space for a tenth, half, nine tenths of the archive: the disk fills early, midway, late.
    for (const fraction of [0.1, 0.5, 0.9]) {
      const mnt = await fsp.mkdtemp(f.path('tmpfs-'));
      execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${Math.max(64, Math.ceil((m.dump.dumpBytes * fraction) / 1024))}k`, 'tmpfs', mnt]);
      try {
        const repo = path.join(mnt, 'repo');
        const backup = await f.run(['backup', '--to', repo, '--db', source, '--recipient', f.recipient, '--compress', 'none']);
        expect(backup.code, `${fraction}: ${backup.stderr}`).toBe(4);
        expect(errorLine(backup.stderr)).toMatch(/no space left on device.*free disk space/);
        const list = await f.run(['list', '--from', repo, '--json']);
        expect(list.code, list.stderr).toBe(0);
        expect(JSON.parse(list.stdout)).toEqual([]);
        const out = path.join(mnt, 'restored.dump');
        const restore = await f.run(['restore', '--from', f.repo('fullsrc'), '--db', source, '--backup', m.id, '--identity', f.identityFile, '--output', out]);
        expect(restore.code, `${fraction}: ${restore.stderr}`).toBe(4);
        expect(errorLine(restore.stderr)).toMatch(/no space left on device.*free disk space/);
        expect(fs.readdirSync(mnt).filter((n) => n !== 'repo')).toEqual([]);
      } finally {
        execFileSync('umount', ['-l', mnt]);
        await fsp.rm(mnt, { recursive: true, force: true });
      }
    }
  });

  it('the spool of a --jobs restore runs out of space: clear error, target untouched, spool removed', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'spool');
    const m = await f.backup(f.repo('spool'), source, ['--compress', 'none']);
    const mnt = await fsp.mkdtemp(f.path('tmpfs-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${Math.ceil((m.dump.dumpBytes * 1.5) / 1024)}k`, 'tmpfs', mnt]);
    const p = await f.faultProxy();
    // The first GET of the object goes silent after 1 MiB (resumed after the 2 s --s3-timeout):
    // meanwhile another writer fills the filesystem, as a neighbour on a shared /tmp would.
    p.script([{ op: 'GetObject', path: /\.dump\.age$/, fault: { kind: 'stall-response', afterBytes: 1 << 20 } }]);
    try {
      const existing = await existingTarget(pg, 'integ_spool');
      const target = existing.db;
      const child = startCoffer(
        ['restore', '--from', f.repo('spool'), '--db', source, '--backup', m.id, '--identity', f.identityFile, '--target-db', target, '--replace', '--jobs', '2', '--spool-dir', mnt, '--s3-timeout', '2s'],
        { env: f.env({}, p.endpoint) },
      );
      const spoolFile = async (): Promise<string | undefined> => {
        for (const d of await fsp.readdir(mnt)) if (d.startsWith('coffer-spool-')) return path.join(mnt, d, 'archive.dump');
        return undefined;
      };
      expect(await waitFor(async () => p.fired(0) === 1 && (await spoolFile()) !== undefined, 180_000)).toBe(true);
      const st = await fsp.statfs(mnt);
      await fsp.writeFile(path.join(mnt, 'filler'), Buffer.alloc(Number(st.bavail) * Number(st.bsize)).fill(1)).catch(() => undefined);
      const r = await child;
      expect(r.exitCode, String(r.stderr)).toBe(4);
      expect(errorLine(String(r.stderr))).toMatch(/no space left.*--spool-dir/i);
      expect((await listDatabases(pg)).filter((d) => d.startsWith(target))).toEqual([target]);
      expect(fs.readdirSync(mnt)).toEqual(['filler']);
      expect(await listedIds(f, f.repo('spool'))).toEqual([...baseline.backups.map((b) => b.id), m.id].sort());
      await recordMeasured(
        {
          id: 'dsk-01',
          area: 'disk',
          fault: 'disk full while spooling a --jobs restore (--replace onto an existing database)',
          injected: 'spool on a small tmpfs; once spooling began (download held by the proxy) another file filled the filesystem',
          outcome: 'exit 4 "no space left on the spool directory" with a hint; the existing target untouched, nothing renamed aside; the spool directory removed; the backups untouched',
        },
        { repo: baseline, targets: [existing] },
      );
    } finally {
      execFileSync('umount', ['-l', mnt]);
      await fsp.rm(mnt, { recursive: true, force: true });
    }
  });
});
