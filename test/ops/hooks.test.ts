/**
 * `--before` / `--after` hooks (issue 16, item 5): argv without a shell, once per run, what the
 * run is and how it went in the environment (and nothing of coffer's own environment); a failing
 * before-hook cancels the run (exit 9, nothing done); a failing after-hook turns a success into
 * exit 9 and leaves a failure's own exit code; hooks are stopped with the run.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { errorLine, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'hooks' });
const pg = f.pg;
let db: string;
let dir: string;

/** A hook script that writes its argv and its whole environment to `<dir>/<name>.env` and exits `code`. */
async function hookScript(name: string, code = 0, extra = ''): Promise<string> {
  const file = path.join(dir, `${name} hook.sh`);
  await fsp.writeFile(file, `#!/bin/bash\nprintf '%s\\n' "$@" > '${path.join(dir, `${name}.args`)}'\nenv > '${path.join(dir, `${name}.env`)}'\n${extra}\nexit ${code}\n`, { mode: 0o755 });
  return file;
}

async function envOf(name: string): Promise<Record<string, string> | undefined> {
  try {
    const text = await fsp.readFile(path.join(dir, `${name}.env`), 'utf8');
    return Object.fromEntries(text.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  } catch {
    return undefined;
  }
}

beforeAll(async () => {
  db = await f.database({ fixture: 'vault', prefix: 'hooks' });
  dir = f.path('hooks');
  await fsp.mkdir(dir, { recursive: true });
});

describe('--before and --after', () => {
  it('run around a backup, once, with what ran and how it went in their environment, and no credentials', async () => {
    const repo = f.path('repo-ok');
    // The before-hook writes a row that the backup must contain: it ran before the dump.
    const marker = `before-${Date.now()}`;
    const before = await hookScript('ok-before', 0, `PGHOST='${pg.host}' PGPORT=${pg.port} PGUSER='${pg.user}' '${path.join(pg.binDir, 'psql')}' -X -q -d '${db}' -c "CREATE TABLE IF NOT EXISTS hook_marker (v text); INSERT INTO hook_marker VALUES ('${marker}')"`);
    const after = await hookScript('ok-after');
    const other = uniqueDbName('hooks_second');
    await pg.psql(`CREATE DATABASE ${other}`);
    f.dropAtEnd(other);
    const r = await f.run(
      ['backup', '--to', repo, '--db', db, '--db', other, '--recipient', f.recipient, '--json', '--before', `'${before}' first "second arg"`, '--after', `'${after}'`],
      { PGPASSWORD: 'not-for-hooks', AWS_SECRET_ACCESS_KEY: 'not-for-hooks-either', COFFER_PGPASSWORD: 'nor-this' },
    );
    expect(r.code, r.stderr).toBe(0);
    const made = (JSON.parse(r.stdout) as Array<{ id: string; database: string }>).map((m) => m.id);
    expect(made).toHaveLength(2);
    expect((await fsp.readFile(path.join(dir, 'ok-before.args'), 'utf8')).split('\n')).toEqual(['first', 'second arg', '']);
    const b = (await envOf('ok-before'))!;
    expect(b).toMatchObject({ COFFER_HOOK: 'before', COFFER_HOOK_COMMAND: 'backup', COFFER_HOOK_DATABASES: `${db},${other}`, COFFER_HOOK_REPOSITORY: `file://${repo}` });
    expect(b.COFFER_HOOK_RUN_ID).toMatch(/^[0-9a-f]{12}$/);
    const a = (await envOf('ok-after'))!;
    expect(a).toMatchObject({ COFFER_HOOK: 'after', COFFER_HOOK_RESULT: 'success', COFFER_HOOK_EXIT_CODE: '0', COFFER_HOOK_BACKUPS: made.join(','), COFFER_HOOK_RUN_ID: b.COFFER_HOOK_RUN_ID });
    for (const env of [a, b]) {
      expect(Object.keys(env).filter((k) => /PASSWORD|SECRET|^PG|^AWS_/.test(k))).toEqual([]);
      expect(Object.values(env).join('\n')).not.toContain('not-for-hooks');
    }
    // The row the before-hook wrote is in the backup.
    const target = uniqueDbName('hooks_r');
    f.dropAtEnd(target);
    const rr = await f.run(['restore', '--from', repo, '--db', db, '--identity', f.identityFile, '--target-db', target]);
    expect(rr.code, rr.stderr).toBe(0);
    expect(await pg.psql(`SELECT v FROM hook_marker WHERE v = '${marker}'`, target)).toBe(marker);
  });

  it('a failing --before cancels the run: exit 9 naming it, nothing stored, no --after; the next run is not blocked', async () => {
    const repo = f.path('repo-before-fails');
    const before = await hookScript('bad-before', 4, "echo 'batch job refused to stop' >&2");
    const after = await hookScript('never-after');
    const r = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--before', `'${before}'`, '--after', `'${after}'`]);
    expect(r.code).toBe(9);
    expect(errorLine(r.stderr)).toContain(`the --before hook (${before}) exited with code 4: batch job refused to stop`);
    expect(await envOf('never-after')).toBeUndefined();
    expect(await fsp.readdir(repo).catch(() => [])).toEqual([]);
    const missing = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--before', '/nonexistent/stop-batch']);
    expect(missing.code).toBe(9);
    expect(errorLine(missing.stderr)).toContain('the --before hook could not start: /nonexistent/stop-batch not found');
    const next = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient]);
    expect(next.code, next.stderr).toBe(0);
  });

  it('a failing --after: exit 9 after a success (the backup is kept), the failure\'s own code after a failure', async () => {
    const repo = f.path('repo-after-fails');
    const after = await hookScript('bad-after', 1, "echo 'could not resume the batch job' >&2");
    const ok = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--json', '--after', `'${after}'`]);
    expect(ok.code).toBe(9);
    expect(errorLine(ok.stderr)).toContain(`the run succeeded, but the --after hook (${after}) exited with code 1: could not resume the batch job`);
    const list = await f.run(['list', '--from', repo, '--json']);
    expect((JSON.parse(list.stdout) as unknown[]).length).toBe(1);

    const failed = await f.run(['backup', '--to', repo, '--db', uniqueDbName('no_such_db'), '--recipient', f.recipient, '--after', `'${after}'`]);
    expect(failed.code).toBe(3);
    const a = (await envOf('bad-after'))!;
    expect(a).toMatchObject({ COFFER_HOOK_RESULT: 'failure', COFFER_HOOK_EXIT_CODE: '3' });
    expect(a.COFFER_HOOK_ERROR).toMatch(/does not exist/);
    expect(failed.stderr).toContain('(after the run had failed)');
  });

  it('run around a restore, with the backup and the target', async () => {
    const repo = f.path('repo-ok');
    const after = await hookScript('restore-after');
    const target = uniqueDbName('hooks_rt');
    f.dropAtEnd(target);
    const r = await f.run(['restore', '--from', repo, '--db', db, '--identity', f.identityFile, '--target-db', target, '--after', `'${after}'`]);
    expect(r.code, r.stderr).toBe(0);
    const a = (await envOf('restore-after'))!;
    expect(a).toMatchObject({ COFFER_HOOK_COMMAND: 'restore', COFFER_HOOK_RESULT: 'success', COFFER_HOOK_TARGET: target, COFFER_HOOK_DATABASE: db });
    expect(a.COFFER_HOOK_BACKUP).toMatch(/^\d{8}T\d{6}Z-[0-9a-f]{8}$/);
  });

  it('is stopped with the run: SIGTERM during a --before hook exits 143 at once and kills it', async () => {
    const pidFile = path.join(dir, 'slow.pid');
    const before = await hookScript('slow-before', 0, `echo $$ > '${pidFile}'\nexec sleep 60`);
    const child = startCoffer(['backup', '--to', f.path('repo-stopped'), '--db', db, '--recipient', f.recipient, '--before', `'${before}'`], { env: f.env() });
    let pid = 0;
    for (let i = 0; i < 200 && !pid; i++) {
      pid = Number((await fsp.readFile(pidFile, 'utf8').catch(() => '')).trim()) || 0;
      if (!pid) await new Promise((r) => setTimeout(r, 50));
    }
    expect(pid).toBeGreaterThan(0);
    const t0 = Date.now();
    process.kill(child.pid!, 'SIGTERM');
    const r = await child;
    expect(r.exitCode).toBe(143);
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(() => process.kill(pid, 0)).toThrow();
  });
});
