/**
 * Timelines end to end (file repository, PostgreSQL 15): a primary archives through coffer, a
 * base backup, rows 1–3, a restore point, rows 4–6 (the "mistake"); a PITR copy to the restore
 * point is promoted and runs as a new primary on timeline 2 archiving under the same --cluster
 * (rows 100–102), while the old primary goes on on timeline 1 (a split brain: rows 7, a second
 * base backup, 8). Then:
 * - a segment missing on the timeline path recovery follows (the switch segment of timeline 2,
 *   a middle one) is refused by restore (exit 5) and reported by status (exit 7), at each position;
 * - the second backup, of timeline 1 after the fork, restores on timeline 1 (not 'latest');
 * - a target time after the fork is refused (exit 2) until --target-timeline says which.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startThrowawayCluster, type ThrowawayCluster } from '../../src/demo/throwaway-cluster.js';
import { coverageEnv, errorLine, writeIdentityFile } from '../harness/cli.js';
import { giveToServer, serverCofferBin, serverOsUser, sh } from '../harness/server-coffer.js';

let shared: string;
let bin: string;
let repo: string;
let identity: string;
let env: Record<string, string>;
let a: ThrowawayCluster;
let bDir: string | undefined;
/** A time on timeline 1 between rows 5 and 6 (after the fork point). */
let t5: string;
let backup1: string;
let backup2: string;

async function coffer(args: string[], asServer = false): Promise<{ code: number; stdout: string; stderr: string }> {
  const user = asServer ? serverOsUser() : undefined;
  const r = await execa(process.execPath, [bin, ...args], { env: { ...coverageEnv(), ...env }, extendEnv: false, reject: false, timeout: 240_000, cwd: shared, ...(user ?? {}) });
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

async function waitArchived(psql: (sql: string) => Promise<string>): Promise<void> {
  const last = (await psql('SELECT pg_walfile_name(pg_switch_wal())')).trim();
  for (let i = 0; ; i++) {
    const s = (await psql("SELECT coalesce(last_archived_wal, '') || ' ' || failed_count FROM pg_stat_archiver")).trim();
    if (s.split(' ')[0]! >= last) return;
    if (Number(s.split(' ')[1]) > 0) throw new Error(`archive_command failed: ${s}`);
    if (i > 600) throw new Error(`WAL ${last} was not archived: ${s}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const walDir = (): string => path.join(repo, 'cluster=main', 'wal');
const segments = async (tl: number): Promise<string[]> => (await fsp.readdir(walDir())).filter((n) => n.startsWith(tl.toString(16).toUpperCase().padStart(8, '0')) && /^[0-9A-F]{24}\./.test(n)).sort();

beforeAll(async () => {
  shared = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-tl-'));
  await fsp.chmod(shared, 0o755);
  bin = await serverCofferBin();
  const { identityFile, recipient } = await writeIdentityFile(shared);
  await giveToServer(identityFile);
  identity = identityFile;
  repo = path.join(shared, 'repo');
  await fsp.mkdir(repo, { mode: 0o755 });
  await giveToServer(repo);
  const push = [process.execPath, bin, 'wal-push', '--cluster', 'main', '--to', repo, '--recipient', recipient].map(sh).join(' ');
  a = await startThrowawayCluster({ settings: { archive_mode: 'on', archive_command: `${push} %p`, wal_level: 'replica' }, env: { HOME: shared } });
  env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: shared, LANG: 'C.UTF-8', COFFER_LOG_FORMAT: 'json', ...a.env() };
  await a.psql('CREATE TABLE t (id int PRIMARY KEY)');
  const b1 = await coffer(['backup', '--physical', '--cluster', 'main', '--to', repo, '--recipient', recipient, '--json'], true);
  expect(b1.code, b1.stderr).toBe(0);
  backup1 = (JSON.parse(b1.stdout) as Array<{ id: string }>)[0]!.id;
  await a.psql('INSERT INTO t VALUES (1), (2), (3)');
  await a.psql("SELECT pg_create_restore_point('before_mistake')");
  await a.psql('INSERT INTO t VALUES (4)');
  await a.psql('INSERT INTO t VALUES (5)');
  await new Promise((r) => setTimeout(r, 300));
  t5 = (await a.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")).trim();
  await new Promise((r) => setTimeout(r, 300));
  await a.psql('INSERT INTO t VALUES (6)');
  await waitArchived((q) => a.psql(q));

  // The PITR copy, promoted, runs as a new primary on timeline 2 (its archive_command: the same repository and cluster).
  bDir = path.join(shared, 'b');
  const r = await coffer(['restore', '--physical', '--cluster', 'main', '--from', repo, '--identity', identity, '--to-dir', bDir, '--target-name', 'before_mistake', '--verify']);
  expect(r.code, r.stderr).toBe(0);
  const port = await freePort();
  const sock = await fsp.mkdtemp(path.join(shared, 's'));
  await giveToServer(sock);
  const user = serverOsUser();
  const started = await execa(path.join(a.binDir, 'pg_ctl'), ['start', '-D', bDir, '-l', path.join(sock, 'b.log'), '-w', '-o', `-p ${port} -c unix_socket_directories=${sock} -c listen_addresses=''`], { ...(user ?? {}), cwd: '/', stdin: 'ignore', reject: false, extendEnv: false, env: { PATH: env.PATH!, HOME: shared, LANG: 'C.UTF-8' } });
  if (started.exitCode !== 0) throw new Error(`the timeline-2 server did not start: ${String(started.stdout)} ${String(started.stderr)} ${await fsp.readFile(path.join(sock, 'b.log'), 'utf8').catch(() => '')}`);
  const psqlB = async (sql: string): Promise<string> => String((await execa(path.join(a.binDir, 'psql'), ['-X', '-At', '-v', 'ON_ERROR_STOP=1', '-h', sock, '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-c', sql], { env: { PATH: env.PATH! } })).stdout);
  for (const id of [100, 101, 102]) {
    await psqlB(`INSERT INTO t VALUES (${id})`);
    await psqlB('SELECT pg_switch_wal()');
  }
  await waitArchived(psqlB);
  await execa(path.join(a.binDir, 'pg_ctl'), ['stop', '-D', bDir, '-m', 'fast', '-w'], { ...(user ?? {}), cwd: '/' });

  // Meanwhile timeline 1 goes on (a split brain): row 7, a base backup of it, row 8.
  await a.psql('INSERT INTO t VALUES (7)');
  const b2 = await coffer(['backup', '--physical', '--cluster', 'main', '--to', repo, '--recipient', recipient, '--json'], true);
  expect(b2.code, b2.stderr).toBe(0);
  backup2 = (JSON.parse(b2.stdout) as Array<{ id: string }>)[0]!.id;
  await a.psql('INSERT INTO t VALUES (8)');
  await waitArchived((q) => a.psql(q));
  env = { ...env, PGHOST: '', PGPORT: '' };
}, 300_000);

afterAll(async () => {
  await a?.stop();
  if (shared) await fsp.rm(shared, { recursive: true, force: true });
});

const smokeIds = 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM t';
const restored = (r: { stdout: string }): string => (JSON.parse(r.stdout) as { verified: { smoke: Array<{ result: string }> } }).verified.smoke[0]!.result;

/** Restores `backup` into a new directory with --verify, checks it exits 0 with `rows`, and returns the recovery settings it wrote. */
async function restoreRows(dir: string, backup: string, extra: string[], rows: string): Promise<string> {
  const to = path.join(shared, dir);
  const r = await coffer(['restore', '--physical', '--cluster', 'main', '--from', repo, '--identity', identity, '--to-dir', to, '--backup', backup, ...extra, '--verify', '--smoke', smokeIds, '--json']);
  expect(r.code, r.stderr).toBe(0);
  expect(restored(r)).toBe(rows);
  const conf = await fsp.readFile(path.join(to, 'postgresql.auto.conf'), 'utf8');
  await fsp.rm(to, { recursive: true, force: true });
  return conf;
}

describe('timelines', () => {
  it('the first backup, restored without a target, follows timeline 2 (forked after its end): the promoted copy\'s rows', async () => {
    expect(await restoreRows('r-tl2', backup1, [], '1,2,3,100,101,102')).toContain("recovery_target_timeline = '2'");
  });

  it('a backup of timeline 1 taken after timeline 2 forked restores on timeline 1 (not \'latest\'), with every row of timeline 1', async () => {
    expect(await restoreRows('r-tl1', backup2, [], '1,2,3,4,5,6,7,8')).toContain("recovery_target_timeline = 'current'");
  });

  it('a target time after the fork is refused (exit 2) while timeline 1 holds WAL past it; --target-timeline says which', async () => {
    const to = path.join(shared, 'r-t5');
    const r = await coffer(['restore', '--physical', '--cluster', 'main', '--from', repo, '--identity', identity, '--to-dir', to, '--backup', backup1, '--target-time', t5]);
    expect(r.code, r.stderr).toBe(2);
    expect(errorLine(r.stderr)).toMatch(/may lie after timeline 2 forked from timeline 1 .* --target-timeline current .* --target-timeline 2/);
    await restoreRows('r-t5', backup1, ['--target-time', t5, '--target-timeline', 'current'], '1,2,3,4,5');
    await restoreRows('r-t5', backup1, ['--target-time', t5, '--target-timeline', '2'], '1,2,3');
  });

  it('--target-name of a restore point older than the newest backup: the failure names the older backup to pass with --backup, which restores it', async () => {
    const to = path.join(shared, 'r-name');
    const r = await coffer(['restore', '--physical', '--cluster', 'main', '--from', repo, '--identity', identity, '--to-dir', to, '--target-name', 'before_mistake', '--verify']);
    expect(r.code, r.stderr).toBe(5);
    expect(errorLine(r.stderr)).toContain(`restore point "before_mistake" may have been created before backup ${backup2}`);
    expect(r.stderr).toContain(`pass --backup with an older backup: ${backup1}`);
    await restoreRows('r-name', backup1, ['--target-name', 'before_mistake', '--target-timeline', 'current'], '1,2,3');
  });

  it('a timeline-2 segment missing (the switch segment, the next, a middle one) is refused by restore (exit 5) and named by status (exit 7), at each position', async () => {
    const tl2 = await segments(2);
    expect(tl2.length).toBeGreaterThanOrEqual(4);
    const ok = await coffer(['status', '--from', repo, '--cluster', 'main']);
    expect(ok.code, ok.stderr).toBe(0);
    // every position but the last (nothing stored beyond it: no gap to see)
    for (const victim of tl2.slice(0, -1)) {
      const name = victim.slice(0, 24);
      const aside = path.join(shared, 'aside');
      await fsp.rename(path.join(walDir(), victim), aside);
      try {
        const st = await coffer(['status', '--from', repo, '--cluster', 'main']);
        expect(st.code, `${name}: ${st.stderr}`).toBe(7);
        expect(errorLine(st.stderr)).toContain(`segment ${name} is missing on timeline 2`);
        const to = path.join(shared, `r-gap-${name}`);
        const r = await coffer(['restore', '--physical', '--cluster', 'main', '--from', repo, '--identity', identity, '--to-dir', to, '--backup', backup1]);
        expect(r.code, `${name}: ${r.stderr}`).toBe(5);
        expect(errorLine(r.stderr)).toMatch(new RegExp(`has a gap after [0-9A-F]{24}: segment ${name} is missing on the timeline path 1→2; .* up to ${tl2[tl2.length - 1]!.slice(0, 24)}`));
        await expect(fsp.access(to)).rejects.toThrow();
      } finally {
        await fsp.rename(aside, path.join(walDir(), victim));
      }
    }
  });
});
