/**
 * `coffer prune` on a local repository, and tier promotion through the CLI. Old backups are made
 * from a real one: its dump copied under an older id, with a manifest re-encoded for that id.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDatabase, dropDatabase, pgFromInject } from '../harness/pg.js';
import { baseEnv, errorLine, pgEnv, runCoffer } from '../harness/cli.js';
import { generateIdentity } from '../../src/crypto/age.js';
import { decodeManifest, encodeManifest, type BackupManifest } from '../../src/catalog/manifest.js';
import { backupKeys, compactTimestamp, encodeDbSegment, type Tier } from '../../src/catalog/layout.js';

const pgInfo = inject('pg')!;
const pg = pgFromInject(pgInfo);

let tmp: string;
let repo: string;
let recipient: string;
let identityFile: string;
let db: string;
let real: BackupManifest[] = [];

function env(): Record<string, string> {
  return baseEnv(pgEnv(pgInfo));
}

async function backup(): Promise<BackupManifest> {
  const r = await runCoffer(['backup', '--to', repo, '--db', db, '--recipient', recipient, '--json'], { env: env() });
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as BackupManifest[])[0]!;
}

/** Every file under the repository (relative paths), including ones coffer must not touch. */
async function allFiles(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await allFiles(dir, r)));
    else out.push(r);
  }
  return out.sort();
}

/** A copy of a real backup under another database/tier/time: a complete, readable backup. */
async function fakeBackup(from: BackupManifest, database: string, tier: Tier, daysAgo: number, n: number, opts: { manifest?: boolean } = {}): Promise<string> {
  const id = `${compactTimestamp(new Date(Date.now() - daysAgo * 86_400_000))}-${n.toString(16).padStart(8, '0')}`;
  const keys = backupKeys(database, tier, id, 'custom+zstd');
  await fsp.mkdir(path.join(repo, encodeDbSegment(database), tier), { recursive: true, mode: 0o700 });
  await fsp.copyFile(path.join(repo, from.dump.key), path.join(repo, keys.dump));
  if (opts.manifest !== false) {
    const m: BackupManifest = { ...from, id, database, tier, dump: { ...from.dump, key: keys.dump } };
    await fsp.writeFile(path.join(repo, keys.manifest), encodeManifest(m), { mode: 0o600 });
  }
  return id;
}

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-prune-test-'));
  repo = path.join(tmp, 'repo');
  const id = await generateIdentity();
  recipient = id.recipient;
  identityFile = path.join(tmp, 'identity.txt');
  await fsp.writeFile(identityFile, id.fileText, { mode: 0o600 });
  db = await createDatabase(pg, undefined, 'vault');
});

afterAll(async () => {
  await dropDatabase(pg, db).catch(() => undefined);
  await fsp.rm(tmp, { recursive: true, force: true });
});

describe('tier promotion through the CLI', () => {
  it('the first backup of the month is monthly, the next one daily', async () => {
    real = [await backup(), await backup()];
    expect(real.map((m) => m.tier)).toEqual(['monthly', 'daily']);
    expect(real[0]!.dump.key).toMatch(new RegExp(`^${encodeDbSegment(db)}/monthly/`));
    expect(real[1]!.dump.key).toMatch(new RegExp(`^${encodeDbSegment(db)}/daily/`));
  });
});

describe('coffer prune', () => {
  it('--dry-run lists exactly what prune deletes; min-keep holds; unrelated files are never touched', async () => {
    expect(real).toHaveLength(2);
    const [, recentDaily] = real;
    // Database `db`: two real recent backups plus daily ones 20-50 days old (policy: 14 days).
    const d20 = await fakeBackup(recentDaily!, db, 'daily', 20, 1);
    const d30 = await fakeBackup(recentDaily!, db, 'daily', 30, 2);
    const d40 = await fakeBackup(recentDaily!, db, 'daily', 40, 3);
    const orphan = await fakeBackup(recentDaily!, db, 'daily', 45, 4, { manifest: false }); // a failed run's leftover
    // Database `archive`: every backup is older than the policy; min-keep 3 keeps both.
    const a1 = await fakeBackup(recentDaily!, 'archive', 'daily', 100, 5);
    const a2 = await fakeBackup(recentDaily!, 'archive', 'weekly', 200, 6);
    // Files that are not coffer's, some of them looking almost like it.
    const unrelated = ['notes.txt', `${encodeDbSegment(db)}/daily/README`, `${encodeDbSegment(db)}/yearly/20200101T000000Z-00000001.dump.age`, 'other/20200101T000000Z-00000001.manifest.json', 'archive/daily/20200101T000000Z-zzzz.dump.age'];
    for (const f of unrelated) {
      await fsp.mkdir(path.dirname(path.join(repo, f)), { recursive: true });
      await fsp.writeFile(path.join(repo, f), `not coffer's: ${f}\n`);
    }
    const before = await allFiles(repo);

    const dry = await runCoffer(['prune', '--from', repo, '--dry-run'], { env: env() });
    expect(dry.code, dry.stderr).toBe(0);
    expect(await allFiles(repo)).toEqual(before); // nothing deleted
    const planned = dry.stdout.trim().split('\n').map((l) => l.replace(/^delete /, ''));
    const seg = encodeDbSegment(db);
    expect(planned.sort()).toEqual(
      [
        `${seg}/daily/${d30}.manifest.json`,
        `${seg}/daily/${d30}.dump.zst.age`,
        `${seg}/daily/${d40}.manifest.json`,
        `${seg}/daily/${d40}.dump.zst.age`,
        `${seg}/daily/${orphan}.dump.zst.age`,
      ].sort(),
    );

    const run = await runCoffer(['prune', '--from', repo], { env: env() });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toBe(dry.stdout);
    const after = await allFiles(repo);
    expect(before.filter((f) => !after.includes(f)).sort()).toEqual([...planned].sort());
    for (const f of unrelated) expect(await fsp.readFile(path.join(repo, f), 'utf8')).toBe(`not coffer's: ${f}\n`);

    // What is left: the 3 newest of `db` (two recent + the 20-day one, by min-keep) and both of `archive`.
    const list = await runCoffer(['list', '--from', repo, '--json'], { env: env() });
    expect(list.code, list.stderr).toBe(0);
    const ids = (JSON.parse(list.stdout) as Array<{ id: string }>).map((b) => b.id).sort();
    expect(ids).toEqual([real[0]!.id, real[1]!.id, d20, a1, a2].sort());
    // The backups kept by min-keep are real, readable backups.
    const v = await runCoffer(['verify', '--from', repo, '--db', 'archive', '--backup', a2, '--identity', identityFile], { env: env() });
    expect(v.code, v.stderr).toBe(0);

    // A second prune has nothing left to do.
    const again = await runCoffer(['prune', '--from', repo], { env: env() });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe('');

    // min-keep 1 with a 1-day policy: each database keeps exactly its newest good backup.
    const tight = await runCoffer(['prune', '--from', repo, '--keep-daily', '1d', '--keep-weekly', '1d', '--min-keep', '1', '--json'], { env: env() });
    expect(tight.code, tight.stderr).toBe(0);
    const left = await runCoffer(['list', '--from', repo, '--json'], { env: env() });
    const leftIds = (JSON.parse(left.stdout) as Array<{ id: string }>).map((b) => b.id).sort();
    // `db`: both real backups are less than a day old; `archive`: only the newest (a1) stays.
    expect(leftIds).toEqual([real[0]!.id, real[1]!.id, a1].sort());
  });

  it('removes temporaries left by killed runs (untouched for a day) and reports them; a fresh one is a live run\'s', async () => {
    const seg = encodeDbSegment(db);
    const stale = [`${seg}/daily/.coffer-tmp-0123456789ab`, '.coffer-tmp-a1b2c3d4e5f6'];
    const fresh = `${seg}/daily/.coffer-tmp-fedcba987654`;
    for (const f of [...stale, fresh]) await fsp.writeFile(path.join(repo, f), Buffer.alloc(16 * 1024, 1), { mode: 0o600 });
    const old = new Date(Date.now() - 25 * 3600 * 1000);
    for (const f of stale) await fsp.utimes(path.join(repo, f), old, old);
    // Just under the bound: still possibly a live run's.
    const recent = new Date(Date.now() - 23 * 3600 * 1000);
    await fsp.utimes(path.join(repo, fresh), recent, recent);
    const before = await allFiles(repo);

    const dry = await runCoffer(['prune', '--from', repo, '--dry-run'], { env: env() });
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout.split('\n').filter((l) => l.startsWith('delete-temporary ')).sort()).toEqual(stale.map((f) => `delete-temporary ${f}`).sort());
    expect(await allFiles(repo)).toEqual(before);

    const run = await runCoffer(['prune', '--from', repo, '--json'], { env: env() });
    expect(run.code, run.stderr).toBe(0);
    expect((JSON.parse(run.stdout) as { temporaries: string[] }).temporaries.sort()).toEqual([...stale].sort());
    expect(run.stderr).toMatch(/removing a temporary left by a run that was killed/);
    const after = await allFiles(repo);
    expect(before.filter((f) => !after.includes(f)).sort()).toEqual([...stale].sort());
    expect(after).toContain(fresh);
    await fsp.rm(path.join(repo, fresh));
  });

  it('refuses S3 repositories and bad --min-keep with usage errors', async () => {
    const s3 = await runCoffer(['prune', '--from', 's3://some-bucket/prod'], { env: env() });
    expect(s3.code).toBe(2);
    expect(errorLine(s3.stderr)).toMatch(/lifecycle rules/);
    const zero = await runCoffer(['prune', '--from', repo, '--min-keep', '0'], { env: env() });
    expect(zero.code).toBe(2);
    expect(errorLine(zero.stderr)).toMatch(/--min-keep/);
  });
});

// decodeManifest is what prune uses to judge a backup good: the fakes must pass it.
it('fabricated manifests are valid manifests', async () => {
  const m = real[0]!;
  expect(decodeManifest(encodeManifest(m), 'x')).toEqual(m);
});
