/**
 * `coffer backup --data-dir DIR` / `--tar-command CMD` (issue 14, item 2): a stopped cluster's
 * data directory archived with tar, read back with the standard tools into a new directory that
 * starts and answers; a running cluster's directory refused naming its PID; a --tar-command
 * whose tar is not a whole data directory fails and stores nothing.
 */
import { readFileSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PhysicalManifest } from '../../src/catalog/physical-manifest.js';
import type { ThrowawayCluster } from '../../src/demo/throwaway-cluster.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { listAllKeys } from '../harness/rgw.js';
import { serverOwnedDir, serverUser, sha256, startCluster, stopServerKeepDir, untar } from './common.js';

const f = useFixture({ name: 'volume', s3: true });
let c: ThrowawayCluster;

beforeAll(async () => {
  c = await startCluster();
  await c.psql("CREATE TABLE vault_status (id int PRIMARY KEY, note text); INSERT INTO vault_status SELECT g, 'row ' || g FROM generate_series(1, 42) g;");
});
afterAll(async () => {
  await c?.stop();
});

function backup(args: string[]) {
  return f.run(['backup', '--cluster', 'db_data', '--recipient', f.recipient, ...args]);
}

describe('backup --data-dir', () => {
  it("refuses a running cluster's directory, naming the PID (exit 2); nothing is stored", async () => {
    const pid = readFileSync(path.join(c.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]!;
    const repo = f.path('running');
    const r = await backup(['--data-dir', c.dataDir, '--to', repo]);
    expect(r.code, r.stderr).toBe(2);
    expect(errorLine(r.stderr)).toContain(`postmaster.pid names PID ${pid}, which is alive`);
    expect(errorLine(r.stderr)).toContain('pg_ctl stop');
    await expect(fsp.readdir(repo)).rejects.toThrow();
    // A postmaster.pid of a server that saw the directory elsewhere (a container): no PID here can tell.
    const foreign = f.path('foreign');
    await fsp.mkdir(foreign);
    await fsp.writeFile(path.join(foreign, 'PG_VERSION'), '15\n');
    await fsp.writeFile(path.join(foreign, 'postmaster.pid'), '1\n/var/lib/postgresql/data\n');
    const inContainer = await backup(['--data-dir', foreign, '--to', repo]);
    expect(inContainer.code).toBe(2);
    expect(errorLine(inContainer.stderr)).toContain('saw this directory as /var/lib/postgresql/data (PID 1, in a container?)');
    const notData = await backup(['--data-dir', f.tmp, '--to', repo]);
    expect(notData.code).toBe(2);
    expect(errorLine(notData.stderr)).toContain('is not a PostgreSQL data directory');
  });

  it('archives the stopped cluster to RGW with an attachment; age | zstd -d | tar -x gives a directory that starts', async () => {
    await stopServerKeepDir(c);
    const script = f.path('migrate.sql');
    await fsp.writeFile(script, 'SELECT 1;\n');
    const r = await backup(['--data-dir', c.dataDir, '--to', f.repo('vol'), '--attach', script, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const [m] = JSON.parse(r.stdout) as PhysicalManifest[];
    expect(m!.kind).toBe('volume');
    expect(m!.archive.key).toBe(`cluster=db_data/monthly/${m!.id}.volume.tar.zst.age`);
    expect(m!.postgres.majorVersion).toBe(15);
    expect(m!.postgres.systemIdentifier).toMatch(/^\d+$/);
    expect(m!.wal).toBeUndefined();
    expect(m!.warnings).toEqual([]);
    expect(m!.attachments.map((a) => a.name)).toEqual(['migrate.sql']);
    expect((await listAllKeys(f.s3, f.bucket, 'vol/')).sort()).toEqual(
      [m!.archive.key, m!.attachments[0]!.key, `cluster=db_data/monthly/${m!.id}.manifest.json`, `cluster=db_data/system/${m!.postgres.systemIdentifier}`].map((k) => `vol/${k}`).sort(),
    );
    const out = await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: `vol/${m!.archive.key}` }));
    const obj = Buffer.from(await out.Body!.transformToByteArray());
    expect(sha256(obj)).toBe(m!.archive.sha256);
    const file = f.path('volume.tar.zst.age');
    await fsp.writeFile(file, obj);

    // Unpacked by the standard tools into a new directory, as the server's user; it starts and answers.
    const base = await serverOwnedDir(path.join(path.dirname(c.dataDir), 'restored'));
    const dir = await serverOwnedDir(path.join(base, 'data'));
    await untar(f.identityFile, file, ['-x', '-C', dir, '--numeric-owner', '--same-permissions']);
    for (const n of ['PG_VERSION', 'global/pg_control', 'base']) await fsp.access(path.join(dir, n));
    expect(m!.archive.plainBytes).toBeGreaterThan(10 * 1024 * 1024);
    const sock = await serverOwnedDir(path.join(base, 's'));
    const user = serverUser();
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
    const start = await execa(`${c.binDir}/pg_ctl`, ['start', '-D', dir, '-w', '-t', '30', '-l', path.join(base, 'log'), '-o', `-c port=${c.port} -c unix_socket_directories=${sock} -c listen_addresses=`], { ...user, cwd: '/', env, extendEnv: false, reject: false });
    try {
      expect(start.exitCode, `${String(start.stderr)} ${await fsp.readFile(path.join(base, 'log'), 'utf8').catch(() => '')}`).toBe(0);
      const q = await execa(`${c.binDir}/psql`, ['-XAt', '-h', sock, '-p', String(c.port), '-U', 'postgres', '-d', 'postgres', '-c', 'SELECT count(*) FROM vault_status'], { env, extendEnv: false });
      expect(q.stdout).toBe('42');
    } finally {
      await execa(`${c.binDir}/pg_ctl`, ['stop', '-D', dir, '-m', 'immediate', '-w'], { ...user, cwd: '/', env, extendEnv: false, reject: false });
    }
  });

  it('--tar-command reads the directory through a command (no pid check: the manifest says so) into a file repository; list shows it', async () => {
    const repo = f.path('repo');
    const r = await backup(['--tar-command', `tar -C ${c.dataDir} -cf - .`, '--to', repo, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const [m] = JSON.parse(r.stdout) as PhysicalManifest[];
    expect(m!.postgres.majorVersion).toBe(15);
    expect(m!.postgres.command).toEqual(['tar', '-C', c.dataDir, '-cf', '-', '.']);
    expect(m!.warnings.join('\n')).toMatch(/read through --tar-command \(tar\): coffer could not check that no postmaster was running/);
    const names = (await untar(f.identityFile, path.join(repo, m!.archive.key), ['-t'])).toString('utf8').split('\n');
    expect(names).toContain('./PG_VERSION');
    const list = await f.run(['list', '--from', repo, '--json']);
    expect(JSON.parse(list.stdout)).toEqual([expect.objectContaining({ id: m!.id, cluster: 'db_data', kind: 'volume', majorVersion: 15, wal: null })]);
  });

  it('fails a --tar-command whose tar is not a whole data directory (exit 5); nothing is stored', async () => {
    const empty = await fsp.mkdtemp(path.join(f.tmp, 'empty-'));
    const repo = f.path('bad');
    const notPg = await backup(['--tar-command', `tar -C ${empty} -cf - .`, '--to', repo]);
    expect(notPg.code, notPg.stderr).toBe(5);
    expect(errorLine(notPg.stderr)).toContain('the tar holds no PG_VERSION');
    const cut = await backup(['--tar-command', `head -c 1000000 ${f.path('volume.tar.zst.age')}`, '--to', repo]);
    expect(cut.code, cut.stderr).toBe(5);
    expect(errorLine(cut.stderr)).toMatch(/not a tar stream|not a whole tar archive/);
    expect(await listFiles(repo)).toEqual([]);
  });
});

describe('a physical backup run, as cron runs it', () => {
  it('one backup of a cluster per repository at a time: a second exits 6 naming the holder, --wait queues behind it; the metrics file gets a cluster series', async () => {
    const repo = f.path('locked');
    const locks = f.path('locks');
    const metrics = f.path('metrics.prom');
    const common = ['--to', repo, '--lock-dir', locks, '--metrics-file', metrics];
    // A tar that takes its time, so that the lock is held while the others start.
    const slow = backup(['--tar-command', `sh -c "sleep 4; exec tar -C ${c.dataDir} -cf - ."`, ...common]);
    const lockFiles = async () => (await fsp.readdir(locks).catch(() => [] as string[])).filter((n) => !n.startsWith('.'));
    for (let i = 0; i < 100 && (await lockFiles()).length === 0; i++) await new Promise((r) => setTimeout(r, 100));
    expect(await lockFiles()).toHaveLength(1);
    const busy = await backup(['--tar-command', `tar -C ${c.dataDir} -cf - .`, ...common]);
    expect(busy.code, busy.stderr).toBe(6);
    expect(errorLine(busy.stderr)).toMatch(/another backup of cluster "db_data" to this repository is running: coffer run \w+ \(pid \d+ /);
    const queued = await backup(['--tar-command', `tar -C ${c.dataDir} -cf - .`, ...common, '--wait', '60s']);
    expect(queued.code, queued.stderr).toBe(0);
    const first = await slow;
    expect(first.code, first.stderr).toBe(0);
    const list = await f.run(['list', '--from', repo, '--json']);
    expect((JSON.parse(list.stdout) as unknown[]).length).toBe(2);
    expect(await lockFiles()).toEqual([]);
    const prom = await fsp.readFile(metrics, 'utf8');
    const series = (name: string) => new RegExp(`^${name}\\{cluster="db_data",repository="[^"]+"\\} (\\S+)$`, 'm').exec(prom)?.[1];
    expect(series('coffer_backup_last_result')).toBe('1');
    expect(Number(series('coffer_backup_last_size_bytes'))).toBeGreaterThan(0);
    expect(Number(series('coffer_backup_last_success_timestamp_seconds'))).toBeGreaterThan(Date.now() / 1000 - 600);
  });
});

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { recursive: true, withFileTypes: true }).catch(() => [])) if (e.isFile()) out.push(e.name);
  return out;
}
