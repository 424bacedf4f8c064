/**
 * `coffer rekey` on a file repository, against real PostgreSQL, age and pg_restore: the objects
 * are copied locally (new header, the old payload byte for byte), the globals rewrapped too.
 *
 * - add B to every backup (`--backup all`): A and B both restore; then remove A with B's
 *   identity and `--delete-old`: B restores (whole and one table), A does not, the replaced
 *   backup's files are gone, `list` shows one backup naming what it replaced;
 * - `age -d -i B` reads the dump and the globals, and their plaintext is the original's;
 * - `--dry-run` leaves the directory as it was; `verify` passes with B.
 */
import { spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { dataFingerprint, dropDatabase, type Fingerprint } from '../harness/pg.js';
import { errorLine, runCoffer, writeIdentityFile } from '../harness/cli.js';
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
