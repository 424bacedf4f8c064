/**
 * Issue 5, items 3 and 5: one backup per (repository, database) at a time — host lock file plus
 * PostgreSQL advisory lock — with `--wait`, takeover of a lock left by a SIGKILLed run, and
 * `--timeout` aborting a slow run cleanly (no manifest, no incomplete multipart upload, lock
 * released).
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { lockFilePath } from '../../src/ops/lock.js';
import { errorLine, runCoffer, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { listAllKeys, listMultipartUploads } from '../harness/rgw.js';
import { logRecords, waitForFile, writeDumpWrapper } from './helpers.js';

const f = useFixture({ name: 'lock-test', db: 'vault' });
const pg = f.pg;

function backupArgs(repo: string, lockDir: string, ...more: string[]): string[] {
  return ['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--lock-dir', lockDir, '--json', ...more];
}

describe('one backup per (repository, database) at a time', () => {
  it('a second run exits 6 naming the holder (lock file, and the advisory lock from another "host"), --wait queues behind it', async () => {
    const repo = f.path('repo-concurrent');
    const lockDir = f.path('locks-a');
    const w = await writeDumpWrapper(f.path('w-concurrent'), pg.binDir, { after: 'block-until-release' });
    const first = startCoffer(backupArgs(repo, lockDir, '--pg-dump-command', w.command), { env: f.env() });
    try {
      await waitForFile(w.started);
      expect(fs.statSync(lockDir).mode & 0o777).toBe(0o700);

      // Same host: the lock file.
      const second = await runCoffer(backupArgs(repo, lockDir), { env: f.env() });
      expect(second.code, second.stderr).toBe(6);
      expect(errorLine(second.stderr)).toMatch(new RegExp(`another backup of database "${f.db}" to this repository is running: coffer run \\w+ \\(pid \\d+ on `));

      // The same repository through other names: a symlink to it, one to its parent, and the
      // spelling with a trailing slash. The same locks.
      await fsp.mkdir(repo, { recursive: true });
      await fsp.symlink(repo, f.path('repo-concurrent-link'));
      await fsp.symlink(path.dirname(repo), f.path('parent-link'));
      for (const alias of [f.path('repo-concurrent-link'), path.join(f.path('parent-link'), path.basename(repo)), `${repo}/`]) {
        const viaAlias = await runCoffer(backupArgs(alias, lockDir), { env: f.env() });
        expect(viaAlias.code, `${alias}: ${viaAlias.stderr}`).toBe(6);
      }

      // Another host (another lock directory): the PostgreSQL advisory lock still refuses.
      const otherHost = await runCoffer(backupArgs(repo, f.path('locks-other-host')), { env: f.env() });
      expect(otherHost.code, otherHost.stderr).toBe(6);
      expect(errorLine(otherHost.stderr)).toMatch(/PostgreSQL advisory lock \(-?\d+, -?\d+\) held by pid \d+, coffer backup \w+/);

      // --wait: queued until the first run finishes, then it succeeds.
      const waiting = startCoffer(backupArgs(repo, lockDir, '--wait', '2m'), { env: f.env() });
      const waitingStderr: string[] = [];
      waiting.stderr?.on('data', (b: Buffer) => waitingStderr.push(b.toString()));
      const end = Date.now() + 60_000;
      while (!waitingStderr.join('').includes('waiting for the lock') && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
      expect(waitingStderr.join('')).toContain('waiting for the lock');
      await fsp.writeFile(w.release, '');
      const [a, b] = await Promise.all([first, waiting]);
      expect(a.exitCode, String(a.stderr)).toBe(0);
      expect(b.exitCode, String(b.stderr)).toBe(0);
      const ids = [a, b].map((r) => (JSON.parse(String(r.stdout)) as BackupManifest[])[0]!.id);
      expect(new Set(ids).size).toBe(2);
      // Both released: the lock directory is empty again.
      expect(fs.readdirSync(lockDir)).toEqual([]);
    } finally {
      await fsp.writeFile(w.release, '').catch(() => undefined);
      first.kill('SIGKILL');
      await first.catch(() => undefined);
    }
  });

  it('a lock left by a SIGKILLed run is taken over with a warning', async () => {
    const repo = f.path('repo-killed');
    const lockDir = f.path('locks-killed');
    const w = await writeDumpWrapper(f.path('w-killed'), pg.binDir, { after: 'block-until-release' });
    const victim = startCoffer(backupArgs(repo, lockDir, '--pg-dump-command', w.command), { env: f.env() });
    try {
      await waitForFile(w.started);
      const lockFiles = fs.readdirSync(lockDir);
      expect(lockFiles).toHaveLength(1);
      const owner = JSON.parse(fs.readFileSync(path.join(lockDir, lockFiles[0]!), 'utf8')) as { pid: number; runId: string };
      expect(owner.pid).toBe(victim.pid);
      victim.kill('SIGKILL');
      const v = await victim;
      expect(v.signal).toBe('SIGKILL');
      // The lock file is still there (nobody removed it) ...
      expect(fs.readdirSync(lockDir)).toEqual(lockFiles);
      // ... and does not block the next run. (--wait only covers the moment the killed run's
      // psql session takes to end on the server; a lock file that is not taken over would still
      // fail this run with exit 6 after the wait.)
      const next = await runCoffer(backupArgs(repo, lockDir, '--wait', '30s'), { env: f.env() });
      expect(next.code, next.stderr).toBe(0);
      const warn = logRecords(next.stderr).find((r) => r.msg === 'took over a stale lock');
      expect(warn, next.stderr).toBeDefined();
      expect(String(warn!.reason)).toBe(`process ${owner.pid} is gone`);
      expect(String(warn!.previous)).toContain(owner.runId);
      expect(fs.readdirSync(lockDir)).toEqual([]);
    } finally {
      await fsp.writeFile(w.release, '').catch(() => undefined);
    }
  });
});

describe('stale lock files', () => {
  it('a pid reused by another program, or a lock from before the last reboot, is taken over; a live owner is not', async () => {
    const repo = f.path('repo-stale');
    const lockDir = f.path('locks-stale');
    await fsp.mkdir(lockDir, { mode: 0o700 });
    const file = lockFilePath(lockDir, `file://${repo}`, f.db);
    const owner = (pid: number, bootId: string | null): string =>
      JSON.stringify({ pid, host: os.hostname(), bootId, runId: 'feedfacecafe', startedAt: new Date().toISOString(), repository: `file://${repo}`, database: f.db });
    const bootId = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();

    // A live coffer-like owner (this test process is node) on this boot: busy.
    await fsp.writeFile(file, owner(process.pid, bootId), { mode: 0o600 });
    const busy = await runCoffer(backupArgs(repo, lockDir), { env: f.env() });
    expect(busy.code, busy.stderr).toBe(6);
    expect(errorLine(busy.stderr)).toContain(`coffer run feedfacecafe (pid ${process.pid} on ${os.hostname()}`);

    // The same pid, but written before the last reboot.
    await fsp.writeFile(file, owner(process.pid, '00000000-0000-0000-0000-000000000000'), { mode: 0o600 });
    const rebooted = await runCoffer(backupArgs(repo, lockDir), { env: f.env() });
    expect(rebooted.code, rebooted.stderr).toBe(0);
    expect(logRecords(rebooted.stderr).find((l) => l.msg === 'took over a stale lock')?.reason).toBe('written before the last reboot');

    // A pid now used by an unrelated program.
    const sleeper = execa('sleep', ['60']);
    try {
      await fsp.writeFile(file, owner(sleeper.pid!, bootId), { mode: 0o600 });
      const reused = await runCoffer(backupArgs(repo, lockDir), { env: f.env() });
      expect(reused.code, reused.stderr).toBe(0);
      expect(logRecords(reused.stderr).find((l) => l.msg === 'took over a stale lock')?.reason).toBe(`process ${sleeper.pid} is now another program`);
    } finally {
      sleeper.kill();
      await sleeper.catch(() => undefined);
    }
    expect(fs.readdirSync(lockDir)).toEqual([]);
  });

  it('refuses a lock directory that others can write to', async () => {
    const lockDir = f.path('locks-open');
    await fsp.mkdir(lockDir);
    await fsp.chmod(lockDir, 0o777);
    const r = await runCoffer(backupArgs(f.path('repo-open'), lockDir), { env: f.env() });
    expect(r.code).toBe(2);
    expect(errorLine(r.stderr)).toBe(`--lock-dir ${lockDir} is writable by group or others (chmod 700 ${lockDir})`);
  });
});

describe('locks are released when a run is stopped', () => {
  it('SIGTERM: exit 143, the lock file is gone and the next run takes the locks without waiting', async () => {
    const repo = f.path('repo-term');
    const lockDir = f.path('locks-term');
    const w = await writeDumpWrapper(f.path('w-term'), pg.binDir, { after: 'sleep' });
    const run = startCoffer(backupArgs(repo, lockDir, '--pg-dump-command', w.command), { env: f.env() });
    await waitForFile(w.started);
    expect(fs.readdirSync(lockDir)).toHaveLength(1);
    run.kill('SIGTERM');
    const r = await run;
    expect(r.exitCode, String(r.stderr)).toBe(143);
    expect(fs.readdirSync(lockDir)).toEqual([]);
    const next = await runCoffer(backupArgs(repo, lockDir), { env: f.env() });
    expect(next.code, next.stderr).toBe(0);
    expect(logRecords(next.stderr).some((l) => l.msg === 'took over a stale lock' || l.msg === 'waiting for the lock')).toBe(false);
  });
});

describe('--timeout', () => {
  const s3f = useFixture({ name: 'lock-timeout', s3: true, db: { fillMB: 12 } });

  it('aborts a slow run cleanly: exit 124, no manifest, no incomplete multipart upload, lock released', async () => {
    const prefix = 'timeout';
    const lockDir = f.path('locks-timeout');
    // pg_dump's output (~12 MiB after zstd) fills two 5 MiB parts, then the "dump" hangs.
    const w = await writeDumpWrapper(f.path('w-timeout'), pg.binDir, { after: 'sleep' });
    const args = ['backup', '--to', s3f.repo(prefix), '--db', s3f.db, '--recipient', f.recipient, '--lock-dir', lockDir, '--part-size', '5MiB'];
    const run = startCoffer(['--timeout', '12s', ...args, '--pg-dump-command', w.command], { env: s3f.env() });
    // While it hangs, the multipart upload is in progress (so there is something to abort).
    let sawUpload = false;
    const end = Date.now() + 60_000;
    while (run.exitCode === null && !sawUpload && Date.now() < end) {
      sawUpload = (await listMultipartUploads(s3f.s3, s3f.bucket, `${prefix}/`)).length > 0;
      if (!sawUpload) await new Promise((r) => setTimeout(r, 200));
    }
    const r = await run;
    expect(sawUpload, 'a multipart upload was in progress before the timeout').toBe(true);
    expect(r.exitCode, String(r.stderr)).toBe(124);
    expect(errorLine(String(r.stderr))).toBe('timed out after 12s');
    expect(await listMultipartUploads(s3f.s3, s3f.bucket, `${prefix}/`)).toEqual([]);
    // Nothing stored at all: no manifest, no dump object (the upload was aborted, not completed).
    expect(await listAllKeys(s3f.s3, s3f.bucket, `${prefix}/`)).toEqual([]);
    expect(fs.readdirSync(lockDir)).toEqual([]);
    // The next run is not blocked by anything the aborted one left.
    const next = await s3f.run([...args, '--json']);
    expect(next.code, next.stderr).toBe(0);
    expect((JSON.parse(next.stdout) as BackupManifest[])[0]!.database).toBe(s3f.db);
  });
});

describe('a --timeout longer than a Node timer holds (2^31-1 ms, ~24.8 days)', () => {
  it('does not fire at once: backups under --timeout 24d, 25d, 30d and 52w complete with exit 0', async () => {
    for (const t of ['24d', '25d', '30d', '52w']) {
      const r = await runCoffer(['--timeout', t, 'backup', '--to', f.path('repo-long'), '--db', f.db, '--recipient', f.recipient, '--lock-dir', f.path('locks-long')], { env: f.env() });
      expect(r.code, `${t}: ${r.stderr}`).toBe(0);
      expect(r.stderr).not.toContain('TimeoutOverflowWarning');
    }
  });
});

describe('the advisory lock through a --psql-command wrapper that pipes into psql', () => {
  it('a psql that stops at an error (here: the database does not exist) ends the wrapper: the run fails at once, naming the cause, and does not wait for ever', async () => {
    // `filter | psql`: the filter reads on after psql has exited, so only the end of its input ends the wrapper.
    const wrapper = f.path('piped-psql.sh');
    await fsp.writeFile(wrapper, `#!/bin/bash\ncat | '${path.join(pg.binDir, 'psql')}' "$@"\n`, { mode: 0o755 });
    const r = await runCoffer(['--timeout', '2m', 'backup', '--to', f.path('repo-piped'), '--db', 'no_such_db_piped', '--recipient', f.recipient, '--lock-dir', f.path('locks-piped'), '--psql-command', wrapper], { env: f.env() });
    expect(r.code, r.stderr).toBe(3);
    expect(errorLine(r.stderr)).toMatch(/no_such_db_piped.*does not exist/);
    // The same wrapper works for a run that succeeds (the session ends with its input).
    const ok = await runCoffer(['--timeout', '2m', 'backup', '--to', f.path('repo-piped'), '--db', f.db, '--recipient', f.recipient, '--lock-dir', f.path('locks-piped'), '--psql-command', wrapper], { env: f.env() });
    expect(ok.code, ok.stderr).toBe(0);
  });
});
