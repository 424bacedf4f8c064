/**
 * `coffer demo` end to end (README "Try it", scripts/demo.sh): the built CLI in an empty
 * directory starts its own throwaway PostgreSQL cluster, backs the sample `vault` database up
 * into ./backups, lists, verifies, restores it with a smoke query, and removes the cluster.
 * A second run in the same directory reuses the key and adds a second backup. TMPDIR is a
 * private directory so the test can see that the cluster's directories are gone afterwards.
 */
import { execa } from 'execa';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { baseEnv, runCoffer } from '../harness/cli.js';

const pgInfo = inject('pg')!;
let tmp: string;
let pgTmp: string;

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-demo-'));
  // As root the cluster runs as the postgres user, which must reach its directory under TMPDIR.
  await fsp.chmod(tmp, 0o755);
  pgTmp = path.join(tmp, 't');
  await fsp.mkdir(pgTmp, { mode: 0o755 });
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

const demo = (args: string[] = []) =>
  runCoffer(['demo', '--pg-bin', pgInfo.binDir, ...args], { env: baseEnv({ TMPDIR: pgTmp }), cwd: tmp, timeoutMs: 180_000 });

describe('coffer demo', () => {
  it('backs the sample database up, lists, verifies and restores it, prints a working manual-decrypt line, and removes its cluster', async () => {
    const r = await demo();
    expect(r.code, r.stderr).toBe(0);
    const out = r.stdout;
    const keyFile = path.join(tmp, 'backups', 'demo-identity.txt');
    expect(out).toContain(`created an age identity: ${keyFile} (mode 0600); recipient age1`);
    expect((await fsp.stat(keyFile)).mode & 0o777).toBe(0o600);

    const loaded = /SELECT COUNT\(\*\) FROM vault_status; → (\d+)\n/.exec(out);
    expect(loaded, out).not.toBeNull();
    const count = Number(loaded![1]);
    expect(count).toBeGreaterThan(0);

    const stored = /backup (\S+) stored: (vault\/\S+\.dump\.zst\.age) \(/.exec(out);
    expect(stored, out).not.toBeNull();
    const [, id, key] = stored!;
    // the listing, under the command it stands for
    expect(out).toMatch(new RegExp(`\\$ coffer list --from ./backups\\nID .*\\n${id}  .* vault +full +monthly `));
    expect(out).toMatch(/ok: sha256 matches, decrypted and authenticated .* with \d+ TOC entries/);
    expect(out).toMatch(/restored into "vault_restored" in [\d.]+s: 4 tables, all 4 tables of the archive present/);
    expect(out).toContain(`  public.vault_status: ${count} rows`);
    expect(out).toContain(`smoke: SELECT COUNT(*) FROM vault_status; → ${count} (source had ${count})`);

    // the repository holds the dump, its archive index and its manifest (the commit marker)
    const files = (await fsp.readdir(path.join(tmp, 'backups', 'vault', 'monthly'))).sort();
    expect(files).toEqual([`${id}.dump.zst.age`, `${id}.index.json.age`, `${id}.manifest.json`]);

    // the printed manual-restore pipeline reads the stored object without coffer
    const manual = /decrypt by hand: (age -d -i \S+ \S+) \| zstd -d \| pg_restore -d NEWDB/.exec(out);
    expect(manual, out).not.toBeNull();
    expect(manual![1]).toBe(`age -d -i ${keyFile} ${path.join(tmp, 'backups', key!)}`);
    const plain = path.join(tmp, 'vault.dump');
    await execa('bash', ['-c', `set -o pipefail; ${manual![1]} | zstd -d -q -o "$1"`, 'x', plain]);
    const list = await execa(path.join(pgInfo.binDir, 'pg_restore'), ['-l', plain]);
    expect(list.stdout).toMatch(/TABLE DATA public vault_status/);
    await fsp.rm(plain);

    // the throwaway cluster (data, socket and log under TMPDIR) is gone
    expect(await fsp.readdir(pgTmp)).toEqual([]);
  });

  it('a second run in the same directory reuses the demo key and adds a second backup', async () => {
    const r = await demo();
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`using the existing demo key ${path.join(tmp, 'backups', 'demo-identity.txt')}`);
    expect(r.stdout).not.toContain('created an age identity');
    // (the second backup of the month goes to another tier: count across tiers)
    const manifests = (await fsp.readdir(path.join(tmp, 'backups', 'vault'), { recursive: true })).filter((f) => f.endsWith('.manifest.json'));
    expect(manifests).toHaveLength(2);
    expect(r.stdout).toMatch(/smoke: SELECT COUNT\(\*\) FROM vault_status; → (\d+) \(source had \1\)/);
    expect(await fsp.readdir(pgTmp)).toEqual([]);
  });

  it('without PostgreSQL server binaries it stops before starting anything (exit 3, says what to install)', async () => {
    const r = await runCoffer(['demo', '--pg-bin', path.join(tmp, 'no-such-bin'), '--dir', 'other'], { env: baseEnv({ TMPDIR: pgTmp }), cwd: tmp });
    expect(r.code).toBe(3);
    expect(r.stderr).toContain(`no PostgreSQL server binaries (initdb, pg_ctl) in ${path.join(tmp, 'no-such-bin')}`);
    expect(await fsp.readdir(pgTmp)).toEqual([]);
  });
});
