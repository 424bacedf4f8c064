/**
 * `restore --physical --verify`: proves a restored data directory recovers. pg_verifybackup
 * checks the files against PostgreSQL's own backup_manifest; then a postmaster is started on the
 * directory — as its owner, on a free port and a private socket directory, with a private
 * pg_hba.conf (trust on that socket only) and archiving off — and coffer waits until recovery
 * reached its target (or the server gave up), runs the smoke queries, and stops it cleanly.
 */
import { chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { freePort, readPid, runPsql, tailOneLine } from '../demo/throwaway-cluster.js';
import { processRunning } from '../demo/cluster-cleanup.js';
import { DatabaseError, IntegrityError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { interruptedBy } from '../run/abort.js';

export interface RecoveryCheckRequest {
  binDir: string;
  dataDir: string;
  /** The directory's owner when coffer runs as root (the server runs as it). */
  user: { uid: number; gid: number } | undefined;
  /** The environment the server (and so restore_command) gets, without libpq variables. */
  env: NodeJS.ProcessEnv;
  smoke: string[];
  smokeDb: string;
  /** Roles to try to connect as, in order (the first that exists is used to find the superuser). */
  users: string[];
  hasBackupManifest: boolean;
  recovery: { action: 'promote' | 'pause' | 'shutdown' } | null;
  log: Logger;
  signal: AbortSignal;
}

export interface RecoveryCheck {
  /** pg_verifybackup ran and passed (the backup had a backup_manifest). */
  manifestVerified: boolean;
  /** Time of the last transaction replayed (pg_last_xact_replay_timestamp), if any was. */
  lastReplayed: string | null;
  /** Where the server stands after recovery: promoted (read-write) or paused at the target. */
  state: 'promoted' | 'paused' | 'started';
  smoke: Array<{ sql: string; result: string }>;
  seconds: number;
}

export async function checkRecovery(req: RecoveryCheckRequest): Promise<RecoveryCheck> {
  const t0 = Date.now();
  const asUser = req.user ? { uid: req.user.uid, gid: req.user.gid } : {};
  const env = serverEnv(req.env);
  let manifestVerified = false;
  if (req.hasBackupManifest) {
    const r = await execa(join(req.binDir, 'pg_verifybackup'), ['--quiet', req.dataDir], { ...asUser, env, extendEnv: false, reject: false, all: true, cancelSignal: req.signal });
    if (r.exitCode !== 0) {
      throw new IntegrityError(`pg_verifybackup found the restored files differ from the backup's backup_manifest: ${tailOneLine(String(r.all ?? ''), 2)}`, { hint: 'do not start this directory; use another backup' });
    }
    manifestVerified = true;
    req.log.info('pg_verifybackup: the restored files match the backup_manifest');
  }

  const work = await mkdtemp(join(tmpdir(), 'coffer-verify-'));
  const sock = join(work, 's');
  const logFile = join(work, 'postgres.log');
  const hba = join(work, 'pg_hba.conf');
  await writeFile(hba, 'local all all trust\nlocal replication all trust\n', { mode: 0o600 });
  await mkdir(sock, { mode: 0o700 });
  if (req.user) for (const p of [work, sock, hba]) await chown(p, req.user.uid, req.user.gid);
  const port = await freePort();
  const pgCtl = join(req.binDir, 'pg_ctl');
  const opts = [
    `-c port=${port}`,
    "-c listen_addresses=''",
    `-c unix_socket_directories=${sock}`,
    `-c hba_file=${hba}`,
    // A recovery ends in a promotion: a new timeline, whose history file (and the old
    // timeline's last segment, as .partial) must reach the archive once the server runs for
    // real, or a later restore of this archive follows the abandoned timeline. PostgreSQL marks
    // them for archiving (.ready) only while archiving is on: on, with no command yet (nothing
    // leaves this check); the server's own archive_command sends them when it starts.
    ...(req.recovery ? ['-c archive_mode=on', "-c archive_command=''"] : ['-c archive_mode=off']),
    '-c logging_collector=off',
    // a production shared_buffers may not fit the restore host; recovery does not need it
    '-c shared_buffers=128MB',
  ].join(' ');
  const libpq = { PGHOST: sock, PGPORT: String(port) };
  let started = false;
  try {
    const r = await execa(pgCtl, ['start', '-D', req.dataDir, '-l', logFile, '-W', '-o', opts], { ...asUser, cwd: work, env, extendEnv: false, reject: false, all: true, stdin: 'ignore' });
    if (r.exitCode !== 0) throw new DatabaseError(`could not start the restored directory: ${tailOneLine(String(r.all ?? ''))}`);
    started = true;
    req.log.info('started the restored directory on a private socket: waiting for recovery', { port });
    const role = await waitForRecovery(req, libpq, logFile);
    const q = (sql: string, db = 'template1'): Promise<string> => runPsql(req.binDir, { ...libpq, PGUSER: role }, sql, db);
    const lastReplayed = (await q('SELECT coalesce(pg_last_xact_replay_timestamp()::text, \'\')')).trim() || null;
    const inRecovery = (await q('SELECT pg_is_in_recovery()')).trim() === 't';
    const smoke: RecoveryCheck['smoke'] = [];
    for (const sql of req.smoke) {
      try {
        smoke.push({ sql, result: (await q(sql, req.smokeDb)).trim() });
      } catch (err) {
        throw new DatabaseError(`smoke query failed on the restored directory (database ${req.smokeDb}): ${err instanceof Error ? err.message : String(err)}`, { hint: 'the directory recovered, but does not hold what the query expects' });
      }
    }
    return { manifestVerified, lastReplayed, state: req.recovery ? (inRecovery ? 'paused' : 'promoted') : 'started', smoke, seconds: (Date.now() - t0) / 1000 };
  } finally {
    if (started) await stopServer(pgCtl, req, asUser, env);
    await rm(work, { recursive: true, force: true });
  }
}

/** The server's environment: the caller's (S3 credentials for restore_command) without libpq variables. */
function serverEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && !k.startsWith('PG')) out[k] = v;
  return out;
}

/**
 * Waits until the server accepts connections and recovery is over (promoted) or paused at the
 * target; fails with the server's own FATAL line (and restore_command's complaint) when the
 * postmaster exits. Returns the superuser to connect as.
 */
async function waitForRecovery(req: RecoveryCheckRequest, libpq: Record<string, string>, logFile: string): Promise<string> {
  let role: string | undefined;
  const t0 = Date.now();
  let seen = false;
  for (;;) {
    if (req.signal.aborted) throw interruptedBy(req.signal);
    const pid = readPid(req.dataDir);
    // pg_ctl -W returns before the postmaster wrote its pid file: give it a moment to appear.
    if (pid === 0 && !seen && Date.now() - t0 < 15_000) {
      await new Promise((r) => setTimeout(r, 100));
      continue;
    }
    seen = true;
    if (pid === 0 || !processRunning(pid)) {
      const log = await readLog(logFile);
      throw new IntegrityError(`recovery of the restored directory failed: ${why(log)}`, { hint: 'nothing was started on this data; check the WAL archive (coffer status --cluster) or choose another target or backup' });
    }
    if (role === undefined) role = await findSuperuser(req, libpq);
    if (role !== undefined) {
      const q = (sql: string): Promise<string> => runPsql(req.binDir, { ...libpq, PGUSER: role! }, sql, 'template1');
      const state = await q("SELECT pg_is_in_recovery()::text || ' ' || CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END").catch(() => '');
      if (state.startsWith('false')) return role;
      if (state.trim() === 'true paused' && req.recovery?.action === 'pause') return role;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Connects as each candidate role in turn; returns the bootstrap superuser's name once one answers. */
async function findSuperuser(req: RecoveryCheckRequest, libpq: Record<string, string>): Promise<string | undefined> {
  for (const u of [...new Set(req.users)]) {
    try {
      const name = (await runPsql(req.binDir, { ...libpq, PGUSER: u }, 'SELECT rolname FROM pg_roles WHERE oid = 10', 'template1')).trim();
      if (name) return name;
    } catch {
      // not accepting connections yet, or no such role: try the next
    }
  }
  return undefined;
}

async function readLog(file: string): Promise<string> {
  return readFile(file, 'utf8').catch(() => '');
}

/** The server's reason (its FATAL/PANIC line) and restore_command's last complaint before it, on one line. */
export function why(log: string): string {
  const lines = log.split('\n');
  // The server's refusals of the check's own connection attempts while it starts are FATAL lines
  // too ("the database system is not yet accepting connections"): not the reason it stopped.
  const refusal = /\bFATAL:\s+the database system is (not yet accepting connections|starting up|shutting down|in recovery mode)/;
  const fatalAt = lines.map((l) => /\b(FATAL|PANIC):/.test(l));
  const causeAt = lines.map((l, i) => fatalAt[i]! && !refusal.test(l)).lastIndexOf(true);
  const at = causeAt >= 0 ? causeAt : fatalAt.lastIndexOf(true);
  const fatal = at >= 0 ? lines[at]!.replace(/^.*?\b(FATAL|PANIC):\s*/, '$1: ') : undefined;
  // restore_command's own stderr: the lines that are not the server's (which start with its
  // timestamp); coffer's error line first (node may print other lines after it, e.g. at exit)
  const own = lines.slice(0, at >= 0 ? at : lines.length).filter((l) => l.trim() !== '' && !/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}/.test(l) && !/^\s/.test(l));
  const messageOf = (l: string): { msg: string; error: boolean } => {
    const t = l.trim();
    if (t.startsWith('{')) {
      try {
        const j = JSON.parse(t) as { msg?: unknown; level?: unknown };
        return { msg: String(j.msg ?? t), error: j.level === 'error' };
      } catch {
        // not a JSON log line
      }
    }
    return { msg: t.replace(/^coffer: error: /, ''), error: /^coffer: error: /.test(t) };
  };
  const parsed = own.map(messageOf);
  const fetch = ([...parsed].reverse().find((p) => p.error) ?? parsed[parsed.length - 1])?.msg;
  const parts = [fatal, fetch ? `restore_command: ${fetch.slice(0, 300)}` : undefined].filter(Boolean);
  return parts.length > 0 ? parts.join('; ') : tailOneLine(log, 3) || 'the server exited';
}

async function stopServer(pgCtl: string, req: RecoveryCheckRequest, asUser: { uid?: number; gid?: number }, env: Record<string, string>): Promise<void> {
  if (readPid(req.dataDir) === 0) return;
  const r = await execa(pgCtl, ['stop', '-D', req.dataDir, '-m', 'fast', '-w', '-t', '60'], { ...asUser, cwd: '/', env, extendEnv: false, reject: false, all: true });
  if (r.exitCode !== 0) req.log.warn(`could not stop the verification server cleanly: ${tailOneLine(String(r.all ?? ''))}`);
}
