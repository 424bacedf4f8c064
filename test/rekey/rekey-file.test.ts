/**
 * `coffer rekey` on a file repository, against real PostgreSQL, age and pg_restore: the objects
 * are copied locally (new header, the old payload byte for byte), the globals rewrapped too.
 *
 * - add B to every backup (`--backup all`): A and B both restore; then remove A with B's
 *   identity and `--delete-old`: B restores (whole and one table), A does not, the replaced
 *   backup's files are gone, `list` shows one backup naming what it replaced;
 * - `age -d -i B` reads the dump and the globals, and their plaintext is the original's;
 * - `--dry-run` leaves the directory as it was; `verify` passes with B.
 * - two rekeys of one backup at once are serialised by the backup lock (fault point
 *   `hold-rekey`): the second exits 6 naming the holder while the first holds it; one selected
 *   before the other committed is refused as already replaced (exit 2) once it has the lock (or,
 *   with `latest`, rekeys the replacement); one replacement either way.
 */
import { spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { dataFingerprint, dropDatabase, type Fingerprint } from '../harness/pg.js';
import { errorLine, runCoffer, startCoffer, writeIdentityFile } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import type { RekeyResult } from '../../src/pipeline/rekey.js';

const f = useFixture({ name: 'rekey-file', db: 'varied' });
const pg = f.pg;
let repo: string;
let first: BackupManifest;
let source: Fingerprint;
let b: { identityFile: string; recipient: string };

async function files(): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push(`${path.relative(repo, p)} ${(await fsp.stat(p)).size}`);
    }
  };
  await walk(repo);
  return out.sort();
}

function plaintextSha(identity: string, file: string): { code: number | null; sha: string; stderr: string } {
  const r = spawnSync('bash', ['-c', 'set -o pipefail; age -d -i "$1" "$2" | sha256sum', 'bash', identity, file], { encoding: 'utf8' });
  return { code: r.status, sha: r.stdout.split(' ')[0]!, stderr: r.stderr };
}

function rekey(args: string[]) {
  return runCoffer(['rekey', '--from', repo, '--db', f.db, '--json', ...args], { env: f.env() });
}

async function restoreWith(identity: string, target: string, args: string[] = []) {
  return runCoffer(['restore', '--from', repo, '--db', f.db, '--identity', identity, '--target-db', target, ...args], { env: f.env() });
}

beforeAll(async () => {
  source = await dataFingerprint(pg, f.db);
  b = await writeIdentityFile(f.tmp, 'b.txt');
  repo = f.path('repo');
  first = await f.backup(repo, f.db, ['--globals']);
  expect(first.globals).not.toBeNull();
}, 300_000);

describe('coffer rekey (file repository)', () => {
  it('--dry-run writes nothing', async () => {
    const before = await files();
    const r = await rekey(['--backup', 'all', '--add-recipient', b.recipient, '-i', f.identityFile, '--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as RekeyResult).items.map((i) => [i.id, i.action, i.after])).toEqual([[first.id, 'rekey', [f.recipient, b.recipient]]]);
    expect(await files()).toEqual(before);
  });

  let second: RekeyResult;
  it('adds B to every backup: a local copy (no padding, whole sha256); A and B both restore', async () => {
    const r = await rekey(['--backup', 'all', '--add-recipient', b.recipient, '-i', f.identityFile]);
    expect(r.code, r.stderr).toBe(0);
    second = JSON.parse(r.stdout) as RekeyResult;
    const item = second.items[0]!;
    expect(item.objects.map((o) => [o.what, o.method, o.padBytes])).toEqual([
      ['dump', 'rewrite', 0],
      ['globals', 'rewrite', 0],
      ['index', 'reencrypt', 0],
    ]);
    const m = JSON.parse(await fsp.readFile(path.join(repo, item.newManifestKey!), 'utf8')) as BackupManifest;
    expect(m.dump.sha256Bytes).toBeUndefined();
    expect(m.encryption.recipients).toEqual([f.recipient, b.recipient]);
    for (const id of [f.identityFile, b.identityFile]) {
      const target = f.dropAtEnd(`${f.db}_${id === b.identityFile ? 'b' : 'a'}1`);
      const res = await restoreWith(id, target);
      expect(res.code, res.stderr).toBe(0);
      expect(await dataFingerprint(pg, target)).toEqual(source);
      await dropDatabase(pg, target);
    }
  }, 300_000);

  it('removes A with B\'s identity and --delete-old: B restores (whole, one table, verify), A cannot; the replaced files are gone', async () => {
    const replacedManifest = second.items[0]!.newManifestKey!;
    const r = await rekey(['--remove-recipient', f.recipient, '-i', b.identityFile, '--delete-old']);
    expect(r.code, r.stderr).toBe(0);
    const item = (JSON.parse(r.stdout) as RekeyResult).items[0]!;
    expect(item.id).toBe(second.items[0]!.newId);
    expect(item.oldDeleted).toBe(true);
    const left = (await files()).map((l) => l.split(' ')[0]!);
    expect(left.some((k) => k.includes(second.items[0]!.newId!))).toBe(false);
    expect(left).not.toContain(replacedManifest);
    // The first backup (not deleted by this run) is still there: its replacement was replaced in turn.
    expect(left.some((k) => k.includes(first.id))).toBe(true);

    const list = await runCoffer(['list', '--from', repo, '--db', f.db, '--json'], { env: f.env() });
    expect(list.code, list.stderr).toBe(0);
    const rows = JSON.parse(list.stdout) as Array<{ id: string; replaces: string | null }>;
    // One backup: the newest, whose manifest names the deleted one and, as replaced earlier, the first.
    expect(rows.map((x) => [x.id, x.replaces])).toEqual([[item.newId, second.items[0]!.newId]]);
    const newest = JSON.parse(await fsp.readFile(path.join(repo, item.newManifestKey!), 'utf8')) as BackupManifest;
    expect(newest.replaces?.earlier).toEqual([first.id]);

    const target = f.dropAtEnd(`${f.db}_b2`);
    const res = await restoreWith(b.identityFile, target, ['--backup', item.newId!]);
    expect(res.code, res.stderr).toBe(0);
    expect(await dataFingerprint(pg, target)).toEqual(source);
    await dropDatabase(pg, target);
    const one = f.dropAtEnd(`${f.db}_one`);
    const sel = await restoreWith(b.identityFile, one, ['--backup', item.newId!, '--table', 'customers']);
    expect(sel.code, sel.stderr).toBe(0);
    // The table with its owned sequence.
    expect(await dataFingerprint(pg, one)).toEqual({ 'app.customers': source['app.customers'], 'sequence:app.customers_id_seq': source['sequence:app.customers_id_seq'] });
    await dropDatabase(pg, one);
    const a = await restoreWith(f.identityFile, `${f.db}_a2`, ['--backup', item.newId!]);
    expect(a.code).toBe(5);
    expect(errorLine(a.stderr)).toMatch(/no identity matches/);
    const v = await runCoffer(['verify', '--from', repo, '--db', f.db, '--backup', item.newId!, '--identity', b.identityFile], { env: f.env() });
    expect(v.code, v.stderr).toBe(0);
    // --backup all verifies the backups that are not replaced: the newest only (the first, still there, is A's alone).
    const all = await runCoffer(['verify', '--from', repo, '--db', f.db, '--backup', 'all', '--identity', b.identityFile, '--json'], { env: f.env() });
    expect(all.code, all.stderr).toBe(0);
    expect((JSON.parse(all.stdout) as Array<{ id: string }>).map((x) => x.id)).toEqual([item.newId]);

    // The standard tool: B reads the dump and the globals, whose plaintext is the first backup's.
    const m = JSON.parse(await fsp.readFile(path.join(repo, item.newManifestKey!), 'utf8')) as BackupManifest;
    for (const [now, then] of [
      [m.dump.key, first.dump.key],
      [m.globals!.key, first.globals!.key],
    ] as const) {
      const nb = plaintextSha(b.identityFile, path.join(repo, now));
      expect(nb.code, nb.stderr).toBe(0);
      expect(nb.sha).toBe(plaintextSha(f.identityFile, path.join(repo, then)).sha);
      expect(plaintextSha(f.identityFile, path.join(repo, now)).code).not.toBe(0);
    }
  }, 300_000);
});

describe('concurrent rekeys of one backup', () => {
  let c: { identityFile: string; recipient: string };
  beforeAll(async () => {
    c = await writeIdentityFile(f.tmp, 'c.txt');
  });

  /** A fresh repository with one backup of the database (A's). */
  async function fresh(name: string): Promise<{ dir: string; id: string }> {
    const dir = f.path(name);
    return { dir, id: (await f.backup(dir, f.db)).id };
  }

  /** Starts rekey held at `stage` (fault point hold-rekey) and waits until it is held there. */
  async function held(dir: string, stage: string, args: string[]) {
    const release = path.join(dir, '..', `${path.basename(dir)}-release`);
    const p = startCoffer(['rekey', '--from', dir, '--db', f.db, ...args], { env: { ...f.env(), COFFER_TEST_FAULTS: `hold-rekey=${stage}`, COFFER_TEST_RELEASE: release } });
    let err = '';
    p.stderr!.on('data', (x: Buffer) => (err += x.toString()));
    for (let n = 0; !err.includes(`held at ${stage}`); n++) {
      if (n > 3000) throw new Error(`never held at ${stage}: ${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return {
      go: async () => {
        await fsp.writeFile(`${release}.${stage}`, '');
        const r = await p;
        return { code: r.exitCode, stderr: err };
      },
    };
  }

  async function current(dir: string): Promise<Array<{ id: string; replaces: string | null }>> {
    const l = await runCoffer(['list', '--from', dir, '--db', f.db, '--json'], { env: f.env() });
    expect(l.code, l.stderr).toBe(0);
    return JSON.parse(l.stdout) as Array<{ id: string; replaces: string | null }>;
  }

  it('while one holds the lock, the other exits 6 naming it; one replacement', async () => {
    const { dir, id } = await fresh('concurrent-locked');
    const first = await held(dir, 'locked', ['--backup', id, '--add-recipient', b.recipient, '--remove-recipient', f.recipient, '-i', f.identityFile]);
    const second = await runCoffer(['rekey', '--from', dir, '--db', f.db, '--backup', id, '--add-recipient', c.recipient, '-i', f.identityFile], { env: f.env() });
    expect(second.code, second.stderr).toBe(6);
    expect(errorLine(second.stderr)).toMatch(new RegExp(`rekey: another run holds the lock of database "${f.db}" in this repository: coffer rekey run \\w+ \\(pid \\d+ `));
    const r = await first.go();
    expect(r.code, r.stderr).toBe(0);
    const rows = await current(dir);
    expect(rows).toHaveLength(1);
    expect(rows[0]!.replaces).toBe(id);
  }, 120_000);

  for (const selector of ['id', 'latest'] as const) {
    it(`one that selected --backup ${selector} before the other committed ${selector === 'id' ? 'is refused as already replaced (exit 2)' : 'rekeys the replacement'}`, async () => {
      const { dir, id } = await fresh(`concurrent-selected-${selector}`);
      const first = await held(dir, 'selected', ['--backup', selector === 'id' ? id : 'latest', '--add-recipient', b.recipient, '--remove-recipient', f.recipient, '-i', f.identityFile]);
      const second = await runCoffer(['rekey', '--from', dir, '--db', f.db, '--backup', id, '--add-recipient', c.recipient, '-i', f.identityFile, '--json'], { env: f.env() });
      expect(second.code, second.stderr).toBe(0);
      const replacement = (JSON.parse(second.stdout) as RekeyResult).items[0]!.newId!;
      const r = await first.go();
      const rows = await current(dir);
      expect(rows).toHaveLength(1);
      if (selector === 'id') {
        expect(r.code, r.stderr).toBe(2);
        expect(errorLine(r.stderr)).toMatch(new RegExp(`backup ${id} was already replaced by ${replacement} \\(coffer rekey\\); rekey that one`));
        expect(rows[0]!.id).toBe(replacement);
      } else {
        expect(r.code, r.stderr).toBe(0);
        expect(rows[0]!.replaces).toBe(replacement);
        // A was removed from the replacement of the replacement: it no longer opens what is listed.
        const v = await runCoffer(['verify', '--from', dir, '--db', f.db, '--backup', rows[0]!.id, '--identity', f.identityFile], { env: f.env() });
        expect(v.code, v.stderr).toBe(5);
      }
    }, 120_000);
  }
});
