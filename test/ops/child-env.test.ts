/**
 * Issue 11, item 3: no child process receives secrets it does not use. During a backup and a
 * restore (each held mid-run by a wrapper that waits for a release file), the environment of
 * every descendant of coffer is read from /proc/PID/environ.
 *
 * - PostgreSQL programs (pg_dump, pg_restore, psql) may get libpq's PGPASSWORD, never the S3
 *   credentials or coffer's own secret variables;
 * - dd, zstd and `pg_restore --list` (which reads a file) get no credentials at all.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { dropDatabase, uniqueDbName } from '../harness/pg.js';
import { waitForFile } from './helpers.js';


const SECRETS = {
  AWS_SECRET_ACCESS_KEY: 'aws-secret-7f3a9c',
  AWS_SESSION_TOKEN: 'aws-session-token-1b2c',
  COFFER_PGPASSWORD: 'coffer-pg-password-99',
  COFFER_S3_SECRET_ACCESS_KEY: 'coffer-s3-secret-42',
  COFFER_S3_ACCESS_KEY_ID: 'coffer-s3-key-id',
  PGPASSWORD: 'libpq-password-5e',
};

// The database is larger than the pipes and buffers between the stages: while the restore is
// held, zstd -d is still running (blocked on its output).
const f = useFixture({ name: 'child-env', db: { fixture: 'vault', prefix: 'childenv', fillMB: 8 } });

// Trust authentication over the socket: the passwords are carried, never checked.
const env = (): Record<string, string> => f.env({ AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE', ...SECRETS });

/** A wrapper that records that it started, waits for `release`, then execs `real`. */
async function holdingWrapper(name: string, real: string): Promise<{ command: string; started: string; release: string }> {
  const dir = f.path(name);
  await fsp.mkdir(dir, { recursive: true });
  const started = path.join(dir, 'started');
  const release = path.join(dir, 'release');
  const command = path.join(dir, `${name}.sh`);
  await fsp.writeFile(
    command,
    `#!/bin/sh\nif [ "$1" = "--version" ]; then exec '${real}' --version; fi\ntouch '${started}'\nwhile [ ! -e '${release}' ]; do sleep 0.05; done\nexec '${real}' "$@"\n`,
    { mode: 0o755 },
  );
  return { command, started, release };
}

interface Proc {
  pid: number;
  cmdline: string;
  env: Map<string, string>;
}

/** Every descendant of `root`, with its command line and environment. */
function descendants(root: number): Proc[] {
  const parent = new Map<number, number>();
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const m = /^\d+ \(.*\) \S (\d+)/s.exec(fs.readFileSync(`/proc/${e}/stat`, 'utf8'));
      if (m) parent.set(Number(e), Number(m[1]));
    } catch {
      // gone
    }
  }
  const out: Proc[] = [];
  const isBelow = (pid: number): boolean => {
    for (let p = parent.get(pid); p !== undefined && p > 1; p = parent.get(p)) if (p === root) return true;
    return false;
  };
  for (const pid of parent.keys()) {
    if (!isBelow(pid)) continue;
    try {
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
      const env = new Map<string, string>();
      for (const kv of fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0')) {
        const i = kv.indexOf('=');
        if (i > 0) env.set(kv.slice(0, i), kv.slice(i + 1));
      }
      out.push({ pid, cmdline, env });
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/** The secret values a process holds, by variable name. */
function secretsIn(p: Proc): string[] {
  const values = new Set(Object.values(SECRETS));
  return [...p.env].filter(([k, v]) => values.has(v) || /^(AWS_SECRET|AWS_SESSION|COFFER_.*(PASSWORD|SECRET|IDENTITY))/.test(k)).map(([k]) => k).sort();
}

function expectOnlyWhatTheyUse(procs: Proc[]): void {
  // The holding wrappers' own `sleep` inherits the wrapper's (pg client's) environment.
  for (const p of procs.filter((x) => !/^sleep /.test(x.cmdline))) {
    const held = secretsIn(p);
    const isPgClient = /(pg_dump|pg_restore|psql)(\.sh)?\b/.test(p.cmdline) && !/--list/.test(p.cmdline);
    if (isPgClient) expect(held, p.cmdline).toEqual(held.includes('PGPASSWORD') ? ['PGPASSWORD'] : []);
    else {
      expect(held, p.cmdline).toEqual([]);
      expect([...p.env.keys()].filter((k) => /^(PG|AWS_|COFFER_)/.test(k)), p.cmdline).toEqual([]);
    }
  }
}

describe('children get only the environment they use', () => {
  it.each([
    ['pzstd (the archive index)', [], /^pzstd /],
    ['dd and zstd (--no-index)', ['--no-index'], /^dd /],
  ] as const)('backup: pg_dump may see PGPASSWORD; %s see no credentials', async (what, extra, other) => {
    const w = await holdingWrapper(`pg_dump-${extra.length}`, path.join(f.pg.binDir, 'pg_dump'));
    const child = startCoffer(['backup', '--to', f.path('repo'), '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', w.command, '--lock-dir', f.path('locks'), ...extra], { env: env() });
    await waitForFile(w.started);
    await new Promise((r) => setTimeout(r, 200));
    const procs = descendants(child.pid!);
    await fsp.writeFile(w.release, '');
    const r = await child;
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const names = procs.map((p) => p.cmdline);
    expect(names.some((c) => c.includes(`pg_dump-${extra.length}.sh`)), names.join('\n')).toBe(true);
    expect(names.some((c) => other.test(c)), `${what}: ${names.join('\n')}`).toBe(true);
    expect(names.some((c) => /zstd/.test(c)), names.join('\n')).toBe(true);
    expect(procs.find((p) => p.cmdline.includes(`pg_dump-${extra.length}.sh`))!.env.has('PGPASSWORD')).toBe(true);
    expectOnlyWhatTheyUse(procs);
  });

  it('restore: pg_restore may see PGPASSWORD; zstd -d and pg_restore --list see no credentials', async () => {
    const w = await holdingWrapper('pg_restore', path.join(f.pg.binDir, 'pg_restore'));
    const target = uniqueDbName('childenv_r');
    const child = startCoffer(['restore', '--from', f.path('repo'), '--identity', f.identityFile, '--target-db', target, '--pg-restore-command', w.command], { env: env() });
    // Held: both pg_restore (the --list branch too) wait; zstd -d is running.
    await waitForFile(w.started);
    await new Promise((r) => setTimeout(r, 300));
    const procs = descendants(child.pid!);
    await fsp.writeFile(w.release, '');
    const r = await child;
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const names = procs.map((p) => p.cmdline);
    expect(names.some((c) => /zstd -d/.test(c)), names.join('\n')).toBe(true);
    expect(names.some((c) => c.includes('pg_restore.sh') && !c.includes('--list')), names.join('\n')).toBe(true);
    expectOnlyWhatTheyUse(procs);
    await dropDatabase(f.pg, target);
  });
});
