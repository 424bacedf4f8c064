/**
 * Point-in-time recovery end to end (issue 14): a cluster archives its WAL through
 * `coffer wal-push`, a base backup is taken with `coffer backup --physical`, rows are inserted
 * before and after a time T, and `coffer restore --physical --target-time T --verify` builds a
 * new data directory that, started, holds exactly the rows before T. Through RGW and through a
 * file repository. Then the failures: damaged archived WAL and a wrong identity stop the restore
 * with a clear error and leave nothing to start.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startThrowawayCluster, type ThrowawayCluster } from '../../src/demo/throwaway-cluster.js';
import { coverageEnv, errorLine, writeIdentityFile } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { giveToServer, serverCofferBin, serverOsUser, sh } from '../harness/server-coffer.js';

const f = useFixture({ name: 'pitr', s3: true });

/** A private directory every user can traverse (the server's OS user reads the repository and identity there). */
let shared: string;
let bin: string;
/**
 * Both repositories' scenarios, started together: each is mostly waiting (a cluster starting,
 * the archiver, a base backup), so the file repository's is ready by the time the S3 tests end.
 * Each describe awaits its own (and stops its cluster).
 */
const scenarios = new Map<'s3' | 'file', Promise<Scenario>>();
beforeAll(async () => {
  shared = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-pitr-'));
  await fsp.chmod(shared, 0o755);
  bin = await serverCofferBin();
  for (const kind of ['s3', 'file'] as const) {
    const p = scenario(kind);
    p.catch(() => undefined); // awaited (and reported) by the kind's own describe
    scenarios.set(kind, p);
  }
});
afterAll(async () => {
  // A scenario whose describe never awaited it (a failed hook) still has a cluster to stop.
  await Promise.all([...scenarios.values()].map((p) => p.then((x) => x.cluster.stop(), () => undefined)));
  if (shared) await fsp.rm(shared, { recursive: true, force: true });
});

/** coffer by the server-readable path, as the server will run it; `asServer`: as the server's OS user too (the nightly base backup, like archive_command). */
async function coffer(args: string[], env: Record<string, string>, asServer = false): Promise<{ code: number; stdout: string; stderr: string }> {
  const user = asServer ? serverOsUser() : undefined;
  const r = await execa(process.execPath, [bin, ...args], { env: { ...coverageEnv(), ...env }, extendEnv: false, reject: false, timeout: 240_000, cwd: shared, ...(user ?? {}) });
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

interface Scenario {
  cluster: ThrowawayCluster;
  repo: string;
  env: Record<string, string>;
  identity: string;
  /** The server's clock between the two batches of rows. */
  t: string;
  /** The last segment archived (switched out after the rows). */
  last: string;
}

/**
 * A source cluster archiving through coffer into `repo`; 100 rows, a base backup, 50 rows, T,
 * 50 rows, the WAL switched and archived.
 */
async function scenario(kind: 's3' | 'file'): Promise<Scenario> {
  const dir = await fsp.mkdtemp(path.join(shared, `${kind}-`));
  await fsp.chmod(dir, 0o755);
  const { identityFile, recipient } = await writeIdentityFile(dir);
  await giveToServer(identityFile);
  let repo: string;
  let s3: Record<string, string> = {};
  if (kind === 's3') {
    repo = f.repo(`pitr-${path.basename(dir)}`);
    const e = f.env();
    s3 = { AWS_ACCESS_KEY_ID: e.AWS_ACCESS_KEY_ID!, AWS_SECRET_ACCESS_KEY: e.AWS_SECRET_ACCESS_KEY!, AWS_ENDPOINT_URL_S3: e.AWS_ENDPOINT_URL_S3!, AWS_REGION: e.AWS_REGION! };
  } else {
    repo = path.join(dir, 'repo');
    await fsp.mkdir(repo, { mode: 0o755 });
    await giveToServer(repo);
  }
  const push = [process.execPath, bin, 'wal-push', '--cluster', 'main', '--to', repo, '--recipient', recipient].map(sh).join(' ');
  const cluster = await startThrowawayCluster({ settings: { archive_mode: 'on', archive_command: `${push} %p`, wal_level: 'replica' }, env: { ...s3, HOME: dir } });
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir, LANG: 'C.UTF-8', COFFER_LOG_FORMAT: 'json', ...cluster.env(), ...s3 };
  await cluster.psql('CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp()); INSERT INTO t (id) SELECT g FROM generate_series(1, 100) g;');
  const b = await coffer(['backup', '--physical', '--cluster', 'main', '--to', repo, '--recipient', recipient], env, true);
  expect(b.code, b.stderr).toBe(0);
  await cluster.psql('INSERT INTO t (id) SELECT g FROM generate_series(101, 150) g;');
  const t = (await cluster.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")).trim();
  await new Promise((r) => setTimeout(r, 300));
  await cluster.psql('INSERT INTO t (id) SELECT g FROM generate_series(151, 200) g;');
  const last = (await cluster.psql('SELECT pg_walfile_name(pg_switch_wal())')).trim();
  for (let i = 0; ; i++) {
    const s = (await cluster.psql('SELECT coalesce(last_archived_wal, \'\') || \' \' || failed_count FROM pg_stat_archiver')).trim();
    if (s.split(' ')[0]! >= last) break;
    if (Number(s.split(' ')[1]) > 0) throw new Error(`archive_command failed: pg_stat_archiver says ${s}`);
    if (i > 300) throw new Error(`WAL ${last} was not archived: pg_stat_archiver says ${s}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { cluster, repo, env: { ...env, PGHOST: '', PGPORT: '' }, identity: identityFile, t, last };
}

async function emptyOrGone(dir: string): Promise<boolean> {
  try {
    return (await fsp.readdir(dir)).length === 0;
  } catch {
    return true;
  }
}

describe.each(['s3', 'file'] as const)('point-in-time recovery through a %s repository', (kind) => {
  let s: Scenario;
  beforeAll(async () => {
    s = await scenarios.get(kind)!;
  }, 180_000);
  afterAll(async () => {
    await s?.cluster.stop();
  });

  it.runIf(kind === 'file')('list shows how far recovery reaches from the base backup: the last archived segment', async () => {
    const r = await coffer(['list', '--from', s.repo, '--cluster', 'main', '--json'], s.env);
    expect(r.code, r.stderr).toBe(0);
    const [row] = JSON.parse(r.stdout) as Array<{ kind: string; reach: { segment: string; storedAt: string | null } }>;
    expect(row!.kind).toBe('physical');
    expect(row!.reach.segment).toBe(s.last);
    expect(row!.reach.storedAt).not.toBeNull();
  });

  it('restores to --target-time T: the started cluster has exactly the rows inserted before T', async () => {
    const to = path.join(shared, `${kind}-restored`);
    const r = await coffer(['restore', '--physical', '--cluster', 'main', '--from', s.repo, '--identity', s.identity, '--to-dir', to, '--target-time', s.t, '--verify', '--smoke', 'SELECT count(*), max(id) FROM t', '--json'], s.env);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as { verified: { smoke: Array<{ result: string }>; state: string; manifestVerified: boolean }; recovery: { target: string } };
    expect(summary.verified.smoke[0]!.result).toBe('150|150');
    expect(summary.verified.state).toBe('promoted');
    expect(summary.verified.manifestVerified).toBe(true);
    expect(summary.recovery.target).toContain('time');
    // The target as given, to the microsecond (a commit at T.xxx500 is inside it).
    expect(s.t).toMatch(/\.\d{6}Z$/);
    expect(await fsp.readFile(path.join(to, 'postgresql.auto.conf'), 'utf8')).toContain(`recovery_target_time = '${s.t.replace('T', ' ').replace('Z', '+00')}'`);
    // The promotion's new timeline history is marked for archiving, so that the server, started
    // with its archive_command, sends it (else a later restore follows the abandoned timeline).
    const histories = (await fsp.readdir(path.join(to, 'pg_wal'))).filter((n) => n.endsWith('.history'));
    expect(histories.length).toBeGreaterThan(0);
    const status = await fsp.readdir(path.join(to, 'pg_wal', 'archive_status'));
    for (const h of histories) expect(status).toContain(`${h}.ready`);
    // the directory is left ready to start: recovery.signal consumed by the verification start
    expect(await fsp.readFile(path.join(to, 'PG_VERSION'), 'utf8')).toBe('15\n');
  });

  // The rest of the cases do not depend on the repository's kind: once, through the file repository (CI time).
  it.runIf(kind === 'file')('prune expires archived WAL older than --keep-wal that no kept base backup needs, and nothing else (the next case restores from what is left)', async () => {
    const walKeys = (await listKeys(s.repo)).filter((k) => k.startsWith('cluster=main/wal/'));
    const [manifestKey] = (await listKeys(s.repo)).filter((k) => /^cluster=main\/\w+\/[^/]+\.manifest\.json$/.test(k));
    const start = (JSON.parse(await fsp.readFile(path.join(s.repo, manifestKey!), 'utf8')) as { wal: { startSegment: string } }).wal.startSegment;
    // Everything recent: nothing goes.
    const fresh = await coffer(['prune', '--from', s.repo, '--min-keep', '1', '--json'], s.env);
    expect(fresh.code, fresh.stderr).toBe(0);
    expect((JSON.parse(fresh.stdout) as { deleted: string[] }).deleted).toEqual([]);
    // The archive as it will be in 30 days: WAL from before the base backup's start expires, the rest stays for it.
    const monthAgo = new Date(Date.now() - 30 * 86_400_000);
    for (const k of walKeys) await fsp.utimes(path.join(s.repo, k), monthAgo, monthAgo);
    const expected = walKeys.filter((k) => /\/[0-9A-F]{24}[.]/.test(k) && k.slice('cluster=main/wal/'.length, 'cluster=main/wal/'.length + 24) < start).sort();
    expect(expected.length).toBeGreaterThan(0);
    const r = await coffer(['prune', '--from', s.repo, '--min-keep', '1', '--keep-wal', '14d', '--json'], s.env);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { deleted: string[]; wal: Array<{ cluster: string; keepFrom: string; deleted: number }> };
    expect([...out.deleted].sort()).toEqual(expected);
    expect(out.wal).toEqual([expect.objectContaining({ cluster: 'main', keepFrom: start, deleted: expected.length })]);
    expect((await listKeys(s.repo)).filter((k) => k.startsWith('cluster=main/wal/')).sort()).toEqual(walKeys.filter((k) => !expected.includes(k)).sort());
    expect(await fsp.access(path.join(s.repo, manifestKey!)).then(() => true)).toBe(true);
  });

  it.runIf(kind === 'file')('without a target, replays the whole archive: all rows', async () => {
    const to = path.join(shared, `${kind}-end`);
    const r = await coffer(['restore', '--physical', '--cluster', 'main', '--from', s.repo, '--identity', s.identity, '--to-dir', to, '--verify', '--smoke', 'SELECT count(*) FROM t', '--json'], s.env);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { verified: { smoke: Array<{ result: string }> } }).verified.smoke[0]!.result).toBe('200');
  });

  it.runIf(kind === 'file')('refuses a non-empty directory and touches nothing in it', async () => {
    const to = path.join(shared, `${kind}-busy`);
    await fsp.mkdir(to);
    await fsp.writeFile(path.join(to, 'keep.txt'), 'x');
    const r = await coffer(['restore', '--physical', '--cluster', 'main', '--from', s.repo, '--identity', s.identity, '--to-dir', to], s.env);
    expect(r.code).toBe(2);
    expect(errorLine(r.stderr)).toMatch(/not empty/);
    expect(await fsp.readdir(to)).toEqual(['keep.txt']);
  });

  it.runIf(kind === 'file')('a wrong identity fails before anything is unpacked (exit 5), nothing left', async () => {
    const { identityFile } = await writeIdentityFile(path.dirname(s.identity), 'other.txt');
    await giveToServer(identityFile);
    const to = path.join(shared, `${kind}-wrongkey`);
    const r = await coffer(['restore', '--physical', '--cluster', 'main', '--from', s.repo, '--identity', identityFile, '--to-dir', to], s.env);
    expect(r.code).toBe(5);
    expect(errorLine(r.stderr)).toMatch(/identity/);
    expect(await emptyOrGone(to)).toBe(true);
  });

  it.runIf(kind === 'file')('without a target, a gap in the archived WAL with later segments stored is refused (exit 5): recovery would stop at the gap and report success', async () => {
    const repo = path.join(shared, `${kind}-gap-repo`);
    await fsp.cp(s.repo, repo, { recursive: true });
    const wal = path.join(repo, 'cluster=main', 'wal');
    const segs = (await fsp.readdir(wal)).filter((n) => /^[0-9A-F]{24}\.[0-9a-f]{64}\.zst\.age$/.test(n)).sort();
    const newest = segs[segs.length - 1]!;
    // A segment two on from the newest: the one between is missing (only the name matters here).
    const later = `${newest.slice(0, 16)}${(Number.parseInt(newest.slice(16, 24), 16) + 2).toString(16).toUpperCase().padStart(8, '0')}`;
    await fsp.copyFile(path.join(wal, newest), path.join(wal, `${later}${newest.slice(24)}`));
    await giveToServer(repo);
    const to = path.join(shared, `${kind}-gap`);
    const r = await coffer(['restore', '--physical', '--cluster', 'main', '--from', repo, '--identity', s.identity, '--to-dir', to], s.env);
    expect(r.code, r.stderr).toBe(5);
    expect(errorLine(r.stderr)).toMatch(new RegExp(`has a gap after ${newest.slice(0, 24)}: segment .* is missing; recovery without a target would stop there .* up to ${later}`));
    expect(await emptyOrGone(to)).toBe(true);
    // Accepted explicitly, with a target before the gap, it restores.
    const ok = await coffer(['restore', '--physical', '--cluster', 'main', '--from', repo, '--identity', s.identity, '--to-dir', to, '--target-time', s.t, '--verify', '--smoke', 'SELECT count(*) FROM t', '--json'], s.env);
    expect(ok.code, ok.stderr).toBe(0);
    expect((JSON.parse(ok.stdout) as { verified: { smoke: Array<{ result: string }> } }).verified.smoke[0]!.result).toBe('150');
  });

  // Last: it damages the archive. Through S3, test/physical/wal.test.ts has a recovery meet a damaged segment.
  it.runIf(kind === 'file')('damaged archived WAL stops recovery with a clear error (exit 5) and leaves nothing to start', async () => {
    const keys = await listKeys(s.repo);
    const backupStop = keys.filter((k) => k.includes('/wal/') && /\/wal\/[0-9A-F]{24}\.[0-9a-f]{64}\.zst\.age$/.test(k)).sort();
    // the newest segment: the rows after the base backup are in it (or before it); recovery needs it
    const victim = backupStop[backupStop.length - 1]!;
    await flipByte(s.repo, victim);
    const to = path.join(shared, `${kind}-damaged`);
    const r = await coffer(['restore', '--physical', '--cluster', 'main', '--from', s.repo, '--identity', s.identity, '--to-dir', to, '--verify'], s.env);
    expect(r.code, r.stderr).toBe(5);
    expect(errorLine(r.stderr)).toMatch(/recovery of the restored directory failed: FATAL: could not restore file .*; restore_command: .*(modified or corrupted|damaged)/);
    expect(await emptyOrGone(to)).toBe(true);
  });
});

/** Every key of a repository (a file repository's files, or the bucket prefix's objects). */
async function listKeys(repo: string): Promise<string[]> {
  if (!repo.startsWith('s3://')) {
    const out: string[] = [];
    const walk = async (d: string): Promise<void> => {
      for (const e of await fsp.readdir(d, { withFileTypes: true })) {
        if (e.isDirectory()) await walk(path.join(d, e.name));
        else out.push(path.relative(repo, path.join(d, e.name)));
      }
    };
    await walk(repo);
    return out;
  }
  const { ListObjectsV2Command } = await import('@aws-sdk/client-s3');
  const [bucket, ...rest] = repo.slice(5).split('/');
  const prefix = `${rest.join('/')}/`;
  const r = await f.s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
  return (r.Contents ?? []).map((o) => o.Key!.slice(prefix.length));
}

/** Flips one byte in the middle of a stored object. */
async function flipByte(repo: string, key: string): Promise<void> {
  if (!repo.startsWith('s3://')) {
    const file = path.join(repo, key);
    const b = await fsp.readFile(file);
    b[Math.floor(b.length / 2)]! ^= 0x40;
    await fsp.writeFile(file, b);
    return;
  }
  const { GetObjectCommand, PutObjectCommand } = await import('@aws-sdk/client-s3');
  const [bucket, ...rest] = repo.slice(5).split('/');
  const Key = `${rest.join('/')}/${key}`;
  const got = await f.s3.send(new GetObjectCommand({ Bucket: bucket, Key }));
  const b = Buffer.from(await got.Body!.transformToByteArray());
  b[Math.floor(b.length / 2)]! ^= 0x40;
  await f.s3.send(new PutObjectCommand({ Bucket: bucket, Key, Body: b }));
}
