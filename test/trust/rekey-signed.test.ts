/**
 * `coffer rekey` of signed backups (issue #17 items 1-3 together), on a file repository with the
 * real CLI and PostgreSQL:
 * - with --signing-key the replacement is signed and chained: `restore latest --trusted-signers`
 *   restores it with the new identity, `list --verify-signatures` is clean;
 * - with --delete-old, the replaced manifest that a later backup names as its predecessor is gone,
 *   and that is not a chain break (the trusted replacement vouches for it), at every position of a
 *   chain of three;
 * - a replacement forged with the writer's powers (an unsigned manifest that claims to replace
 *   the genuine backup) does not hide it: latest restores the genuine backup;
 * - a rekey of a signed backup without --signing-key warns, and trusted restores keep using the
 *   original; with --delete-old it is refused before anything is written.
 */
import * as fsp from 'node:fs/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { generateIdentity } from '../../src/crypto/age.js';
import { runCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';

const f = useFixture({ name: 'rekey-signed', db: 'empty' });
let keyFile: string;
let trusted: string;
let b: { file: string; recipient: string };

beforeAll(async () => {
  keyFile = f.path('signing.key');
  const r = await runCoffer(['keygen', '--signing', '--out', keyFile], { env: f.env() });
  expect(r.code, r.stderr).toBe(0);
  trusted = f.path('allowed_signers');
  await fsp.writeFile(trusted, `${r.stdout.trim().split('\n')[1]!}\n`);
  const id = await generateIdentity();
  b = { file: f.path('b.txt'), recipient: id.recipient };
  await fsp.writeFile(b.file, id.fileText, { mode: 0o600 });
});

let lastSecond = 0;
/** A signed daily backup of the fixture's database holding marker `v`. */
async function backup(repo: string, v: number): Promise<BackupManifest> {
  while (Math.floor(Date.now() / 1000) <= lastSecond) await new Promise((r) => setTimeout(r, 50));
  await f.pg.psql(`CREATE TABLE IF NOT EXISTS marker (v int); TRUNCATE marker; INSERT INTO marker VALUES (${v});`, f.db);
  const m = await f.backup(repo, f.db, ['--tier', 'daily', '--signing-key', keyFile]);
  lastSecond = Math.floor(Date.parse(m.startedAt) / 1000);
  return m;
}

async function rekey(repo: string, id: string, extra: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return runCoffer(['rekey', '--from', repo, '--db', f.db, '--backup', id, '--add-recipient', b.recipient, '--remove-recipient', f.recipient, '-i', f.identityFile, ...extra], { env: f.env() });
}

/** Restores latest with trusted signers and identity `identity`; the marker restored. */
async function restoreLatest(repo: string, identity: string): Promise<{ code: number; stderr: string; marker?: string }> {
  const target = f.dropAtEnd(`${f.db}_r${Math.random().toString(16).slice(2, 8)}`);
  const r = await runCoffer(['restore', '--from', repo, '--identity', identity, '--target-db', target, '--trusted-signers', trusted], { env: f.env() });
  if (r.code !== 0) return r;
  return { ...r, marker: (await f.pg.psql('SELECT v FROM marker', target)).trim() };
}

async function verifiedList(repo: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return runCoffer(['list', '--from', repo, '--verify-signatures', '--trusted-signers', trusted, '--json'], { env: f.env() });
}

describe('rekey of signed backups', () => {
  it('--signing-key: the replacement is signed and chained; latest restores it with the new identity; the listing is clean', async () => {
    const repo = f.path('signed-rekey');
    await backup(repo, 1);
    const m2 = await backup(repo, 2);
    const r = await rekey(repo, m2.id, ['--signing-key', keyFile]);
    expect(r.code, r.stderr).toBe(0);
    const restored = await restoreLatest(repo, b.file);
    expect(restored.code, restored.stderr).toBe(0);
    expect(restored.marker).toBe('2');
    const l = await verifiedList(repo);
    expect(l.code, l.stderr).toBe(0);
    const rows = JSON.parse(l.stdout) as Array<{ id: string; replaces: string | null; signature: { state: string } }>;
    expect(rows.map((x) => x.signature.state)).toEqual(['ok', 'ok']);
    expect(rows.find((x) => x.replaces === m2.id)).toBeDefined();
    // The old identity no longer opens the latest backup.
    expect((await restoreLatest(repo, f.identityFile)).code).toBe(5);
  });

  it('--delete-old of a backup a later one chains to is no chain break, at every position of a chain of three', async () => {
    for (let pos = 0; pos < 3; pos++) {
      const repo = f.path(`delete-old-${pos}`);
      const ms = [await backup(repo, 10), await backup(repo, 11), await backup(repo, 12)];
      const r = await rekey(repo, ms[pos]!.id, ['--signing-key', keyFile, '--delete-old']);
      expect(r.code, `position ${pos}: ${r.stderr}`).toBe(0);
      // Nothing of the deleted backup is left: manifest, objects and its signature sidecar.
      const left = (await fsp.readdir(repo, { recursive: true })).filter((p) => p.split('/').pop()!.startsWith(`${ms[pos]!.id}.`));
      expect(left, `position ${pos}`).toEqual([]);
      // verify --backup all reads every listed backup: the two not rekeyed need identity A, the replacement B.
      const v = await runCoffer(['verify', '--from', repo, '--identity', f.identityFile, '--identity', b.file, '--backup', 'all', '--trusted-signers', trusted], { env: f.env() });
      expect(v.code, `position ${pos}: ${v.stderr}`).toBe(0);
      const l = await verifiedList(repo);
      expect(l.code, `position ${pos}: ${l.stderr}`).toBe(0);
      expect(l.stderr).not.toMatch(/chain broken/);
      expect(v.stderr).not.toMatch(/chain broken/);
      const restored = await restoreLatest(repo, pos === 2 ? b.file : f.identityFile);
      expect(restored.code, `position ${pos}: ${restored.stderr}`).toBe(0);
      expect(restored.marker).toBe('12');
    }
  });

  it('--delete-old of a signed backup without --signing-key is refused before anything is written', async () => {
    const repo = f.path('delete-old-unsigned');
    await backup(repo, 30);
    const m = await backup(repo, 31);
    const before = (await fsp.readdir(repo, { recursive: true })).sort();
    const r = await rekey(repo, m.id, ['--delete-old']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/is signed: --delete-old without --signing-key would leave only an unsigned replacement/);
    expect((await fsp.readdir(repo, { recursive: true })).sort()).toEqual(before);
    const restored = await restoreLatest(repo, f.identityFile);
    expect(restored.code, restored.stderr).toBe(0);
    expect(restored.marker).toBe('31');
  });

  it('a replacement forged with the writer\'s powers does not hide the genuine backup', async () => {
    const repo = f.path('forged-replacement');
    await backup(repo, 20);
    const genuine = await backup(repo, 21);
    // The writer's powers: rekey without a signing key writes an unsigned replacement (as anyone
    // with write access and the old identity, or a manifest written by hand, could).
    const r = await rekey(repo, genuine.id, []);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/is signed, but no --signing-key was given/);
    const restored = await restoreLatest(repo, f.identityFile);
    expect(restored.code, restored.stderr).toBe(0);
    expect(restored.marker).toBe('21');
    expect(restored.stderr).toMatch(/unsigned manifest/);
    const l = await verifiedList(repo);
    expect(l.code).toBe(5);
    const rows = JSON.parse(l.stdout) as Array<{ id: string; signature: { state: string } }>;
    // The genuine backup stays listed (an untrusted replacement does not hide it).
    expect(rows.find((x) => x.id === genuine.id)?.signature.state).toBe('ok');
    expect(rows.find((x) => x.id !== genuine.id && x.signature.state === 'unsigned')).toBeDefined();
  });
});


describe('a signed backup copied in from another repository (same signing key, same database name)', () => {
  // prod holds two signed backups; staging (another repository, the same host's key) one or two
  // newer ones, copied into prod file by file under the same names, as a writer could.
  for (const staged of [1, 2]) {
    it(`${staged === 1 ? 'one copied backup' : 'a copied chain of two'}: list --verify-signatures, verify and restore latest refuse (chain broken, exit 5)`, async () => {
      const prod = f.path(`replay-prod-${staged}`);
      const staging = f.path(`replay-staging-${staged}`);
      await backup(prod, 40);
      await backup(prod, 41);
      const copied: BackupManifest[] = [];
      for (let i = 0; i < staged; i++) copied.push(await backup(staging, 50 + i));
      await fsp.cp(staging, prod, { recursive: true });
      const l = await verifiedList(prod);
      expect(l.code, l.stderr).toBe(5);
      const rows = JSON.parse(l.stdout) as Array<{ id: string; signature: { state: string } }>;
      expect(rows.find((x) => x.id === copied[0]!.id)?.signature.state).toBe('chain-broken');
      expect(l.stderr).toMatch(new RegExp(`chain broken: ${f.db}/${copied[0]!.id} names no previous manifest, but the older signed backup ${f.db}/\\S+ is in this repository`));
      const v = await runCoffer(['verify', '--from', prod, '--identity', f.identityFile, '--backup', 'latest', '--trusted-signers', trusted], { env: f.env() });
      expect(v.code, v.stderr).toBe(5);
      expect(v.stderr).toMatch(/names no previous manifest/);
      const restored = await restoreLatest(prod, f.identityFile);
      expect(restored.code, restored.stderr).toBe(5);
      expect(restored.stderr).toMatch(/names no previous manifest/);
      expect(restored.marker).toBeUndefined();
    });
  }

  it('the same backups in their own repository are trusted (the first signed backup names no predecessor)', async () => {
    const staging = f.path('replay-staging-alone');
    await backup(staging, 60);
    await backup(staging, 61);
    const l = await verifiedList(staging);
    expect(l.code, l.stderr).toBe(0);
    const restored = await restoreLatest(staging, f.identityFile);
    expect(restored.code, restored.stderr).toBe(0);
    expect(restored.marker).toBe('61');
  });
});
