/**
 * A throwaway PostgreSQL cluster: initdb into a private temporary directory, start it on a
 * private unix socket directory plus 127.0.0.1:<free port>, and remove everything on stop().
 * Used by the test suite, `coffer demo` and the benchmarks. Never touches the system cluster.
 *
 * initdb and postgres refuse to run as root: when the current process is root, the server
 * processes run as the `postgres` OS user (Debian's postgresql package creates it) and the
 * temporary directory is chowned to it.
 *
 * This module is its lifecycle (initdb, start, stop); ./server-binaries.ts finds the server
 * programs, ./cluster-cleanup.ts stops and removes a cluster whose owner died without stop().
 */
import { spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { appendFile, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { DatabaseError } from '../errors.js';
import { psqlQuery } from '../pg/psql.js';
import { runChild } from '../pg/tools.js';
import { guardCluster, killHard, unguardCluster, waitGone, type LiveCluster, type ServerUser } from './cluster-cleanup.js';
import { findServerBinDir } from './server-binaries.js';

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
  /** Runs SQL with psql ({@link psqlQuery}: tuples only, stops at the first error) as superuser against db (default 'postgres'); returns stdout. */
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
  /** Extra environment of the server (its archive_command and restore_command inherit it). */
  env?: Record<string, string>;
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
export function cleanEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || k.startsWith('PG')) continue;
    out[k] = v;
  }
  return out;
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** uid/gid to run initdb/postgres as: the `postgres` OS user when root, else ourselves. */
function serverUser(): ServerUser {
  if (!isRoot()) return {};
  const u = osUser(SERVER_OS_USER);
  if (!u) {
    throw new DatabaseError(`running as root but there is no '${SERVER_OS_USER}' OS user to run the throwaway PostgreSQL server as`, {
      hint: 'install the postgresql package (it creates the user) or run as a non-root user',
    });
  }
  return u;
}

/** uid and gid of an OS user (a name or a number), or `undefined` when there is no such user. */
export function osUser(name: string): { uid: number; gid: number } | undefined {
  const u = spawnSync('id', ['-u', name], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', name], { encoding: 'utf8' });
  const uid = Number.parseInt(u.stdout ?? '', 10);
  const gid = Number.parseInt(g.stdout ?? '', 10);
  if (u.status !== 0 || g.status !== 0 || !Number.isFinite(uid) || !Number.isFinite(gid)) return undefined;
  return { uid, gid };
}

/** A postgresql.conf string value: single-quoted, quotes doubled, backslashes escaped. */
export function confValue(v: string): string {
  return `'${v.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/** A TCP port that was free on 127.0.0.1 a moment ago. */
export async function freePort(): Promise<number> {
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

/** Runs SQL through psql (SQL on stdin, stopping at the first error, tuples only); returns stdout without the final newline. */
export async function runPsql(binDir: string, libpqEnv: Record<string, string>, sql: string, db = 'postgres'): Promise<string> {
  const out = await psqlQuery({ psql: [join(binDir, 'psql')] }, { params: {} }, db, sql, {
    env: { ...cleanEnv(), ...libpqEnv },
    what: `psql on database ${db}`,
    // The demo's and the tests' own SQL, which names its tables as any session does.
    userSql: true,
    explain: (f) => new DatabaseError(`psql on database ${db} failed: ${tailOneLine(f.stderr.text()) || (f.signal ? `killed by ${f.signal}` : `exit code ${f.code}`)}`),
  });
  return out.replace(/\r?\n$/, '');
}

// ---------------------------------------------------------------------------------------------
// Start

export async function readTail(file: string, lines = 4): Promise<string> {
  try {
    return tailOneLine(await readFile(file, 'utf8'), lines);
  } catch {
    return '';
  }
}

export function readPid(dataDir: string): number {
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
  const serverEnv = { ...cleanEnv(), TZ: 'UTC', LC_ALL: 'C', ...(opts.env ?? {}) };
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
      const ready = await runChild([join(binDir, 'pg_isready'), '-q', '-d', 'postgres'], { env: { ...cleanEnv(), ...libpqEnv }, what: 'pg_isready', signal: AbortSignal.timeout(5000) }).then(
        () => true,
        () => false,
      );
      if (ready) break;
      if (Date.now() > deadline) throw new DatabaseError(`the throwaway PostgreSQL cluster is not accepting connections: ${await readTail(logFile)}`);
      await new Promise((r2) => setTimeout(r2, 50));
    }

    const pid = readPid(dataDir);
    const entry: LiveCluster = { pgCtl, dataDir, dirs, user, pid, env: cleanEnv() };
    guardCluster(entry);

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
          unguardCluster(entry);
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
