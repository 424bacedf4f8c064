/**
 * A throwaway PostgreSQL cluster: initdb into a private temporary directory, start it on a
 * private unix socket directory plus 127.0.0.1:<free port>, and remove everything on stop().
 * Used by the test suite, `coffer demo` and the benchmarks. Never touches the system cluster.
 *
 * initdb and postgres refuse to run as root: when the current process is root, the server
 * processes run as the `postgres` OS user (Debian's postgresql package creates it) and the
 * temporary directory is chowned to it.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { appendFile, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { DatabaseError } from '../errors.js';

export interface ThrowawayCluster {
  /** The private unix socket directory (libpq accepts a directory as host). */
  host: string;
  /** A free TCP port; the server also listens on 127.0.0.1 with scram-sha-256 password auth. */
  port: number;
  /** 'postgres' (trust over the unix socket). */
  superuser: string;
  binDir: string;
  dataDir: string;
  /** libpq env for children: PGHOST, PGPORT, PGUSER (and nothing else). */
  env(): Record<string, string>;
  /** Runs SQL with psql (-X -q -v ON_ERROR_STOP=1 -At) as superuser against db (default 'postgres'); returns stdout. */
  psql(sql: string, db?: string): Promise<string>;
  /** Stops the server (immediate shutdown) and removes the temporary directories. Idempotent. */
  stop(): Promise<void>;
}

export interface StartOptions {
  binDir?: string;
  /** Parent of the temporary directory (default: os.tmpdir()). Must be traversable by the server user. */
  baseDir?: string;
  /** Extra postgresql.conf settings (override the defaults below). */
  settings?: Record<string, string>;
}

const SUPERUSER = 'postgres';
const SERVER_OS_USER = 'postgres';
const START_TIMEOUT_S = 30;
const INITDB_TIMEOUT_MS = 60_000;
/** sun_path is 108 bytes; the socket file is `<dir>/.s.PGSQL.<port>` (+ `.lock`). */
const MAX_SOCKET_DIR_LEN = 80;

const DEFAULT_SETTINGS: Record<string, string> = {
  listen_addresses: '127.0.0.1',
  fsync: 'off',
  full_page_writes: 'off',
  synchronous_commit: 'off',
  shared_buffers: '32MB',
  max_connections: '100',
  timezone: 'UTC',
  log_timezone: 'UTC',
  logging_collector: 'off',
  log_line_prefix: '%m [%p] %q%u@%d ',
  dynamic_shared_memory_type: 'posix',
};

// ---------------------------------------------------------------------------------------------
// Small helpers

/** Last non-empty lines of a text, folded onto one line, bounded in length. */
export function tailOneLine(text: string, lines = 3, maxChars = 600): string {
  const picked = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .slice(-lines)
    .join(' | ');
  return picked.length > maxChars ? '…' + picked.slice(-maxChars) : picked;
}

/** process.env without libpq variables (PGHOST, PGPASSWORD, PGSERVICE, …) that could redirect our children. */
function cleanEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || k.startsWith('PG')) continue;
    out[k] = v;
  }
  return out;
}

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

interface ServerUser {
  uid?: number;
  gid?: number;
}

/** uid/gid to run initdb/postgres as: the `postgres` OS user when root, else ourselves. */
function serverUser(): ServerUser {
  if (!isRoot()) return {};
  const u = spawnSync('id', ['-u', SERVER_OS_USER], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', SERVER_OS_USER], { encoding: 'utf8' });
  const uid = Number.parseInt(u.stdout ?? '', 10);
  const gid = Number.parseInt(g.stdout ?? '', 10);
  if (u.status !== 0 || g.status !== 0 || !Number.isFinite(uid) || !Number.isFinite(gid)) {
    throw new DatabaseError(`running as root but there is no '${SERVER_OS_USER}' OS user to run the throwaway PostgreSQL server as`, {
      hint: 'install the postgresql package (it creates the user) or run as a non-root user',
    });
  }
  return { uid, gid };
}

function confValue(v: string): string {
  return `'${v.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/** A TCP port that was free on 127.0.0.1 a moment ago. */
async function freePort(): Promise<number> {
  return await new Promise<number>((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolvePort(port) : reject(new Error('could not allocate a TCP port'))));
    });
  });
}

function versionOf(dir: string): number {
  const m = /postgresql\/(\d+)(?:\.(\d+))?\/bin\/?$/.exec(dir);
  return m ? Number(m[1]) * 1000 + Number(m[2] ?? 0) : -1;
}

// ---------------------------------------------------------------------------------------------
// Binaries

/**
 * Finds PostgreSQL server binaries: `explicit`, else $COFFER_PG_BIN_DIR, else the newest
 * /usr/lib/postgresql/<N>/bin having initdb, else `pg_config --bindir`.
 */
export function findServerBinDir(explicit?: string): string {
  const hasInitdb = (d: string): boolean => existsSync(join(d, 'initdb')) && existsSync(join(d, 'pg_ctl'));
  const hint = 'install the PostgreSQL server, e.g. `apt-get install postgresql-15` (or `postgresql`), or set COFFER_PG_BIN_DIR';
  for (const [source, dir] of [
    ['binDir option', explicit],
    ['COFFER_PG_BIN_DIR', process.env.COFFER_PG_BIN_DIR],
  ] as const) {
    if (dir === undefined || dir === '') continue;
    if (!hasInitdb(dir)) throw new DatabaseError(`no PostgreSQL server binaries (initdb, pg_ctl) in ${dir} (from ${source})`, { hint });
    return resolve(dir);
  }
  const root = '/usr/lib/postgresql';
  let candidates: string[] = [];
  try {
    candidates = readdirSync(root)
      .map((n) => join(root, n, 'bin'))
      .filter(hasInitdb)
      .sort((a, b) => versionOf(b) - versionOf(a));
  } catch {
    // no Debian-style layout
  }
  if (candidates[0]) return candidates[0];
  const pc = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  const dir = pc.status === 0 ? pc.stdout.trim() : '';
  if (dir && hasInitdb(dir)) return dir;
  throw new DatabaseError('no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin and `pg_config --bindir`)', { hint });
}

// ---------------------------------------------------------------------------------------------
// psql

/** Runs SQL through psql (-X -q -v ON_ERROR_STOP=1 -At, SQL on stdin); returns stdout without the final newline. */
export async function runPsql(binDir: string, libpqEnv: Record<string, string>, sql: string, db = 'postgres'): Promise<string> {
  const r = await execa(join(binDir, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-At', '-d', db], {
    input: sql,
    env: { ...cleanEnv(), ...libpqEnv },
    extendEnv: false,
    reject: false,
    stripFinalNewline: true,
    maxBuffer: 1024 * 1024 * 1024,
  });
  if (r.exitCode !== 0 || r.failed) {
    const why = tailOneLine(String(r.stderr ?? '')) || r.shortMessage || `exit code ${r.exitCode}`;
    throw new DatabaseError(`psql on database ${db} failed: ${why}`);
  }
  return String(r.stdout ?? '');
}

// ---------------------------------------------------------------------------------------------
// Process-exit cleanup

interface Live {
  pgCtl: string;
  dataDir: string;
  dirs: string[];
  user: ServerUser;
  pid: number;
}
const live = new Set<Live>();
let exitHookInstalled = false;

function stopSync(l: Live): void {
  if (existsSync(join(l.dataDir, 'postmaster.pid'))) {
    const r = spawnSync(l.pgCtl, ['stop', '-D', l.dataDir, '-m', 'immediate', '-w', '-t', '10'], {
      ...l.user,
      cwd: '/',
      env: cleanEnv(),
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

// ---------------------------------------------------------------------------------------------
// Start

async function readTail(file: string, lines = 4): Promise<string> {
  try {
    return tailOneLine(await readFile(file, 'utf8'), lines);
  } catch {
    return '';
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
function killHard(pid: number): void {
  if (!(pid > 1)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (processRunning(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

function readPid(dataDir: string): number {
  try {
    return Number.parseInt(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0] ?? '', 10) || 0;
  } catch {
    return 0;
  }
}

/**
 * initdb + start a throwaway cluster (trust on the socket, scram-sha-256 on 127.0.0.1), with
 * durability off and a small footprint. Bounded in time; errors carry the tail of the log.
 */
export async function startThrowawayCluster(opts: StartOptions = {}): Promise<ThrowawayCluster> {
  const binDir = findServerBinDir(opts.binDir);
  const user = serverUser();
  const base = resolve(opts.baseDir ?? tmpdir());
  mkdirSync(base, { recursive: true });
  const rootDir = mkdtempSync(join(base, 'coffer-pg-'));
  const dirs = [rootDir];
  const dataDir = join(rootDir, 'data');
  const logFile = join(rootDir, 'postgres.log');
  let sockDir = join(rootDir, 'sock');
  if (sockDir.length > MAX_SOCKET_DIR_LEN) {
    // the unix socket path would be too long for sun_path: put the socket under the system temp dir
    const alt = mkdtempSync(join(tmpdir(), 'coffer-pgs-'));
    dirs.push(alt);
    sockDir = alt;
  } else {
    mkdirSync(sockDir, { mode: 0o700 });
  }
  const chownAll = (): void => {
    if (user.uid === undefined || user.gid === undefined) return;
    chownSync(rootDir, user.uid, user.gid);
    chownSync(sockDir, user.uid, user.gid);
  };
  const cleanupDirs = async (): Promise<void> => {
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  };
  const serverEnv = { ...cleanEnv(), TZ: 'UTC', LC_ALL: 'C' };
  const pgCtl = join(binDir, 'pg_ctl');

  try {
    chownAll();
    // initdb
    const init = await execa(
      join(binDir, 'initdb'),
      ['-D', dataDir, '-U', SUPERUSER, '--encoding=UTF8', '--locale=C', '--auth-local=trust', '--auth-host=scram-sha-256', '--no-sync', '--no-instructions'],
      { ...user, cwd: rootDir, env: serverEnv, extendEnv: false, reject: false, timeout: INITDB_TIMEOUT_MS, all: true },
    );
    if (init.exitCode !== 0 || init.failed) {
      const output = String(init.all ?? '');
      const errorLines = output.split('\n').filter((l) => /error|fatal|panic|denied/i.test(l)).join('\n');
      const why = tailOneLine(errorLines || output) || (init.shortMessage ?? 'unknown error');
      const hint = /permission denied/i.test(why) ? `every parent of ${rootDir} must be traversable by the server user` : undefined;
      throw new DatabaseError(`initdb failed for the throwaway PostgreSQL cluster: ${why}`, hint ? { hint } : undefined);
    }
    writeFileSync(
      join(dataDir, 'pg_hba.conf'),
      ['# coffer throwaway cluster', 'local all all trust', 'local replication all trust', 'host all all 127.0.0.1/32 scram-sha-256', 'host replication all 127.0.0.1/32 scram-sha-256', ''].join('\n'),
    );
    await appendFile(join(dataDir, 'postgresql.conf'), "\n# coffer throwaway cluster\ninclude_if_exists = 'coffer.conf'\n");

    // start (retry with another port if somebody grabbed ours in the meantime)
    let port = 0;
    let lastError = '';
    for (let attempt = 1; attempt <= 3; attempt++) {
      port = await freePort();
      const settings: Record<string, string> = {
        ...DEFAULT_SETTINGS,
        port: String(port),
        unix_socket_directories: sockDir,
        ...(opts.settings ?? {}),
      };
      const conf = Object.entries(settings)
        .map(([k, v]) => {
          if (!/^[A-Za-z_][A-Za-z0-9_.]*$/.test(k)) throw new DatabaseError(`invalid PostgreSQL setting name: ${JSON.stringify(k)}`);
          return `${k} = ${confValue(v)}`;
        })
        .join('\n');
      writeFileSync(join(dataDir, 'coffer.conf'), conf + '\n');
      if (user.uid !== undefined && user.gid !== undefined) chownSync(join(dataDir, 'coffer.conf'), user.uid, user.gid);
      const started = await execa(pgCtl, ['start', '-D', dataDir, '-l', logFile, '-w', '-t', String(START_TIMEOUT_S), '-s'], {
        ...user,
        cwd: rootDir,
        env: serverEnv,
        extendEnv: false,
        reject: false,
        timeout: (START_TIMEOUT_S + 5) * 1000,
        all: true,
        // pg_ctl's postmaster inherits these; don't keep our pipes open through it
        stdin: 'ignore',
      });
      if (started.exitCode === 0 && !started.failed) {
        lastError = '';
        break;
      }
      const logTail = await readTail(logFile);
      lastError = logTail || tailOneLine(String(started.all ?? '')) || (started.shortMessage ?? 'unknown error');
      // make sure nothing half-started lingers before a retry / giving up
      if (existsSync(join(dataDir, 'postmaster.pid'))) {
        await execa(pgCtl, ['stop', '-D', dataDir, '-m', 'immediate', '-w', '-t', '10'], { ...user, cwd: rootDir, env: serverEnv, extendEnv: false, reject: false });
      }
      if (!/could not bind|address already in use|could not create any TCP\/IP sockets/i.test(lastError)) break;
    }
    if (lastError) throw new DatabaseError(`the throwaway PostgreSQL cluster failed to start (waited up to ${START_TIMEOUT_S} s): ${lastError}`);

    const libpqEnv = { PGHOST: sockDir, PGPORT: String(port), PGUSER: SUPERUSER };
    // pg_ctl -w waits for "ready"; confirm with pg_isready (cheap) in case of an odd build
    const deadline = Date.now() + START_TIMEOUT_S * 1000;
    for (;;) {
      const r = await execa(join(binDir, 'pg_isready'), ['-q', '-d', 'postgres'], { env: { ...cleanEnv(), ...libpqEnv }, extendEnv: false, reject: false, timeout: 5000 });
      if (r.exitCode === 0) break;
      if (Date.now() > deadline) throw new DatabaseError(`the throwaway PostgreSQL cluster is not accepting connections: ${await readTail(logFile)}`);
      await new Promise((r2) => setTimeout(r2, 50));
    }

    const pid = readPid(dataDir);
    const entry: Live = { pgCtl, dataDir, dirs, user, pid };
    live.add(entry);
    installExitHook();
    if (pid > 1) startWatchdog(rootDir, dataDir, pid, dirs.slice(1));

    let stopping: Promise<void> | undefined;
    const stop = async (): Promise<void> => {
      stopping ??= (async () => {
        try {
          if (existsSync(join(dataDir, 'postmaster.pid'))) {
            const r = await execa(pgCtl, ['stop', '-D', dataDir, '-m', 'immediate', '-w', '-t', '15'], {
              ...user,
              cwd: '/',
              env: serverEnv,
              extendEnv: false,
              reject: false,
              timeout: 20_000,
            });
            if (r.exitCode !== 0 || r.failed) killHard(pid);
          }
          // pg_ctl returns once postmaster.pid is gone, a moment before the postmaster exits
          if (!(await waitGone(pid, 10_000))) {
            killHard(pid);
            await waitGone(pid, 5_000);
          }
        } finally {
          live.delete(entry);
          await cleanupDirs();
        }
      })();
      return stopping;
    };

    return {
      host: sockDir,
      port,
      superuser: SUPERUSER,
      binDir,
      dataDir,
      env: () => ({ ...libpqEnv }),
      psql: (sql: string, db?: string) => runPsql(binDir, libpqEnv, sql, db),
      stop,
    };
  } catch (err) {
    // leave nothing behind on failure
    if (existsSync(join(dataDir, 'postmaster.pid'))) {
      await execa(pgCtl, ['stop', '-D', dataDir, '-m', 'immediate', '-w', '-t', '10'], { ...user, cwd: '/', env: serverEnv, extendEnv: false, reject: false });
    }
    await cleanupDirs();
    if (err instanceof DatabaseError) throw err;
    throw new DatabaseError(`could not start the throwaway PostgreSQL cluster: ${err instanceof Error ? tailOneLine(err.message) : String(err)}`, { cause: err });
  }
}
