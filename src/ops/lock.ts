/**
 * One backup per (repository, database) at a time, on this host and across hosts:
 *
 * 1. a lock file in the lock directory (an exclusive atomic write, mode 0600, in a 0700 directory
 *    we own) holding pid, start time, host, boot id and run id. A lock file whose process is gone
 *    (or that was written before the last reboot) is stale: it is taken over with a warning;
 * 2. a PostgreSQL advisory lock (`pg_try_advisory_lock`) on a key derived from the repository
 *    and the database, held by a psql session kept open for the whole run (psql reads its SQL
 *    from a pipe). If coffer dies, psql sees end-of-input and exits, and the server releases it.
 *
 * Both are released on every exit path; `--wait` polls until both are free.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import * as path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { writeFileAtomic } from '../atomic-write.js';
import { BusyError, CofferError, errnoWords, UsageError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import type { ConnectionSpec } from '../pg/connection.js';
import { PsqlSession } from '../pg/psql.js';
import type { PgTools } from '../pg/tools.js';
import { interruptedBy } from '../run/abort.js';
import { makeDirs } from '../mkdirs.js';

/** What a lock file holds. */
export interface LockOwner {
  pid: number;
  host: string;
  bootId: string | null;
  runId: string;
  startedAt: string;
  repository: string;
  database: string;
  /** The command holding it, when not a backup (`rekey`). */
  command?: string;
}

export interface LockRequest {
  /** Repository identity (e.g. `s3://bucket/prefix`, `file:///path`): part of the key. */
  repository: string;
  /** What is backed up: a database name, or `cluster=<name>` for a physical backup. Part of the key. */
  database: string;
  /** How messages name it (default: `database "<database>"`). */
  subject?: string;
  /** The command taking it, when not a backup (`rekey`): recorded in the lock file, named in messages. */
  command?: string;
  lockDir: string;
  runId: string;
  /**
   * The server that holds the advisory lock, and the database its session connects to (default
   * `database`). Absent: the lock file only (a stopped cluster's directory has no server).
   */
  advisory?: { tools: PgTools; conn: ConnectionSpec; connectTo?: string };
  env: NodeJS.ProcessEnv;
  /** How long to poll for a held lock (0: fail at once with BusyError). */
  waitMs: number;
  /** Poll interval while waiting (default 1 s). */
  pollMs?: number;
  signal: AbortSignal;
  log: Logger;
}

/** A held lock; `release()` is idempotent and never throws. */
export interface HeldLock {
  readonly file: string;
  readonly advisoryKey: [number, number];
  /**
   * Asks one query that prints one line through the advisory lock's own session, when that
   * session is connected to the locked database: the backup's probe needs no connection of its own.
   */
  readonly ask?: (sql: string) => Promise<string>;
  release(): Promise<void>;
}

/**
 * The default lock directory, one per OS user (a lock directory must be its user's own, and
 * root's runs must not lock the PostgreSQL user's physical backups out of a shared one; runs of
 * different users on one database still meet at its advisory lock): `$XDG_RUNTIME_DIR/coffer`,
 * else `/run/lock/coffer-<uid>` when `/run/lock` is writable, else `<tmpdir>/coffer-locks-<uid>`.
 */
export function defaultLockDir(env: NodeJS.ProcessEnv): string {
  if (env.XDG_RUNTIME_DIR) return path.join(env.XDG_RUNTIME_DIR, 'coffer');
  const uid = process.getuid?.() ?? 'user';
  try {
    fs.accessSync('/run/lock', fs.constants.W_OK);
    return `/run/lock/coffer-${uid}`;
  } catch {
    return path.join(tmpdir(), `coffer-locks-${uid}`);
  }
}

/** Two signed 32-bit integers from sha256(repository NUL database): the advisory lock key. */
function advisoryKey(repository: string, database: string): [number, number] {
  const h = createHash('sha256').update(`coffer\0${repository}\0${database}`).digest();
  return [h.readInt32BE(0), h.readInt32BE(4)];
}

/** The lock file of (repository, database) in `lockDir`. */
export function lockFilePath(lockDir: string, repository: string, database: string): string {
  return path.join(lockDir, `backup-${createHash('sha256').update(`${repository}\0${database}`).digest('hex').slice(0, 32)}.lock`);
}

let cachedBootId: string | null | undefined;
function bootId(): string | null {
  if (cachedBootId === undefined) {
    try {
      cachedBootId = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || null;
    } catch {
      cachedBootId = null;
    }
  }
  return cachedBootId;
}

/** Whether a process with this PID exists on this host (EPERM: it does, owned by someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Creates the lock directory (0700) or checks that an existing one is ours and private. */
async function ensureLockDir(dir: string): Promise<void> {
  try {
    await makeDirs(dir, 0o700);
  } catch (err) {
    throw new UsageError(`--lock-dir ${dir}: cannot create it: ${errnoWords(err)}`, {
      hint: 'choose a writable directory with --lock-dir',
    });
  }
  const st = await fsp.lstat(dir);
  if (!st.isDirectory()) throw new UsageError(`--lock-dir ${dir} is not a directory`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new UsageError(`--lock-dir ${dir} belongs to another user (uid ${st.uid})`, { hint: 'use a directory owned by the user running coffer' });
  }
  if ((st.mode & 0o022) !== 0) {
    throw new UsageError(`--lock-dir ${dir} is writable by group or others`, { hint: `chmod 700 ${dir}` });
  }
}

type FileAttempt = { ok: true } | { ok: false; holder: string };

/** Whether a lock file's content describes a run that cannot be running any more. */
function staleReason(owner: LockOwner | undefined, st: fs.Stats | undefined): string | undefined {
  if (!owner) {
    // Empty or garbled: a writer that died between create and write (or one writing now).
    if (st && Date.now() - st.mtimeMs > 10_000) return 'unreadable lock file older than 10 s';
    return undefined;
  }
  const myBoot = bootId();
  if (owner.host === hostname() && owner.bootId && myBoot && owner.bootId !== myBoot) return 'written before the last reboot';
  if (owner.host === hostname() && !processAlive(owner.pid)) return `process ${owner.pid} is gone`;
  if (owner.host === hostname() && owner.pid !== process.pid) {
    // The pid may have been reused by an unrelated program since the owner died.
    let cmdline: string | undefined;
    try {
      cmdline = fs.readFileSync(`/proc/${owner.pid}/cmdline`, 'utf8');
    } catch {
      cmdline = undefined; // no /proc, or the process just exited: judged on the next poll
    }
    if (cmdline !== undefined && cmdline !== '' && !/node|coffer/i.test(cmdline)) return `process ${owner.pid} is now another program`;
  }
  return undefined;
}

function describeOwner(o: LockOwner | undefined): string {
  if (!o) return 'another coffer run (lock file being written)';
  return `coffer ${o.command ? `${o.command} ` : ''}run ${o.runId} (pid ${o.pid} on ${o.host}, started ${o.startedAt})`;
}

async function readOwner(file: string): Promise<{ owner?: LockOwner; st?: fs.Stats; text?: string }> {
  try {
    const [text, st] = await Promise.all([fsp.readFile(file, 'utf8'), fsp.stat(file)]);
    try {
      const o = JSON.parse(text) as LockOwner;
      if (typeof o.pid === 'number' && typeof o.host === 'string') return { owner: o, st, text };
    } catch {
      // garbled
    }
    return { st, text };
  } catch {
    return {};
  }
}

async function tryLockFile(file: string, owner: LockOwner, log: Logger): Promise<FileAttempt> {
  const content = `${JSON.stringify(owner)}\n`;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await writeFileAtomic(file, content, { mode: 0o600, exclusive: true });
      return { ok: true };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new UsageError(`cannot create the lock file ${file}: ${errnoWords(err)}`, {
          hint: 'check --lock-dir',
        });
      }
    }
    const seen = await readOwner(file);
    if (seen.text === undefined && seen.st === undefined) continue; // vanished: retry the create
    const reason = staleReason(seen.owner, seen.st);
    if (!reason) return { ok: false, holder: describeOwner(seen.owner) };
    // Take it over: move it aside, then make sure what we moved is what we judged stale (a
    // competing taker may have replaced it meanwhile); if not, put it back.
    const aside = `${file}.stale-${process.pid}`;
    try {
      await fsp.rename(file, aside);
    } catch {
      continue;
    }
    const moved = await fsp.readFile(aside, 'utf8').catch(() => '');
    if (moved !== seen.text) {
      await fsp.link(aside, file).catch(() => undefined);
      await fsp.rm(aside, { force: true });
      continue;
    }
    await fsp.rm(aside, { force: true });
    log.warn('took over a stale lock', { lock: file, previous: describeOwner(seen.owner), reason });
  }
  const seen = await readOwner(file);
  return { ok: false, holder: describeOwner(seen.owner) };
}

/** A psql session that holds an advisory lock for as long as its stdin stays open. */
function openAdvisorySession(req: LockRequest, advisory: NonNullable<LockRequest['advisory']>): PsqlSession {
  const conn: ConnectionSpec = { ...advisory.conn, params: { ...advisory.conn.params, application_name: `coffer backup ${req.runId}` } };
  const database = advisory.connectTo ?? req.database;
  return PsqlSession.open(advisory.tools, { conn, database, env: req.env }, { what: `connect to database ${JSON.stringify(database)} (advisory lock)`, signal: req.signal });
}

let markerSeq = 0;

/**
 * The repository as the locks know it: a directory repository by its real path, so that two runs
 * reaching it through different names (a symlink, a bind mount's other path) take the same locks.
 * The part of the path that does not exist yet is kept as given, under its nearest real ancestor.
 */
export async function canonicalRepository(repository: string): Promise<string> {
  if (!repository.startsWith('file://')) return repository;
  const rest: string[] = [];
  for (let p = repository.slice('file://'.length); ; p = path.dirname(p)) {
    try {
      return `file://${path.join(await fsp.realpath(p), ...rest.reverse())}`;
    } catch {
      if (path.dirname(p) === p) return repository;
      rest.push(path.basename(p));
    }
  }
}

/**
 * Takes both locks for (repository, database), waiting up to `waitMs`. Throws BusyError naming
 * the holder when they stay taken; InterruptedError when the run is stopped while waiting.
 */
export async function acquireBackupLock(req: LockRequest): Promise<HeldLock> {
  await ensureLockDir(req.lockDir);
  const repository = await canonicalRepository(req.repository);
  const file = lockFilePath(req.lockDir, repository, req.database);
  const key = advisoryKey(repository, req.database);
  const owner: LockOwner = {
    pid: process.pid,
    host: hostname(),
    bootId: bootId(),
    runId: req.runId,
    startedAt: new Date().toISOString(),
    repository: req.repository,
    database: req.database,
    ...(req.command ? { command: req.command } : {}),
  };
  const deadline = Date.now() + req.waitMs;
  const poll = req.pollMs ?? 1000;
  let session: PsqlSession | undefined;
  let haveFile = false;
  let logged = false;
  const releaseAll = async (): Promise<void> => {
    if (session) {
      const s = session;
      session = undefined;
      await s.close();
    }
    if (haveFile) {
      haveFile = false;
      await fsp.rm(file, { force: true }).catch(() => undefined);
    }
  };
  try {
    for (;;) {
      if (req.signal.aborted) throw interruptedBy(req.signal);
      let holder: string | undefined;
      if (!haveFile) {
        const r = await tryLockFile(file, owner, req.log);
        if (r.ok) haveFile = true;
        else holder = `${r.holder}; lock file ${file}`;
      }
      if (haveFile && req.advisory === undefined) return { file, advisoryKey: key, release: releaseAll };
      if (haveFile && req.advisory !== undefined) {
        session ??= openAdvisorySession(req, req.advisory);
        const m = `coffer_lock_${process.pid}_${++markerSeq}`;
        const got = await session.ask(`SELECT pg_try_advisory_lock(${key[0]}, ${key[1]});`, m);
        if (got === 't') {
          const held = session;
          const ask = (sql: string): Promise<string> => held.ask(sql, `coffer_ask_${process.pid}_${++markerSeq}`);
          return { file, advisoryKey: key, release: releaseAll, ...((req.advisory.connectTo ?? req.database) === req.database ? { ask } : {}) };
        }
        const who = await session.ask(
          `SELECT coalesce(string_agg(format('pid %s, %s, from %s since %s', a.pid, coalesce(nullif(a.application_name, ''), 'unknown application'), coalesce(host(a.client_addr), 'local socket'), to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')), '; '), 'a session that just ended') FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND l.classid = ${key[0] >>> 0}::bigint::oid AND l.objid = ${key[1] >>> 0}::bigint::oid AND l.objsubid = 2;`,
          `${m}_who`,
        );
        holder = `PostgreSQL advisory lock (${key[0]}, ${key[1]}) held by ${who}`;
        // Keep neither while waiting, so the holder on this host is not blocked by us.
        await releaseAll();
      }
      if (Date.now() + poll > deadline) {
        const subject = req.subject ?? `database ${JSON.stringify(req.database)}`;
        throw new BusyError(req.command ? `${req.command}: another run holds the lock of ${subject} in this repository: ${holder}` : `another backup of ${subject} to this repository is running: ${holder}`, {
          hint: req.waitMs > 0 ? 'it did not finish within --wait; try later or raise --wait' : 'wait for it, or pass --wait DURATION to queue behind it',
        });
      }
      if (!logged) {
        req.log.info('waiting for the lock', { database: req.database, holder });
        logged = true;
      }
      await delay(poll, undefined, { signal: req.signal }).catch(() => undefined); // ends early on a stop
    }
  } catch (err) {
    await releaseAll();
    if (req.signal.aborted && !(err instanceof CofferError && err.kind !== 'database')) throw interruptedBy(req.signal);
    throw err;
  }
}
