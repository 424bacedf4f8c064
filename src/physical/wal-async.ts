/**
 * Asynchronous archiving (`wal-push --async`), modelled on pgBackRest's async archive-push: one
 * node process per segment costs about half a second of CPU before any byte moves (node, the S3
 * SDK), which falls behind a busy server (docs/benchmarks.md, "WAL archiving"). With `--async`:
 *
 * - The **foreground** call (PostgreSQL's archive_command) looks in the spool directory for
 *   `<file>.ok` (stored durably by the worker, and naming the version of the file it read:
 *   device, inode, size, modification time; when they are this file's, remove it and exit 0,
 *   otherwise it is stale: remove it and ask again) or `<file>.error` (the
 *   worker's failure: remove it, fail with its message; PostgreSQL retries, and the worker tries
 *   again). Otherwise it asks for the file (`<file>.req`), starts the worker if none is running,
 *   and waits for one of the two (at most `--async-wait`, default 60 s, then fails: PostgreSQL
 *   retries). It exits 0 only once its own file is durably stored.
 * - The **worker** (one per spool directory, a detached `wal-push --async-worker` with the same
 *   options and environment; `worker.pid` is its lock) keeps one store open and pushes, up to
 *   `--async-parallel` at a time, every file that `pg_wal/archive_status/*.ready` announces and
 *   every `.req`, ahead of PostgreSQL's calls; each success writes `<file>.ok`, each failure
 *   `<file>.error` (atomically). It exits after 10 s without work.
 *
 * The shell front end `bin/coffer-wal-push-async` does the foreground's waiting without node
 * (about 0.3 s of CPU per start, which a busy archiver cannot afford per segment); it hands every
 * case but "`.ok` names this very file" to `coffer wal-push --async`.
 *
 * The contract of wal-push is unchanged: each file goes through {@link walPush} (write-once,
 * identical copy = success, different copy = failure). The spool holds only status files, no
 * WAL; losing it costs a re-push (which finds the identical copy). Do not put it inside the data
 * directory (a base backup would carry it).
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { writeFileAtomic } from '../atomic-write.js';
import { errnoWords, StorageError, UsageError } from '../errors.js';
import type { ObjectStore } from '../store/object-store.js';
import { fileIdentity, walFileNameOf, walPush, type WalPushRequest } from './wal-push.js';
import { makeDirs } from '../mkdirs.js';

const LOCK = 'worker.pid';
const IDLE_EXIT_MS = 10_000;
const POLL_MS = 100;
const SWEEP_MS = 30_000;

export interface AsyncForeground {
  spool: string;
  /**
   * What the worker this call may rely on must be: the cluster, and everything that decides
   * where and how a file is stored (repository, endpoint, recipients, compression) as one line;
   * `frontArgs`: the arguments of the shell front end that called (COFFER_FRONT_ARGS), which the
   * front end compares with its own before it trusts any answer.
   */
  worker: { cluster: string; config: string; frontArgs: string | undefined };
  /** `%p` and `%f` as given, and where relative paths start. */
  file: string;
  name?: string;
  cwd: string;
  /** How long to wait for the worker. */
  waitMs: number;
  /** argv of the worker to start (node, script, args…) and its environment. */
  workerArgv: string[];
  workerEnv: NodeJS.ProcessEnv;
  signal: AbortSignal;
}

/** The foreground half (see the module doc): resolves when the file is stored, throws the worker's failure. */
export async function pushThroughWorker(req: AsyncForeground): Promise<'stored'> {
  const file = walFileNameOf(req.file, req.name);
  await ownSpool(req.spool);
  const ok = path.join(req.spool, `${file}.ok`);
  const error = path.join(req.spool, `${file}.error`);
  const abs = path.resolve(req.cwd, req.file);
  // A file that cannot be read is this call's problem, not the worker's.
  await identityOf(abs);
  await bindSpool(req);
  let requested = false;
  const deadline = Date.now() + req.waitMs;
  for (;;) {
    const okText = await fsp.readFile(ok, 'utf8').catch(() => undefined);
    if (okText !== undefined) {
      await fsp.rm(ok, { force: true });
      // The worker's `.ok` names the file version it stored; one for an earlier file under
      // this name (recycled, or written again after a restore) is not this file's.
      if (okText.trim() === (await identityOf(abs))) return 'stored';
      if (requested) await fsp.rm(path.join(req.spool, `${file}.req`), { force: true });
      requested = false;
      continue;
    }
    if (await exists(error)) {
      const text = (await fsp.readFile(error, 'utf8').catch(() => '')).trim();
      await fsp.rm(error, { force: true });
      throw new StorageError('Failed', `async worker could not archive ${file}: ${text || 'no reason recorded'}`, { hint: `PostgreSQL retries; the worker's log is ${path.join(req.spool, 'worker.log')}` });
    }
    if (!requested) {
      await writeFileAtomic(path.join(req.spool, `${file}.req`), abs, { mode: 0o600 });
      requested = true;
    }
    await ensureWorker(req);
    if (Date.now() > deadline) throw new StorageError('Failed', `async worker did not archive ${file} within ${Math.round(req.waitMs / 1000)} s`, { hint: `PostgreSQL retries; see ${path.join(req.spool, 'worker.log')}` });
    req.signal.throwIfAborted();
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

const CONF = 'worker.conf';

/**
 * Ties the spool to one configuration (`worker.conf`: the cluster and storage line, then the
 * front end's arguments), so that no answer of a worker started with other options is taken:
 * - another cluster's worker is running: refused (one spool directory per cluster);
 * - the same cluster with another repository, endpoint, recipients or compression (options
 *   changed, PostgreSQL reloaded): the running worker is stopped, every answer it left is
 *   removed, and a new worker starts with these options;
 * - only the front end's arguments differ (the same options written otherwise): recorded.
 */
async function bindSpool(req: AsyncForeground): Promise<void> {
  const file = path.join(req.spool, CONF);
  const [config, front] = (await fsp.readFile(file, 'utf8').catch(() => '')).split('\n');
  const want = `${req.worker.config}\n${req.worker.frontArgs ?? ''}\n`;
  if (config === req.worker.config) {
    if (req.worker.frontArgs !== undefined && front !== req.worker.frontArgs) await writeFileAtomic(file, want, { mode: 0o600 });
    return;
  }
  const pid = await workerPid(req.spool);
  if (config !== undefined && config !== '' && !config.startsWith(`cluster ${JSON.stringify(req.worker.cluster)} `) && pid !== undefined) {
    throw new UsageError(`spool directory ${req.spool} is in use by the archiving of another cluster (${config.split(' to ')[0]})`, { hint: 'give each cluster its own --spool-dir (the first argument of coffer-wal-push-async)' });
  }
  if (pid !== undefined) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // gone meanwhile
    }
    for (let i = 0; i < 600 && (await workerPid(req.spool)) !== undefined; i++) await new Promise((r) => setTimeout(r, 100));
    if ((await workerPid(req.spool)) !== undefined) throw new StorageError('Failed', `the async worker (pid ${pid}) started with other options did not stop within 60 s`, { hint: `PostgreSQL retries; see ${path.join(req.spool, 'worker.log')}` });
  }
  // Answers of a worker with other options are not answers for this configuration.
  for (const n of await fsp.readdir(req.spool)) if (/\.(ok|error|req)$/.test(n)) await fsp.rm(path.join(req.spool, n), { force: true });
  await writeFileAtomic(file, want, { mode: 0o600 });
}

/** The pid of the live worker of `spool`, if one runs. */
async function workerPid(spool: string): Promise<number | undefined> {
  const pid = await readPid(path.join(spool, LOCK));
  return pid !== undefined && isWorker(pid) ? pid : undefined;
}

/** {@link fileIdentity} of the file to archive now. */
async function identityOf(abs: string): Promise<string> {
  try {
    return fileIdentity(await fsp.stat(abs, { bigint: true }));
  } catch (err) {
    throw new UsageError(`cannot read ${abs}: ${errnoWords(err)}`, { cause: err, hint: 'archive_command runs in the data directory: pass %p as it is' });
  }
}

/**
 * Creates the spool directory (0700) or checks that it is ours and closed to others: a `.ok`
 * planted by another user would make archive_command report a file stored that is not.
 */
async function ownSpool(spool: string): Promise<void> {
  await makeDirs(spool, 0o700);
  const st = await fsp.lstat(spool);
  const uid = process.getuid?.();
  if (!st.isDirectory() || (uid !== undefined && st.uid !== uid) || (st.mode & 0o022) !== 0) {
    throw new UsageError(`spool directory ${spool} is not a directory owned by this user and closed to others`, { hint: 'use --spool-dir with a private directory (mode 0700) of the PostgreSQL OS user' });
  }
}

/** Starts the worker unless one is alive (its pid in worker.pid). */
async function ensureWorker(req: AsyncForeground): Promise<void> {
  if ((await workerPid(req.spool)) !== undefined) return;
  const log = openSync(path.join(req.spool, 'worker.log'), 'a', 0o600);
  try {
    const child = spawn(req.workerArgv[0]!, req.workerArgv.slice(1), { detached: true, stdio: ['ignore', log, log], env: req.workerEnv, cwd: req.cwd });
    child.unref();
  } finally {
    closeSync(log);
  }
  // Give it a moment to take the lock, so that the next poll does not start a second one.
  for (let i = 0; i < 20; i++) {
    if ((await readPid(path.join(req.spool, LOCK))) !== undefined) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface AsyncWorker {
  spool: string;
  /** The pg_wal directory (the directory of the `%p` the worker was started for). */
  walDir: string;
  parallel: number;
  store: ObjectStore;
  push: Omit<WalPushRequest, 'file' | 'name' | 'store'>;
  log: (msg: string, fields?: Record<string, string | number>) => void;
}

/** The worker (see the module doc). Returns when it has been idle for 10 s, or at once if another worker holds the lock. */
export async function runWorker(w: AsyncWorker): Promise<void> {
  await ownSpool(w.spool);
  const lock = path.join(w.spool, LOCK);
  if (!(await takeLock(lock))) return;
  try {
    let idleSince = Date.now();
    let sweptAt = 0;
    const inFlight = new Map<string, Promise<void>>();
    // Stored by this worker: not pushed again for their `.ready` (PostgreSQL renames it to
    // `.done` a moment after the foreground call exits), only for a new `.req`.
    const done = new Set<string>();
    while (Date.now() - idleSince < IDLE_EXIT_MS && !w.push.signal.aborted) {
      if (Date.now() - sweptAt > SWEEP_MS) {
        await sweep(w);
        sweptAt = Date.now();
      }
      const todo = await pending(w, inFlight, done);
      for (const { file, abs } of todo) {
        if (inFlight.size >= w.parallel) break;
        const job = pushOne(w, file, abs).then(
          (ok) => void (ok && done.add(file)),
        ).finally(() => inFlight.delete(file));
        inFlight.set(file, job);
      }
      if (inFlight.size > 0) {
        idleSince = Date.now();
        await Promise.race([...inFlight.values(), new Promise((r) => setTimeout(r, POLL_MS))]);
      } else await new Promise((r) => setTimeout(r, POLL_MS));
    }
    await Promise.all(inFlight.values());
  } finally {
    await fsp.rm(lock, { force: true });
  }
}

async function pushOne(w: AsyncWorker, file: string, abs: string): Promise<boolean> {
  const t0 = Date.now();
  try {
    const r = await walPush({ ...w.push, store: w.store, file: abs });
    await writeFileAtomic(path.join(w.spool, `${file}.ok`), `${r.identity}\n`, { mode: 0o600 });
    w.log(`${r.outcome === 'stored' ? 'archived' : 'already archived'} ${file}`, { ms: Date.now() - t0 });
    return true;
  } catch (err) {
    await writeFileAtomic(path.join(w.spool, `${file}.error`), `${(err as Error).message}\n`, { mode: 0o600 });
    w.log(`failed ${file}: ${(err as Error).message}`);
    return false;
  } finally {
    await fsp.rm(path.join(w.spool, `${file}.req`), { force: true });
  }
}

/** Files to push: announced `.ready` in pg_wal/archive_status and `.req` in the spool, without a status yet, oldest first. */
async function pending(w: AsyncWorker, inFlight: Map<string, unknown>, done: Set<string>): Promise<Array<{ file: string; abs: string }>> {
  const spool = new Set(await fsp.readdir(w.spool).catch(() => [] as string[]));
  const out = new Map<string, string>();
  for (const n of await fsp.readdir(path.join(w.walDir, 'archive_status')).catch(() => [] as string[])) {
    if (n.endsWith('.ready') && !done.has(n.slice(0, -6))) out.set(n.slice(0, -6), path.join(w.walDir, n.slice(0, -6)));
  }
  for (const n of spool) {
    if (!n.endsWith('.req')) continue;
    const f = n.slice(0, -4);
    const abs = await fsp.readFile(path.join(w.spool, n), 'utf8').catch(() => undefined);
    if (abs) out.set(f, abs.trim());
  }
  return [...out]
    .filter(([f]) => !inFlight.has(f) && !spool.has(`${f}.ok`) && !spool.has(`${f}.error`))
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([file, abs]) => ({ file, abs }));
}

/**
 * Removes answers nobody will read: a `.ok` whose WAL file is gone from pg_wal (archived and
 * recycled) and that is older than a minute. A second `.ok` for a file comes from a request that
 * crossed the first answer; it names the same version, so it is harmless, but it would stay.
 */
async function sweep(w: AsyncWorker): Promise<void> {
  const wal = new Set(await fsp.readdir(w.walDir).catch(() => [] as string[]));
  for (const n of await fsp.readdir(w.spool).catch(() => [] as string[])) {
    if (!n.endsWith('.ok') || wal.has(n.slice(0, -3))) continue;
    const st = await fsp.stat(path.join(w.spool, n)).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > 60_000) await fsp.rm(path.join(w.spool, n), { force: true });
  }
}

/** Exclusive create of the lock with our pid; a lock whose process is gone is taken over. */
async function takeLock(lock: string): Promise<boolean> {
  for (let i = 0; i < 2; i++) {
    try {
      await fsp.writeFile(lock, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = await readPid(lock);
      if (pid !== undefined && isWorker(pid)) return false;
      await fsp.rm(lock, { force: true });
    }
  }
  return false;
}

async function readPid(file: string): Promise<number | undefined> {
  const n = Number.parseInt(await fsp.readFile(file, 'utf8').catch(() => ''), 10);
  return Number.isFinite(n) && n > 0 ? n : undefined;
}

/**
 * Whether `pid` is a running async worker: alive, and (where /proc tells) a process started with
 * `--async-worker`. A pid left in worker.pid by a worker that died with the machine can belong
 * to any process after a reboot; taking it for the worker would stall archiving for good.
 */
function isWorker(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  let cmdline: string;
  try {
    cmdline = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
  } catch {
    return existsSync('/proc/self') ? false : true; // gone meanwhile; or no /proc: trust kill -0
  }
  return cmdline.split('\0').includes('--async-worker');
}

async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}
