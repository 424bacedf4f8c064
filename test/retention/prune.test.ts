/**
 * `coffer prune` on a local repository, and tier promotion through the CLI. Old backups are made
 * from a real one: its dump copied under an older id, with a manifest re-encoded for that id.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { createDatabase, uniqueDbName } from '../harness/pg.js';
import { decodeManifest, encodeManifest, type BackupManifest } from '../../src/catalog/manifest.js';
import { backupKeys, compactTimestamp, encodeDbSegment, type Tier } from '../../src/catalog/layout.js';

const f = useFixture({ name: 'prune-test', db: 'vault' });
let repo: string;
let real: BackupManifest[] = [];

const backup = (): Promise<BackupManifest> => f.backup(repo, f.db);

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

/**
 * A copy of a real backup (any kind) under another database/tier/time: a complete, readable
 * backup. `from` is read in `opts.source` and the copy written to `opts.into` (both `repo` unless given).
 */
async function fakeBackup(from: BackupManifest, database: string, tier: Tier, daysAgo: number, n: number, opts: { manifest?: boolean; source?: string; into?: string } = {}): Promise<string> {
  const source = opts.source ?? repo;
  const into = opts.into ?? repo;
  const id = `${compactTimestamp(new Date(Date.now() - daysAgo * 86_400_000))}-${n.toString(16).padStart(8, '0')}`;
  const keys = backupKeys(database, tier, id, from.kind === 'custom' ? 'custom+zstd' : 'sql+zstd');
  expect(path.basename(from.dump.key).replace(from.id, id)).toBe(path.basename(keys.dump));
  await fsp.mkdir(path.join(into, encodeDbSegment(database), tier), { recursive: true, mode: 0o700 });
  await fsp.copyFile(path.join(source, from.dump.key), path.join(into, keys.dump));
  if (opts.manifest !== false) {
    // Without the archive index: it names the backup it belongs to (a copy would be refused by verify).
    const m: BackupManifest = { ...from, id, database, tier, dump: { ...from.dump, key: keys.dump }, index: undefined };
    await fsp.writeFile(path.join(into, keys.manifest), encodeManifest(m), { mode: 0o600 });
  }
  return id;
}

beforeAll(() => {
  repo = f.path('repo');
});

/**
 * A database of its own (an empty one, named `<prefix>_…`) and a real backup of it of each kind,
 * in a repository of their own (`source`): copies of a backup under another database would not be
 * backups of it (verify and restore refuse an archive whose header names another database).
 */
async function realDatabase(prefix: string): Promise<{ name: string; source: string; full: BackupManifest; schema: BackupManifest; data: BackupManifest }> {
  const name = f.dropAtEnd(await createDatabase(f.pg, uniqueDbName(prefix), 'empty'));
  const source = f.path(`real-${name}`);
  const full = await f.backup(source, name);
  const schema = await f.backup(source, name, ['--schema-only']);
  const data = await f.backup(source, name, ['--data-only']);
  return { name, source, full, schema, data };
}

describe('tier promotion through the CLI', () => {
  it('the first backup of the month is monthly, the next one daily', async () => {
    real = [await backup(), await backup()];
    expect(real.map((m) => m.tier)).toEqual(['monthly', 'daily']);
    expect(real[0]!.dump.key).toMatch(new RegExp(`^${encodeDbSegment(f.db)}/monthly/`));
    expect(real[1]!.dump.key).toMatch(new RegExp(`^${encodeDbSegment(f.db)}/daily/`));
  });
});

describe('coffer prune', () => {
  it('--dry-run lists exactly what prune deletes; min-keep holds; unrelated files are never touched', async () => {
    expect(real).toHaveLength(2);
    const [, recentDaily] = real;
    // Database `db`: two real recent backups plus daily ones 20-50 days old (policy: 14 days).
    const d20 = await fakeBackup(recentDaily!, f.db, 'daily', 20, 1);
    const d30 = await fakeBackup(recentDaily!, f.db, 'daily', 30, 2);
    const d40 = await fakeBackup(recentDaily!, f.db, 'daily', 40, 3);
    const orphan = await fakeBackup(recentDaily!, f.db, 'daily', 45, 4, { manifest: false }); // a failed run's leftover
    // Database `archive`: every backup is older than the policy; min-keep 3 keeps both.
    const archive = await realDatabase('archive');
    const a1 = await fakeBackup(archive.full, archive.name, 'daily', 100, 5, { source: archive.source });
    const a2 = await fakeBackup(archive.full, archive.name, 'weekly', 200, 6, { source: archive.source });
    // Files that are not coffer's, some of them looking almost like it.
    const unrelated = ['notes.txt', `${encodeDbSegment(f.db)}/daily/README`, `${encodeDbSegment(f.db)}/yearly/20200101T000000Z-00000001.dump.age`, 'other/20200101T000000Z-00000001.manifest.json', `${encodeDbSegment(archive.name)}/daily/20200101T000000Z-zzzz.dump.age`];
    // Beside expiring backups: names that begin like a run but end in something coffer never writes.
    const beside = (id: string, rest: string): string => `${encodeDbSegment(f.db)}/daily/${id}${rest}`;
    unrelated.push(
      beside(d30, '.dump.zst.age.bak'),
      beside(d40, '.txt'),
      beside(d40, '.manifest.json.bak'),
      beside(d30, '.manifest.json.abc.sig'),
      beside(orphan, '.dump.zst.age~'),
      beside('20200101T000000Z-deadbeef', '.notes'),
      beside('20200101T000000Z-deadbeef', '.dump.zst'),
      `cluster=main/daily/20200101T000000Z-deadbeef.base.tar.zst.age.old`,
      `cluster=main/daily/20200101T000000Z-deadbeef.manifest.json.${'AB'.repeat(32)}.sig`,
      `cluster=main/daily/20200101T000000Z-deadbeef.attach-x.age`,
    );
    // A manifest's signature is coffer's: it goes with its backup.
    const sig = beside(d30, `.manifest.json.${'cd'.repeat(32)}.sig`);
    await fsp.writeFile(path.join(repo, sig), 'signature\n');
    for (const f of unrelated) {
      await fsp.mkdir(path.dirname(path.join(repo, f)), { recursive: true });
      await fsp.writeFile(path.join(repo, f), `not coffer's: ${f}\n`);
    }
    const before = await allFiles(repo);

    const dry = await f.run(['prune', '--from', repo, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(await allFiles(repo)).toEqual(before); // nothing deleted
    const planned = dry.stdout.trim().split('\n').map((l) => l.replace(/^delete /, ''));
    const seg = encodeDbSegment(f.db);
    expect(planned.sort()).toEqual(
      [
        `${seg}/daily/${d30}.manifest.json`,
        `${seg}/daily/${d30}.dump.zst.age`,
        sig,
        `${seg}/daily/${d40}.manifest.json`,
        `${seg}/daily/${d40}.dump.zst.age`,
        `${seg}/daily/${orphan}.dump.zst.age`,
      ].sort(),
    );

    const run = await f.run(['prune', '--from', repo]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toBe(dry.stdout);
    const after = await allFiles(repo);
    expect(before.filter((f) => !after.includes(f)).sort()).toEqual([...planned].sort());
    for (const f of unrelated) expect(await fsp.readFile(path.join(repo, f), 'utf8')).toBe(`not coffer's: ${f}\n`);

    // What is left: the 3 newest of `db` (two recent + the 20-day one, by min-keep) and both of `archive`.
    const list = await f.run(['list', '--from', repo, '--json']);
    expect(list.code, list.stderr).toBe(0);
    const ids = (JSON.parse(list.stdout) as Array<{ id: string }>).map((b) => b.id).sort();
    expect(ids).toEqual([real[0]!.id, real[1]!.id, d20, a1, a2].sort());
    // The backups kept by min-keep are real, readable backups.
    const v = await f.run(['verify', '--from', repo, '--db', archive.name, '--backup', a2, '--identity', f.identityFile]);
    expect(v.code, v.stderr).toBe(0);

    // A second prune has nothing left to do.
    const again = await f.run(['prune', '--from', repo]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe('');

    // min-keep 1 with a 1-day policy: each database keeps exactly its newest good backup.
    const tight = await f.run(['prune', '--from', repo, '--keep-daily', '1d', '--keep-weekly', '1d', '--min-keep', '1', '--json']);
    expect(tight.code, tight.stderr).toBe(0);
    const left = await f.run(['list', '--from', repo, '--json']);
    const leftIds = (JSON.parse(left.stdout) as Array<{ id: string }>).map((b) => b.id).sort();
    // `db`: both real backups are less than a day old; `archive`: only the newest (a1) stays.
    expect(leftIds).toEqual([real[0]!.id, real[1]!.id, a1].sort());
  });

  it('removes temporaries left by killed runs (untouched for a day) and reports them; a fresh one is a live run\'s', async () => {
    const seg = encodeDbSegment(f.db);
    const stale = [`${seg}/daily/.coffer-tmp-0123456789ab`, '.coffer-tmp-a1b2c3d4e5f6'];
    const fresh = `${seg}/daily/.coffer-tmp-fedcba987654`;
    for (const f of [...stale, fresh]) await fsp.writeFile(path.join(repo, f), Buffer.alloc(16 * 1024, 1), { mode: 0o600 });
    const old = new Date(Date.now() - 25 * 3600 * 1000);
    for (const f of stale) await fsp.utimes(path.join(repo, f), old, old);
    // Just under the bound: still possibly a live run's.
    const recent = new Date(Date.now() - 23 * 3600 * 1000);
    await fsp.utimes(path.join(repo, fresh), recent, recent);
    const before = await allFiles(repo);

    const dry = await f.run(['prune', '--from', repo, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout.split('\n').filter((l) => l.startsWith('delete-temporary ')).sort()).toEqual(stale.map((f) => `delete-temporary ${f}`).sort());
    expect(await allFiles(repo)).toEqual(before);

    const run = await f.run(['prune', '--from', repo, '--json']);
    expect(run.code, run.stderr).toBe(0);
    expect((JSON.parse(run.stdout) as { temporaries: string[] }).temporaries.sort()).toEqual([...stale].sort());
    expect(run.stderr).toMatch(/removing a temporary left by a run that was killed/);
    const after = await allFiles(repo);
    expect(before.filter((f) => !after.includes(f)).sort()).toEqual([...stale].sort());
    expect(after).toContain(fresh);
    await fsp.rm(path.join(repo, fresh));
  });

  it('--min-keep keeps full backups apart: schema-only and data-only backups never stand in for a full one', async () => {
    // Real backups of each kind of four databases (each in a repository of its own), copied under other times.
    const [ledgerDb, booksDb, crmDb, mixedDb] = await Promise.all(['ledger', 'books', 'crm', 'mixed'].map((p) => realDatabase(p)));
    expect([ledgerDb!.full.kind, ledgerDb!.schema.kind, ledgerDb!.data.kind]).toEqual(['custom', 'schema-only', 'data-only']);
    const r = f.path('kinds');
    const copy = (kind: 'full' | 'schema' | 'data', db: Awaited<ReturnType<typeof realDatabase>>, tier: Tier, daysAgo: number, n: number) => fakeBackup(db[kind], db.name, tier, daysAgo, n, { source: db.source, into: r });
    const [ledger, books, crm, mixed] = [ledgerDb!, booksDb!, crmDb!, mixedDb!];
    const seg = (db: { name: string }): string => encodeDbSegment(db.name);
    // `ledger`: its only full backup is 32 days old (daily: 14 days), three schema-only ones are recent.
    const ledgerFull = await copy('full', ledger, 'daily', 32, 1);
    for (const n of [1, 2, 3]) await copy('schema', ledger, 'daily', n, 10 + n);
    // `books`: four old full backups, three recent schema-only and three recent data-only ones.
    const booksFull: string[] = [];
    for (const [i, d] of [40, 50, 60, 70].entries()) booksFull.push(await copy('full', books, 'daily', d, 20 + i));
    for (const n of [1, 2, 3]) await copy('schema', books, 'daily', n, 30 + n);
    for (const n of [1, 2, 3]) await copy('data', books, 'daily', n, 40 + n);
    // `crm`: a recent full backup; old partial ones keep their own newest one (min-keep 1).
    await copy('full', crm, 'daily', 1, 50);
    const crmData = [await copy('data', crm, 'daily', 30, 51), await copy('data', crm, 'daily', 40, 52)];
    const crmSchema = [await copy('schema', crm, 'daily', 35, 53), await copy('schema', crm, 'daily', 45, 54)];
    // `mixed`: a recent manifest that says full over plain SQL (restore refuses it) is no full backup.
    const mixedFull = await copy('full', mixed, 'daily', 30, 60);
    const liar = await copy('schema', mixed, 'daily', 1, 61);
    const liarKey = path.join(r, seg(mixed), 'daily', `${liar}.manifest.json`);
    await fsp.writeFile(liarKey, encodeManifest({ ...decodeManifest(await fsp.readFile(liarKey), liarKey), kind: 'custom' }));

    const deleted = (stdout: string): string[] => stdout.trim().split('\n').filter(Boolean).map((l) => l.replace(/^delete /, '')).sort();
    const manifests = (keys: string[]): string[] => keys.filter((k) => k.endsWith('.manifest.json')).sort();
    const dry = await f.run(['prune', '--from', r, '--dry-run', '--min-keep', '3']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(manifests(deleted(dry.stdout))).toEqual([`${seg(books)}/daily/${booksFull[3]}.manifest.json`]);
    const dryJson = await f.run(['prune', '--from', r, '--dry-run', '--min-keep', '3', '--json']);
    expect(dryJson.code, dryJson.stderr).toBe(0);
    const ledgerDecision = (JSON.parse(dryJson.stdout) as { decisions: Array<{ id: string; action: string; reason: string }> }).decisions.find((d) => d.id === ledgerFull);
    expect(ledgerDecision).toMatchObject({ action: 'keep', reason: 'one of the newest 3 good full backups (min-keep)' });

    const one = await f.run(['prune', '--from', r, '--min-keep', '1', '--json']);
    expect(one.code, one.stderr).toBe(0);
    const plan = JSON.parse(one.stdout) as { deleted: string[] };
    expect(manifests(plan.deleted)).toEqual(
      [...booksFull.slice(1).map((id) => `${seg(books)}/daily/${id}.manifest.json`), `${seg(crm)}/daily/${crmData[1]}.manifest.json`, `${seg(crm)}/daily/${crmSchema[1]}.manifest.json`].sort(),
    );
    // Every database still restores its newest full backup (`latest`), and the partial ones of each kind are there.
    for (const db of [ledger.name, books.name, crm.name, mixed.name]) {
      const v = await f.run(['verify', '--from', r, '--db', db, '--identity', f.identityFile]);
      expect(v.code, `${db}: ${v.stderr}`).toBe(0);
    }
    const list = await f.run(['list', '--from', r, '--json']);
    expect(list.code, list.stderr).toBe(0);
    const left = (JSON.parse(list.stdout) as Array<{ database: string; id: string }>).map((b) => `${b.database} ${b.id}`).sort();
    expect(left.filter((b) => b.startsWith(`${ledger.name} `))).toHaveLength(4);
    expect(left.filter((b) => b.startsWith(`${books.name} `))).toHaveLength(7);
    expect(left).toContain(`${books.name} ${booksFull[0]}`);
    expect(left.filter((b) => b.startsWith(`${crm.name} `))).toHaveLength(3);
    expect(left).toEqual(expect.arrayContaining([`${crm.name} ${crmData[0]}`, `${crm.name} ${crmSchema[0]}`]));
    expect(left.filter((b) => b.startsWith(`${mixed.name} `))).toEqual([`${mixed.name} ${mixedFull}`, `${mixed.name} ${liar}`].sort());
  });

  it('--min-keep does not count a backup that coffer rekey replaced (the same data as its replacement)', async () => {
    const source = f.path('rekey-source');
    const full = await f.backup(source, f.db);
    const r = f.path('rekeyed');
    const old = [40, 50, 60].map((d, i) => fakeBackup(full, 'ledger', 'daily', d, i + 1, { source, into: r }));
    const [newest, middle, oldest] = await Promise.all(old);
    // Its replacement: the same time part (rekey keeps it), another suffix, `replaces` naming it.
    const replacement = `${newest!.slice(0, 16)}-000000ff`;
    const keys = backupKeys('ledger', 'daily', replacement, 'custom+zstd');
    await fsp.copyFile(path.join(r, 'ledger', 'daily', `${newest}${path.basename(full.dump.key).slice(full.id.length)}`), path.join(r, keys.dump));
    const m: BackupManifest = { ...full, id: replacement, database: 'ledger', tier: 'daily', dump: { ...full.dump, key: keys.dump }, index: undefined, replaces: { id: newest!, manifestKey: `ledger/daily/${newest}.manifest.json`, sha256: 'a'.repeat(64), rekeyedAt: new Date().toISOString() } };
    await fsp.writeFile(path.join(r, keys.manifest), encodeManifest(m), { mode: 0o600 });

    const dry = await f.run(['prune', '--from', r, '--dry-run', '--min-keep', '2']);
    expect(dry.code, dry.stderr).toBe(0);
    const deleted = dry.stdout.trim().split('\n').map((l) => l.replace(/^delete /, '')).filter((k) => k.endsWith('.manifest.json')).sort();
    // Kept: the replacement and the next distinct backup; the replaced one expires by its age.
    expect(deleted).toEqual([`ledger/daily/${newest}.manifest.json`, `ledger/daily/${oldest}.manifest.json`].sort());
    expect(deleted).not.toContain(`ledger/daily/${middle}.manifest.json`);
  });

  it('a rekeyed backup counts for --min-keep (and stays) while its replacement is damaged; with a good replacement it goes, named as replaced', async () => {
    const source = f.path('rekey-damaged-source');
    const full = await f.backup(source, f.db);
    const r = f.path('rekey-damaged');
    const suffix = path.basename(full.dump.key).slice(full.id.length);
    /** One full backup 20 days old and its rekeyed replacement, damaged as `damage` says. */
    const pair = async (database: string, n: number, damage: 'none' | 'dump' | 'manifest'): Promise<{ original: string; replacement: string }> => {
      const original = await fakeBackup(full, database, 'daily', 20, n, { source, into: r });
      const replacement = `${original.slice(0, 16)}-0000ff0${n}`;
      const keys = backupKeys(database, 'daily', replacement, 'custom+zstd');
      if (damage !== 'dump') await fsp.copyFile(path.join(r, database, 'daily', `${original}${suffix}`), path.join(r, keys.dump));
      const m: BackupManifest = { ...full, id: replacement, database, tier: 'daily', dump: { ...full.dump, key: keys.dump }, index: undefined, replaces: { id: original, manifestKey: `${database}/daily/${original}.manifest.json`, sha256: 'a'.repeat(64), rekeyedAt: new Date().toISOString() } };
      await fsp.writeFile(path.join(r, keys.manifest), damage === 'manifest' ? encodeManifest(m).subarray(0, 40) : encodeManifest(m), { mode: 0o600 });
      return { original, replacement };
    };
    const good = await pair('good', 1, 'none');
    const noDump = await pair('nodump', 2, 'dump');
    const badManifest = await pair('badmanifest', 3, 'manifest');

    const run = await f.run(['prune', '--from', r, '--keep-daily', '1d', '--min-keep', '1', '--json']);
    expect(run.code, run.stderr).toBe(0);
    const decisions = (JSON.parse(run.stdout) as { decisions: Array<{ database: string; id: string; action: string; reason: string }> }).decisions;
    const of = (database: string, id: string) => decisions.find((d) => d.database === database && d.id === id);
    // A good replacement: it stays (min-keep), the replaced backup goes, named as replaced (not as damaged).
    expect(of('good', good.replacement)).toMatchObject({ action: 'keep', reason: 'one of the newest 1 good full backups (min-keep)' });
    expect(of('good', good.original)).toMatchObject({ action: 'delete', reason: `backup replaced by rekey (backup ${good.replacement}) older than 1 days (daily)` });
    // A damaged replacement (dump missing, manifest unreadable): the original is the good backup and stays.
    for (const [db, p] of [['nodump', noDump], ['badmanifest', badManifest]] as const) {
      expect(of(db, p.original), db).toMatchObject({ action: 'keep', reason: 'one of the newest 1 good full backups (min-keep)' });
      expect(of(db, p.replacement), db).toMatchObject({ action: 'delete', reason: 'backup with an unreadable manifest or missing dump older than 1 days (daily)' });
      for (const file of [`${p.original}.manifest.json`, `${p.original}${suffix}`]) await expect(fsp.stat(path.join(r, db, 'daily', file)), `${db} ${file}`).resolves.toBeTruthy();
    }
  });

  it('refuses S3 repositories and bad --min-keep with usage errors', async () => {
    const s3 = await f.run(['prune', '--from', 's3://some-bucket/prod']);
    expect(s3.code).toBe(2);
    expect(errorLine(s3.stderr)).toMatch(/lifecycle rules/);
    const zero = await f.run(['prune', '--from', repo, '--min-keep', '0']);
    expect(zero.code).toBe(2);
    expect(errorLine(zero.stderr)).toMatch(/--min-keep/);
  });
});

// decodeManifest is what prune uses to judge a backup good: the fakes must pass it.
it('fabricated manifests are valid manifests', async () => {
  const m = real[0]!;
  expect(decodeManifest(encodeManifest(m), 'x')).toEqual(m);
});
