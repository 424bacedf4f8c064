/**
 * Signed manifests end to end (issue #17 items 1-2), with the real CLI, PostgreSQL and (for one
 * test) Ceph RGW under the least-privilege writer and reader policies:
 * - a backup forged with the writer's powers (no signing key, or another key) is refused by
 *   restore/verify/drill with trusted signers (exit 5, the reason named), and `latest` restores
 *   the genuine previous backup instead;
 * - ssh-keygen -Y verify / check-novalidate accept a stored manifest with the printed
 *   allowed_signers line, and a flipped byte is refused by coffer and ssh-keygen;
 * - the chain: a manifest removed in the middle is reported, at every position of a chain of 4;
 * - the signing key file's mode is checked and the key never appears in the output;
 * - unsigned backups still list and restore without --trusted-signers.
 */
import { execa } from 'execa';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { backupIdTime } from '../../src/catalog/layout.js';
import { MANIFEST_NAMESPACE } from '../../src/trust/sshsig.js';
import { errorLine, runCoffer, s3Env, baseEnv, pgEnv } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { putBucketPolicy } from '../harness/rgw.js';

const f = useFixture({ name: 'signed', s3: true, db: 'empty' });

interface KeyPair {
  file: string;
  /** The allowed_signers line keygen printed. */
  allowed: string;
  principal: string;
  /** The armored private key body lines (what must never be printed). */
  secretLines: string[];
}

let key: KeyPair;
let otherKey: KeyPair;
/** allowed_signers holding `key` only. */
let trusted: string;

async function keygen(name: string): Promise<KeyPair> {
  const file = f.path(name);
  const r = await runCoffer(['keygen', '--signing', '--out', file], { env: f.env() });
  expect(r.code, r.stderr).toBe(0);
  const allowed = r.stdout.trim().split('\n')[1]!;
  const secretLines = (await fsp.readFile(file, 'utf8')).split('\n').filter((l) => l !== '' && !l.startsWith('-----'));
  return { file, allowed, principal: allowed.split(' ')[0]!, secretLines };
}

async function setMarker(v: number): Promise<void> {
  await f.pg.psql(`CREATE TABLE IF NOT EXISTS marker (v int); TRUNCATE marker; INSERT INTO marker VALUES (${v});`, f.db);
}

async function markerOf(db: string): Promise<string> {
  return (await f.pg.psql('SELECT v FROM marker', db)).trim();
}

/** A backup of the fixture's database with marker `v` into `repo`, signed with `signWith` unless undefined. */
let lastBackupSecond = 0;
async function backupWith(repo: string, v: number, signWith: KeyPair | undefined, extra: string[] = [], env = f.env()): Promise<BackupManifest> {
  // Ids order backups by their start second (then a random suffix): a backup starts only in a
  // second after the previous one's start time (its manifest's), so the order is certain.
  while (Math.floor(Date.now() / 1000) <= lastBackupSecond) await new Promise((r) => setTimeout(r, 50));
  await setMarker(v);
  const m = await f.backup(repo, f.db, ['--tier', 'daily', ...(signWith ? ['--signing-key', signWith.file] : []), ...extra], env);
  lastBackupSecond = Math.floor(Date.parse(m.startedAt) / 1000);
  return m;
}

function expectNoSecret(...outputs: string[]): void {
  for (const out of outputs) for (const l of [...key.secretLines, ...otherKey.secretLines]) expect(out).not.toContain(l);
}

/** Restores `selector` of `repo` into a fresh database; the run, and the target's name. */
async function restore(repo: string, selector: string, extra: string[] = [], env = f.env()): Promise<{ code: number; stdout: string; stderr: string; target: string }> {
  const target = f.dropAtEnd(`${f.db}_r${Math.random().toString(16).slice(2, 8)}`);
  const r = await runCoffer(['restore', '--from', repo, '--identity', f.identityFile, '--backup', selector, '--target-db', target, ...extra], { env });
  return { ...r, target };
}

function manifestFile(repoDir: string, m: BackupManifest): string {
  return path.join(repoDir, m.database, m.tier, `${m.id}.manifest.json`);
}

async function sigFileOf(repoDir: string, m: BackupManifest): Promise<string> {
  const dir = path.join(repoDir, m.database, m.tier);
  const sigs = (await fsp.readdir(dir)).filter((n) => n.startsWith(`${m.id}.manifest.json.`) && n.endsWith('.sig'));
  expect(sigs).toHaveLength(1);
  return path.join(dir, sigs[0]!);
}

async function sshKeygen(args: string[], input: Buffer): Promise<number> {
  const r = await execa('/usr/bin/ssh-keygen', args, { reject: false, input });
  return r.exitCode ?? -1;
}

beforeAll(async () => {
  key = await keygen('signing');
  otherKey = await keygen('other-signing');
  trusted = f.path('allowed_signers');
  await fsp.writeFile(trusted, `# restore host's trusted backup hosts\n\n${key.allowed}\n`, { mode: 0o644 });
});

describe('forged backups', () => {
  it('an unsigned or foreign-signed newest backup is refused (exit 5) and latest restores the genuine previous one', async () => {
    const repoDir = f.path('forged');
    const genuine = await backupWith(repoDir, 1, key);
    expect(genuine.previousManifest).toBeUndefined();
    const unsigned = await backupWith(repoDir, 2, undefined);
    const foreign = await backupWith(repoDir, 3, otherKey);
    // A foreign signer chains to the newest signed manifest too; it is still not trusted.
    const tf = ['--trusted-signers', trusted];

    const byId = await restore(repoDir, unsigned.id, tf);
    expect(byId.code, byId.stderr).toBe(5);
    expect(byId.stderr).toContain(`backup ${f.db}/${unsigned.id}: unsigned manifest`);
    const byIdForeign = await restore(repoDir, foreign.id, tf);
    expect(byIdForeign.code, byIdForeign.stderr).toBe(5);
    expect(byIdForeign.stderr).toMatch(new RegExp(`backup ${f.db}/${foreign.id}: signed by an unknown key SHA256:[A-Za-z0-9+/]{43}`));

    const latest = await restore(repoDir, 'latest', tf);
    expect(latest.code, latest.stderr).toBe(0);
    expect(latest.stderr).toContain(`skipping an untrusted backup: backup ${f.db}/${foreign.id}: signed by an unknown key`);
    expect(latest.stderr).toContain(`skipping an untrusted backup: backup ${f.db}/${unsigned.id}: unsigned manifest`);
    expect(await markerOf(latest.target)).toBe('1');
    expect(latest.stderr).not.toContain('origin of the backup is not checked');

    // Through the environment variable, for verify and drill too.
    const env = f.env({ COFFER_TRUSTED_SIGNERS_FILE: trusted });
    const verifyAll = await runCoffer(['verify', '--from', repoDir, '--identity', f.identityFile, '--backup', 'all'], { env });
    expect(verifyAll.code, verifyAll.stderr).toBe(5);
    expect(verifyAll.stderr).toMatch(/unknown key|unsigned manifest/);
    const drill = await runCoffer(['drill', '--from', repoDir, '--identity', f.identityFile, '--backup', unsigned.id], { env });
    expect(drill.code, drill.stderr).toBe(5);
    expect(drill.stderr).toContain('unsigned manifest');
    const verifyLatest = await runCoffer(['verify', '--from', repoDir, '--identity', f.identityFile, '--json'], { env });
    expect(verifyLatest.code, verifyLatest.stderr).toBe(0);
    expect((JSON.parse(verifyLatest.stdout) as Array<{ id: string }>)[0]!.id).toBe(genuine.id);

    // A repository holding only forged backups: latest is refused, naming the newest.
    const onlyForged = f.path('only-forged');
    const forged = await backupWith(onlyForged, 4, undefined);
    const none = await restore(onlyForged, 'latest', tf);
    expect(none.code, none.stderr).toBe(5);
    expect(none.stderr).toContain(`no trusted full backup`);
    expect(none.stderr).toContain(`backup ${f.db}/${forged.id}: unsigned manifest`);

    // list --verify-signatures: a SIGNATURE column, JSON states, exit 5.
    const list = await runCoffer(['list', '--from', repoDir, '--verify-signatures', '--trusted-signers', trusted], { env: f.env() });
    expect(list.code, list.stderr).toBe(5);
    expect(list.stdout).toMatch(/SIGNATURE/);
    expect(list.stdout).toContain(`ok (${key.principal})`);
    const json = await runCoffer(['list', '--from', repoDir, '--verify-signatures', '--json'], { env });
    expect(json.code).toBe(5);
    const rows = JSON.parse(json.stdout) as Array<{ id: string; signature: { state: string } }>;
    expect(Object.fromEntries(rows.map((r) => [r.id, r.signature.state]))).toEqual({ [genuine.id]: 'ok', [unsigned.id]: 'unsigned', [foreign.id]: 'unknown-signer' });
    expectNoSecret(byId.stdout, byId.stderr, latest.stderr, list.stdout, list.stderr);
  });
});

describe('the stored signature', () => {
  it('ssh-keygen -Y verify and check-novalidate accept the stored manifest; a flipped byte is refused by coffer and ssh-keygen', async () => {
    const repoDir = f.path('auditor');
    const m = await backupWith(repoDir, 5, key);
    const mf = manifestFile(repoDir, m);
    const sig = await sigFileOf(repoDir, m);
    const bytes = await fsp.readFile(mf);
    // The sidecar's name carries the sha256 of the manifest's bytes.
    expect(path.basename(sig)).toBe(`${m.id}.manifest.json.${(await import('node:crypto')).createHash('sha256').update(bytes).digest('hex')}.sig`);
    const verifyArgs = ['-Y', 'verify', '-f', trusted, '-I', key.principal, '-n', MANIFEST_NAMESPACE, '-s', sig];
    const novalidate = ['-Y', 'check-novalidate', '-n', MANIFEST_NAMESPACE, '-s', sig];
    expect(await sshKeygen(verifyArgs, bytes)).toBe(0);
    expect(await sshKeygen(novalidate, bytes)).toBe(0);

    // Flip one byte that keeps the JSON valid (a digit of durationMs): only the signature can tell.
    const text = bytes.toString('utf8');
    const at = text.indexOf('"durationMs": ') + '"durationMs": '.length;
    const flipped = Buffer.from(text.slice(0, at) + (text[at] === '1' ? '2' : '1') + text.slice(at + 1));
    expect(flipped.length).toBe(bytes.length);
    expect(await sshKeygen(verifyArgs, flipped)).not.toBe(0);
    expect(await sshKeygen(novalidate, flipped)).not.toBe(0);
    await fsp.chmod(mf, 0o644).catch(() => undefined);
    await fsp.rm(mf);
    await fsp.writeFile(mf, flipped);
    const r = await restore(repoDir, m.id, ['--trusted-signers', trusted]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toContain(`backup ${f.db}/${m.id}: bad signature`);
    // Without trusted signers, the changed manifest is restored (with the warning).
    const unchecked = await restore(repoDir, m.id);
    expect(unchecked.code, unchecked.stderr).toBe(0);
    expect(unchecked.stderr).toContain('the origin of the backup is not checked');
  });
});

describe('the chain', () => {
  it('a manifest removed at each position of a chain of 4 is reported by verify and list when older ones remain; the oldest (expired) is not', async () => {
    const base = f.path('chain');
    const ms: BackupManifest[] = [];
    for (let i = 0; i < 4; i++) ms.push(await backupWith(base, 10 + i, key));
    // Each names the one before, by key and the sha256 of its exact bytes.
    for (let i = 1; i < 4; i++) {
      const prev = ms[i]!.previousManifest!;
      expect(prev.key).toBe(`${f.db}/daily/${ms[i - 1]!.id}.manifest.json`);
      const bytes = await fsp.readFile(manifestFile(base, ms[i - 1]!));
      expect(prev.sha256).toBe((await import('node:crypto')).createHash('sha256').update(bytes).digest('hex'));
    }
    const env = f.env({ COFFER_TRUSTED_SIGNERS_FILE: trusted });
    const whole = await runCoffer(['list', '--from', base, '--verify-signatures'], { env });
    expect(whole.code, whole.stderr).toBe(0);
    for (let pos = 0; pos < 4; pos++) {
      const repo = f.path(`chain-without-${pos}`);
      await fsp.cp(base, repo, { recursive: true });
      await fsp.rm(manifestFile(repo, ms[pos]!));
      const list = await runCoffer(['list', '--from', repo, '--verify-signatures', '--json'], { env });
      const verify = await runCoffer(['verify', '--from', repo, '--identity', f.identityFile], { env });
      if (pos === 1 || pos === 2) {
        // Older backups of its tier are still there: it was removed out of turn.
        const msg = `chain broken: ${f.db}/${ms[pos + 1]!.id} names previous manifest ${f.db}/${ms[pos]!.id} which is missing`;
        expect(list.code, `position ${pos}: ${list.stderr}`).toBe(5);
        expect(list.stderr).toContain(msg);
        const states = (JSON.parse(list.stdout) as Array<{ id: string; signature: { state: string } }>).map((r) => [r.id, r.signature.state]);
        expect(states).toContainEqual([ms[pos + 1]!.id, 'chain-broken']);
        expect(verify.code, `position ${pos}: ${verify.stderr}`).toBe(5);
        expect(verify.stderr).toContain(msg);
      } else {
        // The oldest: expired, as lifecycle rules remove it. The newest: nothing names it yet.
        expect(list.code, `position ${pos}: ${list.stderr}`).toBe(0);
        expect(verify.code, `position ${pos}: ${verify.stderr}`).toBe(0);
      }
    }
    // A predecessor whose bytes changed (same length, still valid JSON) breaks the chain too.
    const repo = f.path('chain-changed');
    await fsp.cp(base, repo, { recursive: true });
    const mf = manifestFile(repo, ms[1]!);
    const text = await fsp.readFile(mf, 'utf8');
    await fsp.rm(mf);
    await fsp.writeFile(mf, text.replace(/"durationMs": (\d)/, (_, d: string) => `"durationMs": ${d === '1' ? '2' : '1'}`));
    const list = await runCoffer(['list', '--from', repo, '--verify-signatures'], { env });
    expect(list.code).toBe(5);
    expect(list.stderr).toContain(`chain broken: ${f.db}/${ms[2]!.id} names previous manifest ${f.db}/${ms[1]!.id} whose bytes no longer match the sha256 it recorded`);
    expect(list.stderr).toContain(`backup ${f.db}/${ms[1]!.id}: bad signature`);

    // A signed manifest copied under another backup's key (replayed): skipped with a warning by a
    // plain list, a problem (exit 5) for --verify-signatures, as for verify and restore.
    const replayed = f.path('chain-replayed');
    await fsp.cp(base, replayed, { recursive: true });
    await fsp.copyFile(manifestFile(replayed, ms[0]!), manifestFile(replayed, ms[1]!));
    const plain = await runCoffer(['list', '--from', replayed], { env });
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stderr).toMatch(/skipping an unreadable manifest: .*describes another backup/);
    const checked = await runCoffer(['list', '--from', replayed, '--verify-signatures'], { env });
    expect(checked.code, checked.stderr).toBe(5);
    expect(errorLine(checked.stderr)).toMatch(/signature, chain or manifest problem\(s\); the first: unreadable manifest .*describes another backup/);
  });
});

describe('the signing key', () => {
  it('is refused when group or others can read it, through the flag or COFFER_SIGNING_KEY_FILE, and never printed', async () => {
    const loose = f.path('loose-key');
    await fsp.copyFile(key.file, loose);
    await fsp.chmod(loose, 0o640);
    const viaFlag = await runCoffer(['backup', '--to', f.path('loose'), '--db', f.db, '--recipient', f.recipient, '--signing-key', loose], { env: f.env() });
    expect(viaFlag.code).toBe(2);
    expect(viaFlag.stderr).toMatch(/signing key .*loose-key is accessible by other users \(mode 0640\); run chmod 600/);
    const viaEnv = await runCoffer(['backup', '--to', f.path('loose'), '--db', f.db, '--recipient', f.recipient], { env: f.env({ COFFER_SIGNING_KEY_FILE: loose }) });
    expect(viaEnv.code).toBe(2);
    expect(viaEnv.stderr).toMatch(/accessible by other users/);
    await expect(fsp.readdir(f.path('loose'))).rejects.toThrow(); // nothing was written
    // A good key through the environment signs; nothing of the key in any output.
    const ok = await runCoffer(['backup', '--to', f.path('env-key'), '--db', f.db, '--recipient', f.recipient, '--tier', 'daily', '--json'], { env: f.env({ COFFER_SIGNING_KEY_FILE: key.file }) });
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stderr).toMatch(/signedBy/);
    // trustedSigners: from the configuration file (the camelCase key of --trusted-signers).
    const config = f.path('coffer.yaml');
    await fsp.writeFile(config, `list:\n  trustedSigners: ${trusted}\n`);
    const list = await runCoffer(['--config', config, 'list', '--from', f.path('env-key'), '--verify-signatures'], { env: f.env() });
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toContain(`ok (${key.principal})`);
    expectNoSecret(viaFlag.stdout, viaFlag.stderr, viaEnv.stdout, viaEnv.stderr, ok.stdout, ok.stderr, list.stdout, list.stderr);
  });
});

describe('unsigned backups without trusted signers', () => {
  it('list and restore as before, restore warning once that the origin is unchecked', async () => {
    const repo = f.path('plain');
    const m = await backupWith(repo, 7, undefined);
    expect(m.previousManifest).toBeUndefined();
    const list = await runCoffer(['list', '--from', repo, '--json'], { env: f.env() });
    expect(list.code, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as Array<{ id: string; signature?: unknown }>)[0]).toMatchObject({ id: m.id });
    expect((JSON.parse(list.stdout) as Array<{ signature?: unknown }>)[0]!.signature).toBeUndefined();
    const r = await restore(repo, 'latest');
    expect(r.code, r.stderr).toBe(0);
    expect(await markerOf(r.target)).toBe('7');
    expect(r.stderr.split('\n').filter((l) => l.includes('the origin of the backup is not checked'))).toHaveLength(1);
    const noTrust = await runCoffer(['list', '--from', repo, '--verify-signatures'], { env: f.env() });
    expect(noTrust.code).toBe(2);
    expect(noTrust.stderr).toContain('--verify-signatures needs --trusted-signers');
  });
});

describe('on S3 (RGW) with the least-privilege writer and reader', () => {
  it('the writer, which cannot read, chains and signs; the reader restores the newest trusted backup past a forged one', async () => {
    // The policies name the prefix backups/ (minio/coffer-*.json).
    const prefix = 'backups';
    const minio = new URL('../../minio/', import.meta.url);
    const statements = async (role: string): Promise<object[]> => {
      const doc = JSON.parse(
        (await fsp.readFile(new URL(`coffer-${role}.json`, minio), 'utf8')).replaceAll('arn:aws:s3:::coffer', `arn:aws:s3:::${f.bucket}`).replaceAll('"backups/*"', `"${prefix}/*"`),
      ) as { Statement: object[] };
      return doc.Statement.map((s, i) => ({ ...s, Sid: `${role}${i}`, Principal: { AWS: [`arn:aws:iam:::user/${role}`] } }));
    };
    await putBucketPolicy(f.s3, f.bucket, { Version: '2012-10-17', Statement: [...(await statements('writer')), ...(await statements('reader'))] });
    const writer = baseEnv({ ...pgEnv(f.pg), ...s3Env(f.rgw!, 'writer') });
    const reader = baseEnv({ ...pgEnv(f.pg), ...s3Env(f.rgw!, 'reader') });
    const repo = f.repo(prefix);
    const first = await backupWith(repo, 21, key, [], writer);
    const second = await backupWith(repo, 22, key, [], writer);
    expect(second.previousManifest?.key).toBe(`${f.db}/daily/${first.id}.manifest.json`);
    const forged = await backupWith(repo, 23, undefined, [], writer);
    const list = await runCoffer(['list', '--from', repo, '--verify-signatures', '--trusted-signers', trusted, '--json'], { env: reader });
    expect(list.code).toBe(5);
    const rows = JSON.parse(list.stdout) as Array<{ id: string; signature: { state: string } }>;
    expect(Object.fromEntries(rows.map((r) => [r.id, r.signature.state]))).toEqual({ [first.id]: 'ok', [second.id]: 'ok', [forged.id]: 'unsigned' });
    const r = await restore(repo, 'latest', ['--trusted-signers', trusted], reader);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`backup ${f.db}/${forged.id}: unsigned manifest`);
    expect(await markerOf(r.target)).toBe('22');
  });
});

describe('physical backups', () => {
  it('are signed the same way; list --verify-signatures and restore --physical check them', async () => {
    // A stopped "cluster": what a volume backup (--data-dir) needs to see.
    const dataDir = f.path('pgdata');
    await fsp.mkdir(path.join(dataDir, 'global'), { recursive: true, mode: 0o700 });
    await fsp.mkdir(path.join(dataDir, 'base'), { mode: 0o700 });
    await fsp.writeFile(path.join(dataDir, 'PG_VERSION'), '15\n');
    await fsp.writeFile(path.join(dataDir, 'global', 'pg_control'), Buffer.alloc(8192, 7));
    const repo = f.path('physical');
    const volume = async (signWith?: KeyPair): Promise<{ id: string }> => {
      const r = await runCoffer(['backup', '--to', repo, '--data-dir', dataDir, '--cluster', 'main', '--recipient', f.recipient, '--json', ...(signWith ? ['--signing-key', signWith.file] : [])], { env: f.env() });
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as Array<{ id: string }>)[0]!;
    };
    const signed = await volume(key);
    const ok = await runCoffer(['list', '--from', repo, '--verify-signatures', '--trusted-signers', trusted, '--json'], { env: f.env() });
    expect(ok.code, ok.stderr).toBe(0);
    expect((JSON.parse(ok.stdout) as Array<{ id: string; signature: { state: string } }>).map((r) => [r.id, r.signature.state])).toEqual([[signed.id, 'ok']]);
    // The auditor's check works for a physical manifest too.
    const dir = path.join(repo, 'cluster=main');
    const files = (await fsp.readdir(dir, { recursive: true })).map(String);
    const manifest = files.find((n) => n.endsWith(`${signed.id}.manifest.json`))!;
    const sig = files.find((n) => n.startsWith(`${manifest}.`) && n.endsWith('.sig'))!;
    expect(await sshKeygen(['-Y', 'verify', '-f', trusted, '-I', key.principal, '-n', MANIFEST_NAMESPACE, '-s', path.join(dir, sig)], await fsp.readFile(path.join(dir, manifest)))).toBe(0);
    // The next second: ids of one second are ordered by their random suffix.
    while (Math.floor(Date.now() / 1000) <= backupIdTime(signed.id).getTime() / 1000) await new Promise((r) => setTimeout(r, 50));
    const unsigned = await volume(undefined);
    const bad = await runCoffer(['list', '--from', repo, '--verify-signatures', '--trusted-signers', trusted], { env: f.env() });
    expect(bad.code).toBe(5);
    expect(bad.stderr).toContain(`physical backup main/${unsigned.id}: unsigned manifest`);
    // restore --physical: the unsigned newest is refused by id and skipped by latest.
    const physicalRestore = (selector: string, to: string) =>
      runCoffer(['restore', '--physical', '--from', repo, '--cluster', 'main', '--backup', selector, '--to-dir', f.path(to), '--identity', f.identityFile, '--trusted-signers', trusted, '--json'], { env: f.env() });
    const refused = await physicalRestore(unsigned.id, 'restored-unsigned');
    expect(refused.code, refused.stderr).toBe(5);
    expect(refused.stderr).toContain(`physical backup main/${unsigned.id}: unsigned manifest`);
    const latest = await physicalRestore('latest', 'restored-latest');
    expect(latest.code, latest.stderr).toBe(0);
    expect(latest.stderr).toContain(`skipping an untrusted backup: physical backup main/${unsigned.id}: unsigned manifest`);
    expect((JSON.parse(latest.stdout) as { backupId: string }).backupId).toBe(signed.id);
    expect(await fsp.readFile(path.join(f.path('restored-latest'), 'PG_VERSION'), 'utf8')).toBe('15\n');
  });
});
