/**
 * The cleanup of a throwaway PostgreSQL cluster when its owner goes away without stop(): an
 * 'exit' hook for ordinary exits, and a detached watchdog that outlives a SIGKILLed parent.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Guards a started cluster against our exit: the 'exit' hook stops it and removes its
 * directories on an ordinary exit, a detached watchdog after a SIGKILL. {@link unguardCluster}
 * once stop() has done it.
 */
export function guardCluster(l: LiveCluster): void {
  live.add(l);
  installExitHook();
  if (l.pid > 1) startWatchdog(l.dirs[0]!, l.dataDir, l.pid, l.dirs.slice(1));
}

export function unguardCluster(l: LiveCluster): void {
  live.delete(l);
}

/** uid/gid the server processes run as (unset: ourselves). */
export interface ServerUser {
  uid?: number;
  gid?: number;
}

/** A running throwaway cluster, as its cleanup needs it. */
export interface LiveCluster {
  pgCtl: string;
  dataDir: string;
  /** The temporary directory first, then any other directory to remove. */
  dirs: string[];
  user: ServerUser;
  /** The postmaster's pid. */
  pid: number;
  /** The environment pg_ctl runs with (no libpq variables). */
  env: Record<string, string>;
}

const live = new Set<LiveCluster>();
let exitHookInstalled = false;

function stopSync(l: LiveCluster): void {
  if (existsSync(join(l.dataDir, 'postmaster.pid'))) {
    const r = spawnSync(l.pgCtl, ['stop', '-D', l.dataDir, '-m', 'immediate', '-w', '-t', '10'], {
      ...l.user,
      cwd: '/',
      env: l.env,
      stdio: 'ignore',
      timeout: 15_000,
    });
    if (r.status !== 0) killHard(l.pid);
  }
  for (const d of l.dirs) rmSync(d, { recursive: true, force: true });
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const l of live) {
      try {
        stopSync(l);
      } catch {
        // best effort
      }
    }
    live.clear();
  });
}

/**
 * A detached watchdog (`sh`) that outlives a SIGKILLed parent: once the parent process is gone
 * it stops the postmaster (SIGQUIT = immediate shutdown, then SIGKILL) and removes the
 * directories. It exits by itself as soon as the temporary directory disappears (normal stop()).
 */
function startWatchdog(rootDir: string, dataDir: string, pid: number, extraDirs: string[]): void {
  const script = [
    'P="$1"; ROOT="$2"; DATA="$3"; PGPID="$4"; shift 4',
    'while kill -0 "$P" 2>/dev/null; do [ -d "$ROOT" ] || exit 0; sleep 1; done',
    '[ -d "$ROOT" ] || exit 0',
    'mine() { [ "$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null)" = "$PGPID" ]; }',
    'if mine; then kill -QUIT "$PGPID" 2>/dev/null; i=0; while [ $i -lt 50 ] && kill -0 "$PGPID" 2>/dev/null; do sleep 0.2; i=$((i+1)); done; mine && kill -KILL "$PGPID" 2>/dev/null; fi',
    'rm -rf "$ROOT" "$@"',
  ].join('\n');
  try {
    const child = spawn('/bin/sh', ['-c', script, 'coffer-pg-watchdog', String(process.pid), rootDir, dataDir, String(pid), ...extraDirs], {
      detached: true,
      stdio: 'ignore',
      cwd: '/',
    });
    child.on('error', () => undefined);
    child.unref();
  } catch {
    // best effort: the 'exit' hook still covers ordinary exits
  }
}

/** True while the process exists and is not a zombie (an exited child waiting to be reaped). */
export function processRunning(pid: number): boolean {
  if (!(pid > 0)) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true; // no procfs: trust kill(0)
  }
}

/** SIGKILL a known postmaster pid (never 0 or negative: those would signal process groups). */
export function killHard(pid: number): void {
  if (!(pid > 1)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

export async function waitGone(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (processRunning(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}
