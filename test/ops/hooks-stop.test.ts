/**
 * A stop (SIGTERM, --timeout) while a hook of a backup runs. During `--after`, once the backup is
 * committed: the hook is killed, the run exits 0 with a warning that names the committed backup
 * and says the hook was stopped (not 124/143, "everything was aborted cleanly"); the backup is
 * listed and restorable and the metrics file says success. During `--before`: 124/143, nothing
 * stored. Logical and physical (`--physical`) backups, and a restore (exit 0, its target there).
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ThrowawayCluster } from '../../src/demo/throwaway-cluster.js';
import { errorLine, runCoffer, signalIfRunning, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { uniqueDbName } from '../harness/pg.js';
import { startCluster } from '../physical/common.js';
import { sleep, waitFor } from '../reliability/common.js';

const f = useFixture({ name: 'hooks-stop' });
const pg = f.pg;
let db: string;
let dir: string;
let cluster: ThrowawayCluster;
let n = 0;

beforeAll(async () => {
  db = await f.database({ fixture: 'vault', prefix: 'hookstop' });
  await pg.psql('CREATE TABLE hook_rows (id int); INSERT INTO hook_rows SELECT generate_series(1, 321);', db);
  dir = f.path('hooks');
  await fsp.mkdir(dir, { recursive: true });
  cluster = await startCluster();
});
afterAll(async () => {
  await cluster?.stop();
});

/** A hook that writes its pid to a file, then sleeps 60 s (as `exec`: the pid is the sleep's). */
async function slowHook(): Promise<{ argv: string; pidFile: string }> {
  const name = `slow-${++n}`;
  const pidFile = path.join(dir, `${name}.pid`);
  const file = path.join(dir, `${name}.sh`);
  await fsp.writeFile(file, `#!/bin/bash\necho $$ > '${pidFile}'\nexec sleep 60\n`, { mode: 0o755 });
  return { argv: `'${file}'`, pidFile };
}

async function pidIn(file: string): Promise<number> {
  return Number((await fsp.readFile(file, 'utf8').catch(() => '')).trim()) || 0;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The ids `coffer list --json` shows. */
async function listed(repo: string): Promise<string[]> {
  const r = await runCoffer(['list', '--from', repo, '--json'], { env: f.env() });
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as Array<{ id: string }>).map((b) => b.id);
}

/** Runs `args` with the hook; stops it (SIGTERM once the hook runs, or by the --timeout in `args`). */
async function stopDuringHook(args: string[], hook: { pidFile: string }, stop: 'SIGTERM' | 'timeout', env: Record<string, string>) {
  const started = Date.now();
  const run = startCoffer(args, { env, timeoutMs: 50_000, forceKillAfterMs: 1_000 });
  const watching = (async () => {
    const ran = await waitFor(async () => (await pidIn(hook.pidFile)) > 0, 40_000);
    if (ran && stop === 'SIGTERM') {
      await sleep(300);
      signalIfRunning(run.pid!, 'SIGTERM');
    }
  })();
  const r = await run;
  await watching;
  const pid = await pidIn(hook.pidFile);
  expect(pid, String(r.stderr)).toBeGreaterThan(0);
  // The hook was killed (not waited for: it sleeps 60 s).
  expect(Date.now() - started).toBeLessThan(40_000);
  expect(alive(pid)).toBe(false);
  return { code: r.exitCode, stderr: String(r.stderr), stdout: String(r.stdout) };
}

/** The warning about the stopped --after hook, by its backup id. */
function stoppedHookWarning(stderr: string): { level: string; msg: string } | undefined {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { level: string; msg: string })
    .find((l) => l.msg.includes('the --after hook was stopped'));
}

describe('a stop during the --after hook of a committed backup: exit 0, the backup named, listed and restorable', () => {
  for (const stop of ['SIGTERM', 'timeout'] as const) {
    it(`logical backup, ${stop}`, async () => {
      const repo = f.path(`repo-after-${stop}`);
      const metrics = f.path(`after-${stop}.prom`);
      const hook = await slowHook();
      const args = [...(stop === 'timeout' ? ['--timeout', '6s'] : []), 'backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--metrics-file', metrics, '--after', hook.argv, '--json'];
      const r = await stopDuringHook(args, hook, stop, f.env());
      expect(r.code, r.stderr).toBe(0);
      const made = (JSON.parse(r.stdout) as Array<{ id: string }>).map((m) => m.id);
      expect(made).toHaveLength(1);
      const w = stoppedHookWarning(r.stderr);
      expect(w, r.stderr).toBeDefined();
      expect(w!.level).toBe('warn');
      expect(w!.msg).toBe(`the backup ${made[0]} (database ${db}) is committed and complete; the --after hook was stopped (${stop === 'SIGTERM' ? 'stopped by SIGTERM' : 'timed out after 6s'}) before it finished`);
      expect(errorLine(r.stderr)).toBe('');
      expect(await listed(repo)).toEqual(made);
      expect(await fsp.readFile(metrics, 'utf8')).toMatch(/^coffer_backup_last_result\{[^}]*\} 1$/m);
      // Restorable: the rows are there.
      const target = f.dropAtEnd(uniqueDbName('hookstop_r'));
      const back = await f.run(['restore', '--from', repo, '--db', db, '--identity', f.identityFile, '--target-db', target]);
      expect(back.code, back.stderr).toBe(0);
      expect((await pg.psql('SELECT count(*) FROM hook_rows;', target)).trim()).toBe('321');
    });
  }

  for (const stop of ['SIGTERM', 'timeout'] as const) {
    it(`physical backup (--physical), ${stop}`, async () => {
      const repo = f.path(`repo-phys-after-${stop}`);
      const metrics = f.path(`phys-after-${stop}.prom`);
      const hook = await slowHook();
      const timeout = '12s';
      const args = [...(stop === 'timeout' ? ['--timeout', timeout] : []), 'backup', '--physical', '--cluster', 'main', '--fast-checkpoint', '--to', repo, '--recipient', f.recipient, '--metrics-file', metrics, '--after', hook.argv, '--json'];
      const r = await stopDuringHook(args, hook, stop, f.env(cluster.env()));
      expect(r.code, r.stderr).toBe(0);
      const made = (JSON.parse(r.stdout) as Array<{ id: string }>).map((m) => m.id);
      expect(made).toHaveLength(1);
      expect(stoppedHookWarning(r.stderr)?.msg, r.stderr).toBe(`the backup ${made[0]} (cluster main) is committed and complete; the --after hook was stopped (${stop === 'SIGTERM' ? 'stopped by SIGTERM' : `timed out after ${timeout}`}) before it finished`);
      expect(await listed(repo)).toContain(made[0]);
      // Restorable: unpacked into a new data directory (its sha256 and manifest checked on the way).
      const back = await f.run(['restore', '--physical', '--from', repo, '--cluster', 'main', '--identity', f.identityFile, '--to-dir', f.path(`phys-restored-${stop}`)]);
      expect(back.code, back.stderr).toBe(0);
    });
  }
});

describe('a stop during the --after hook of a restore that swapped in: exit 0, the target named and there', () => {
  it('SIGTERM', async () => {
    const repo = f.path('repo-restore-after');
    await f.backup(repo, db);
    const target = f.dropAtEnd(uniqueDbName('hookstop_ra'));
    const hook = await slowHook();
    const r = await stopDuringHook(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target, '--after', hook.argv], hook, 'SIGTERM', f.env());
    expect(r.code, r.stderr).toBe(0);
    expect(stoppedHookWarning(r.stderr)?.msg, r.stderr).toBe(`the restore into ${JSON.stringify(target)} is complete; the --after hook was stopped (stopped by SIGTERM) before it finished`);
    expect((await pg.psql('SELECT count(*) FROM hook_rows;', target)).trim()).toBe('321');
  });
});

describe('a stop during the --before hook: 143/124, nothing stored', () => {
  for (const stop of ['SIGTERM', 'timeout'] as const) {
    it(`logical backup, ${stop}`, async () => {
      const repo = f.path(`repo-before-${stop}`);
      const hook = await slowHook();
      const args = [...(stop === 'timeout' ? ['--timeout', '3s'] : []), 'backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--before', hook.argv];
      const r = await stopDuringHook(args, hook, stop, f.env());
      expect(r.code, r.stderr).toBe(stop === 'SIGTERM' ? 143 : 124);
      expect(errorLine(r.stderr)).toBe(stop === 'SIGTERM' ? 'stopped by SIGTERM' : 'timed out after 3s');
      const files = await fsp.readdir(repo, { recursive: true }).catch(() => [] as string[]);
      expect(files.filter((x) => /\.(age|json)$/.test(String(x)))).toEqual([]);
    });
  }

  it('physical backup, SIGTERM', async () => {
    const repo = f.path('repo-phys-before');
    const hook = await slowHook();
    const r = await stopDuringHook(['backup', '--physical', '--cluster', 'main', '--to', repo, '--recipient', f.recipient, '--before', hook.argv], hook, 'SIGTERM', f.env(cluster.env()));
    expect(r.code, r.stderr).toBe(143);
    const files = await fsp.readdir(repo, { recursive: true }).catch(() => [] as string[]);
    expect(files.filter((x) => /\.(age|json)$/.test(String(x)))).toEqual([]);
  });
});


describe('a second signal while the first stop waits for a hook that ignores SIGTERM', () => {
  it('exits 143 at once; in JSON log mode its line is JSON too', async () => {
    const pidFile = path.join(dir, 'stubborn.pid');
    const file = path.join(dir, 'stubborn.sh');
    // The sleep inherits the ignored SIGTERM: the teardown waits its grace period before SIGKILL.
    await fsp.writeFile(file, `#!/bin/bash\ntrap '' TERM\necho $$ > '${pidFile}'\nexec sleep 60\n`, { mode: 0o755 });
    const run = startCoffer(['--log-format', 'json', 'backup', '--to', f.path('repo-second'), '--db', db, '--recipient', f.recipient, '--before', `'${file}'`], { env: f.env(), timeoutMs: 30_000, forceKillAfterMs: 1_000 });
    let stderr = '';
    run.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    let pid = 0;
    try {
      expect(await waitFor(async () => (pid = await pidIn(pidFile)) > 0, 20_000)).toBe(true);
      signalIfRunning(run.pid!, 'SIGTERM');
      expect(await waitFor(() => stderr.includes('received SIGTERM'), 5_000)).toBe(true);
      signalIfRunning(run.pid!, 'SIGTERM');
      const r = await run;
      expect(r.exitCode, stderr).toBe(143);
      const lines = String(r.stderr).trim().split('\n');
      for (const l of lines) expect(() => JSON.parse(l), l).not.toThrow();
      expect(JSON.parse(lines.at(-1)!)).toMatchObject({ level: 'error', msg: 'second SIGTERM, exiting now', exit: 143 });
    } finally {
      if (pid) signalIfRunning(pid, 'SIGKILL');
    }
  });
});
