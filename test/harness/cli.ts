import { execa, type ResultPromise } from 'execa';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateIdentity } from '../../src/crypto/age.js';
import type { RgwInfo, PgInfo } from './global-setup.js';

/** The built CLI (npm test builds it first). */
export const COFFER_BIN = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

export interface CofferRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * `NODE_V8_COVERAGE` for a node child of a test, when the suite runs with coverage
 * (scripts/test.sh sets `COFFER_TEST_V8_COVERAGE` to a directory; scripts/coverage.mjs merges the
 * raw files written there with vitest's in-process coverage). Empty otherwise. The variable is
 * not set on the vitest processes themselves: their coverage is vitest's.
 */
export function coverageEnv(): Record<string, string> {
  const dir = process.env.COFFER_TEST_V8_COVERAGE;
  return dir ? { NODE_V8_COVERAGE: dir } : {};
}

/** Environment with nothing inherited that could change coffer's behaviour. */
export function baseEnv(extra: Record<string, string | undefined> = {}): Record<string, string> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/root',
    LANG: 'C.UTF-8',
    COFFER_LOG_FORMAT: 'json',
    ...coverageEnv(),
  };
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) env[k] = v;
  return env;
}

/** libpq variables for the test cluster, with pg_dump/psql from the same major version. */
export function pgEnv(pg: Pick<PgInfo, 'host' | 'port' | 'user' | 'binDir'>): Record<string, string> {
  return { PGHOST: pg.host, PGPORT: String(pg.port), PGUSER: pg.user, COFFER_PG_BIN: pg.binDir };
}

/** AWS SDK variables for a RGW user. */
export function s3Env(rgw: RgwInfo, user?: string): Record<string, string> {
  const keys = user ? rgw.users[user]! : rgw.admin;
  return {
    AWS_ACCESS_KEY_ID: keys.accessKeyId,
    AWS_SECRET_ACCESS_KEY: keys.secretAccessKey,
    AWS_ENDPOINT_URL_S3: rgw.endpoint,
    AWS_REGION: rgw.region,
  };
}

/** Starts coffer without waiting (for tests that kill or signal it). */
export function startCoffer(
  args: string[],
  opts: { env: Record<string, string>; cwd?: string; timeoutMs?: number; forceKillAfterMs?: number },
): ResultPromise<{ reject: false; all: false }> {
  return execa(process.execPath, [COFFER_BIN, ...args], {
    env: { ...coverageEnv(), ...opts.env },
    extendEnv: false,
    cwd: opts.cwd,
    reject: false,
    stdin: 'ignore',
    timeout: opts.timeoutMs ?? 120_000,
    // execa's default: SIGKILL 5 s after a .kill(); a test that times the exit after a signal sets its own.
    ...(opts.forceKillAfterMs !== undefined ? { forceKillAfterDelay: opts.forceKillAfterMs } : {}),
  }) as unknown as ResultPromise<{ reject: false; all: false }>;
}

/**
 * Signals a process that may already have ended: a run started by {@link startCoffer}, or one of
 * its children (a quick run can finish before the moment a test picked). Then nothing is sent,
 * and the test sees the exit status. Not `child.kill`: execa adds a SIGKILL 5 s later.
 */
export function signalIfRunning(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/** Runs coffer to completion. */
export async function runCoffer(args: string[], opts: { env: Record<string, string>; cwd?: string; timeoutMs?: number; input?: string }): Promise<CofferRun> {
  const r = await execa(process.execPath, [COFFER_BIN, ...args], {
    env: { ...coverageEnv(), ...opts.env },
    extendEnv: false,
    cwd: opts.cwd,
    reject: false,
    timeout: opts.timeoutMs ?? 120_000,
    ...(opts.input !== undefined ? { input: opts.input } : { stdin: 'ignore' as const }),
  });
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/**
 * The databases a `coffer drill` run made, by the name its log gives ('backup opened', before it
 * makes any). Other test files share the cluster and may run drills at the same time.
 */
export function drillNames(stderr: string): string[] {
  return [...new Set(stderr.match(/coffer_drill_[0-9a-f]{8}/g) ?? [])];
}

/** The `msg` of coffer's last JSON log line at level error (the one-line cause). */
export function errorLine(stderr: string): string {
  const lines = stderr.trim().split('\n').filter(Boolean);
  for (let i = lines.length - 1; i >= 0; i--) {
    try {
      const rec = JSON.parse(lines[i]!) as { level?: string; msg?: string };
      if (rec.level === 'error') return rec.msg ?? '';
    } catch {
      // not JSON: ignore
    }
  }
  return '';
}

/** A fresh age identity written 0600 into `dir`: the file and its recipient. */
export async function writeIdentityFile(dir: string, name = 'identity.txt'): Promise<{ identityFile: string; recipient: string }> {
  const id = await generateIdentity();
  const identityFile = path.join(dir, name);
  await fsp.writeFile(identityFile, id.fileText, { mode: 0o600 });
  return { identityFile, recipient: id.recipient };
}
