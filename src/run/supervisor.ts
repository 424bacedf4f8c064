/**
 * The owner of every child process of a run (pg_dump, dd, zstd, pg_restore, psql, pg_dumpall),
 * and the judge of which failure of the run is its cause.
 *
 * Rules it enforces, so that no stage can break them:
 * - **Every pipe has a reader from the moment the child exists.** `spawn` attaches stdout to a
 *   buffer stream in the same tick (or hands the pipe to the next child, fd to fd). Node resumes
 *   and discards an exited child's unread stdout; a reader attached after an `await` can find
 *   nothing there (a backup of zero bytes that exits 0).
 * - **A child is done when it exits**, not when somebody drained its pipes: `done` settles on
 *   exit (stderr is read for a short bound afterwards, for the message). A stalled consumer can
 *   no longer keep a run waiting for a `close` that never comes.
 * - **One teardown.** {@link Supervisor.teardown} kills every live child (SIGTERM, SIGKILL after
 *   a bound), destroys every pipe, awaits every exit with a bound, and keeps the event loop alive
 *   while it does: node cannot drain its loop (and exit 0 or 1) with the run half torn down.
 * - **The cause wins.** {@link Supervisor.fail} records every failure in arrival order;
 *   {@link Supervisor.cause} returns the first in causal order: a stop signal, then an integrity
 *   failure, then a storage failure, then usage, then the rest; echoes of our own teardown
 *   (killed by our SIGTERM, aborted, premature close, EPIPE) come last. The others are kept as
 *   the cause's `consequences` for debug output.
 * - **Children get only the environment they are given** (`env` is required).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { CofferError, DatabaseError, IntegrityError, InterruptedError, StorageError, UsageError } from '../errors.js';
import { followAbort, interruptedBy, isAbortEcho } from './abort.js';

/** How long a child gets between SIGTERM and SIGKILL in a teardown. */
const KILL_GRACE_MS = 5_000;
/** How long a teardown waits for exits after SIGKILL before it reports a child as stuck. */
const EXIT_BOUND_MS = 5_000;
/** After a child exits, how long its stderr may stay open (a grandchild holding it) before the message is taken as it is. */
const STDERR_BOUND_MS = 2_000;

/** A line PostgreSQL's tools print for the server's (or libpq's) error: `…ERROR:  relation "x" already exists`. */
// Also libpq's own words when the server went away mid-statement (pg_restore prints no ERROR: then).
const PG_ERROR_LINE = /\b(?:ERROR|FATAL|PANIC):\s|server closed the connection unexpectedly|connection to server was lost|no connection to the server/;
/** Longest line kept while looking for the first error line. */
const LINE_MAX = 2048;
/** Lines kept after the first error line (the statement pg_restore prints follows it). */
const FOLLOWING_MAX = 12;

/**
 * Keeps the last `max` bytes written to it (a child's stderr, for error messages), and the first
 * PostgreSQL error line with a few lines after it, however much follows (a long `Command was:`
 * statement pushes pg_restore's `ERROR:` line out of the tail).
 */
export class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  private partial: Buffer[] = [];
  private partialLen = 0;
  private first: string | undefined;
  private following: string[] = [];
  constructor(private readonly max = 8192) {}
  push(b: Buffer): void {
    this.chunks.push(b);
    this.size += b.length;
    while (this.size - this.chunks[0]!.length >= this.max) this.size -= this.chunks.shift()!.length;
    this.scanLines(b);
  }
  private scanLines(b: Buffer): void {
    let start = 0;
    while (start < b.length && this.following.length < FOLLOWING_MAX) {
      const nl = b.indexOf(0x0a, start);
      this.keepPartial(b.subarray(start, nl < 0 ? b.length : nl));
      if (nl < 0) return;
      this.line(Buffer.concat(this.partial).toString('utf8'));
      this.partial = [];
      this.partialLen = 0;
      start = nl + 1;
    }
  }
  private keepPartial(part: Buffer): void {
    if (this.partialLen >= LINE_MAX || part.length === 0) return;
    const kept = Buffer.from(part.subarray(0, LINE_MAX - this.partialLen));
    this.partial.push(kept);
    this.partialLen += kept.length;
  }
  private line(text: string): void {
    const l = text.trim();
    if (this.first === undefined) {
      if (PG_ERROR_LINE.test(l)) this.first = l;
    } else if (this.following.length < FOLLOWING_MAX) this.following.push(l);
  }
  /**
   * The first PostgreSQL error line (`pg_restore: error: could not execute query: ERROR:  …`,
   * `psql:<stdin>:12: ERROR:  …`), and as detail the statement pg_restore says failed (`Command
   * was: …`) and the server's HINT, each shortened, passwords hidden. Undefined when no line
   * says ERROR:, FATAL: or PANIC:.
   */
  firstError(): { line: string; detail: string | undefined } | undefined {
    let first = this.first;
    let following = this.following;
    if (this.partialLen > 0) {
      // The last line, without its newline.
      const last = Buffer.concat(this.partial).toString('utf8').trim();
      if (first === undefined && PG_ERROR_LINE.test(last)) first = last;
      else if (first !== undefined) following = [...following, last];
    }
    if (first === undefined) return undefined;
    const parts: string[] = [];
    const cmd = following.findIndex((l) => l.startsWith('Command was: '));
    if (cmd >= 0) {
      // The statement runs on until a blank line or pg_restore's next message.
      const end = following.findIndex((l, i) => i > cmd && (l === '' || /^pg_restore: /.test(l)));
      parts.push(shorten(following.slice(cmd, end < 0 ? undefined : end).join(' '), 240));
    }
    const hint = following.find((l) => /^HINT:\s/.test(l));
    if (hint) parts.push(shorten(hint, 240));
    const line = hidePasswords(first);
    return { line: line.length > 400 ? `${line.slice(0, 399)}…` : line, detail: parts.length > 0 ? hidePasswords(parts.join(' | ')) : undefined };
  }
  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.max)).toString('utf8');
  }
  /** The last meaningful lines, joined into one line, at most ~`chars` characters. */
  lastLines(n = 3, chars = 400): string {
    const lines = this.text()
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
    const s = lines.slice(-n).join(' | ');
    return s.length > chars ? `…${s.slice(-chars)}` : s;
  }
}

export interface SpawnSpec {
  argv: string[];
  /** The child's whole environment (nothing is inherited). */
  env: NodeJS.ProcessEnv;
  /** Short name for messages: `pg_dump`, `zstd -d`, `pg_restore --list`. */
  what: string;
  /** `pipe`: we write it; a {@link Child}: that child's stdout, fd to fd (it must be spawned with `stdout: 'child'`); `{ fd }`: a descriptor of ours (a pipe's read end, ../run/os-pipe.ts), which the caller still closes. */
  stdin?: 'pipe' | 'ignore' | Child | { fd: number };
  /** `pipe`: read through {@link Child.stdout}; `child`: handed to the next spawn's stdin, in the same tick; `{ fd }`: a descriptor of ours, which the caller still closes. */
  stdout?: 'pipe' | 'ignore' | 'child' | { fd: number };
  /** The error when the program is not installed (default: the PostgreSQL client is missing). */
  missing?: (cmd: string) => CofferError;
  /** Turns a failed exit into the error to report (default: DatabaseError with the stderr tail). */
  explain?: (failure: ChildFailure) => CofferError | undefined;
  /** Its failure is not the run's failure (a probe that is expected to be cut short). */
  expendable?: boolean;
  /** Sees every chunk of its stderr as it arrives (the tail is kept in {@link Child.stderr} either way). */
  onStderr?: (chunk: Buffer) => void;
}

/** How a child ended, when it did not exit 0. */
export interface ChildFailure {
  what: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: TailBuffer;
  /** The supervisor killed it (teardown): its end is an echo, not a cause. */
  killedByUs: boolean;
  /** The run had already failed when it ended. */
  afterFailure: boolean;
}

/** One supervised child process. */
export class Child {
  readonly what: string;
  readonly proc: ChildProcess;
  /** Its stdin, when spawned with `stdin: 'pipe'`. */
  readonly stdin: Writable | null;
  /** Its stdout (a buffer attached at spawn), when spawned with `stdout: 'pipe'`. */
  readonly stdout: Readable | null;
  readonly stderr = new TailBuffer();
  /** Settles when the child has exited: resolves on exit 0, rejects otherwise (or if it cannot start). */
  readonly done: Promise<void>;
  /** Resolves once the process is gone (whatever the outcome). */
  readonly gone: Promise<void>;
  /** @internal set by the supervisor's teardown */
  killedByUs = false;
  private exitedFlag = false;
  private killTimer: NodeJS.Timeout | undefined;

  /** @internal use {@link Supervisor.spawn} */
  constructor(spec: SpawnSpec, runFailed: () => boolean) {
    this.what = spec.what;
    const [cmd, ...args] = spec.argv as [string, ...string[]];
    let stdin: 'pipe' | 'ignore' | Readable | number = 'ignore';
    if (spec.stdin instanceof Child) {
      const upstream = spec.stdin.handoff;
      if (!upstream) throw new Error(`internal: ${spec.stdin.what} has no stdout to hand to ${spec.what}`);
      stdin = upstream;
    } else if (typeof spec.stdin === 'object') stdin = spec.stdin.fd;
    else if (spec.stdin) stdin = spec.stdin;
    const stdout = typeof spec.stdout === 'object' ? spec.stdout.fd : spec.stdout === 'ignore' ? 'ignore' : 'pipe';
    this.proc = spawn(cmd, args, { env: spec.env, stdio: [stdin, stdout, 'pipe'] });
    // The same tick: every pipe gets its reader before any await can let the child exit unread.
    if (spec.stdin instanceof Child) spec.stdin.releaseHandoff();
    const onStderr = spec.onStderr;
    this.proc.stderr!.on('data', (b: Buffer) => {
      this.stderr.push(b);
      onStderr?.(b);
    });
    this.proc.stderr!.on('error', () => undefined);
    this.stdin = this.proc.stdin ?? null;
    this.stdin?.on('error', () => undefined); // EPIPE when the child stops reading: its exit status says why
    if (spec.stdout === 'child') {
      this.handoff = this.proc.stdout!;
      this.stdout = null;
    } else if (spec.stdout === 'ignore' || typeof spec.stdout === 'object') {
      this.stdout = null;
    } else {
      const buffer = new PassThrough({ highWaterMark: 1024 * 1024 });
      this.proc.stdout!.on('error', (err) => buffer.destroy(err));
      this.proc.stdout!.pipe(buffer);
      this.stdout = buffer;
    }
    let resolveGone!: () => void;
    this.gone = new Promise((r) => (resolveGone = r));
    this.done = new Promise<void>((resolve, reject) => {
      this.proc.once('error', (err: NodeJS.ErrnoException) => {
        this.exitedFlag = true;
        resolveGone();
        if (err.code === 'ENOENT') {
          reject(
            spec.missing?.(cmd) ??
              // A program not installed: the setup, not the database (exit 2, as for zstd or dd).
              new UsageError(`${spec.what}: ${cmd} not found`, {
                cause: err,
                hint: "install the PostgreSQL client of the server's major version (Debian: apt-get install postgresql-client-15) or point --pg-bin at its bin directory",
              }),
          );
        } else reject(new DatabaseError(`${spec.what}: cannot start ${cmd}: ${err.message}`, { cause: err }));
      });
      this.proc.once('exit', (code, signal) => {
        this.exitedFlag = true;
        if (this.killTimer) clearTimeout(this.killTimer);
        const afterFailure = runFailed();
        // stderr usually closes with the process; a grandchild may hold it: take what is there.
        const stderrClosed = new Promise<void>((r) => {
          if (this.proc.stderr!.closed) return r();
          this.proc.stderr!.once('close', () => r());
        });
        let bound: NodeJS.Timeout | undefined;
        void Promise.race([stderrClosed, new Promise<void>((r) => (bound = setTimeout(r, STDERR_BOUND_MS)))]).then(() => {
          if (bound) clearTimeout(bound);
          resolveGone();
          if (code === 0) return resolve();
          const failure: ChildFailure = { what: spec.what, code, signal, stderr: this.stderr, killedByUs: this.killedByUs, afterFailure };
          reject(childError(failure, spec.explain));
        });
      });
    });
    this.done.catch(() => undefined);
  }

  /** @internal the raw stdout pipe while it waits to be handed to the next child */
  handoff: Readable | undefined;
  /** @internal node's end of a handed-off pipe: the next child owns it now */
  releaseHandoff(): void {
    this.handoff?.destroy();
    this.handoff = undefined;
  }

  get exited(): boolean {
    return this.exitedFlag;
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  /** SIGTERM now, SIGKILL after a grace period. */
  kill(): void {
    if (this.exitedFlag) return;
    this.killedByUs = true;
    this.proc.kill('SIGTERM');
    this.killTimer ??= setTimeout(() => {
      if (!this.exitedFlag) this.proc.kill('SIGKILL');
    }, KILL_GRACE_MS);
  }

  /** Destroys every pipe between us and the child. */
  destroyPipes(): void {
    this.handoff?.destroy();
    this.proc.stdin?.destroy();
    this.proc.stdout?.destroy();
    this.stdout?.destroy();
  }
}

/** The error for a child that did not exit 0. */
function childError(f: ChildFailure, explain: SpawnSpec['explain']): CofferError {
  const err = explain?.(f) ?? defaultChildError(f);
  if (f.killedByUs || f.afterFailure) (err as CofferError & { echo?: boolean }).echo = true;
  return err;
}

/**
 * `<what> exited with code N: <why>`: the first ERROR/FATAL line PostgreSQL's tools printed (the
 * cause; what follows it is context), with the statement as detail; else the last lines of stderr.
 */
export function defaultChildError(f: ChildFailure): DatabaseError {
  const how = f.signal ? `was killed by ${f.signal}` : `exited with code ${f.code}`;
  const first = f.stderr.firstError();
  if (first) return new DatabaseError(`${f.what} ${how}: ${first.line}`, { detail: first.detail });
  const tail = f.stderr.lastLines();
  return new DatabaseError(`${f.what} ${how}${tail ? `: ${tail}` : ''}`);
}

/** Whitespace folded, at most `max` characters. */
function shorten(s: string, max: number): string {
  const t = s.replace(/\s+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}

/** Passwords in a statement or connection string (`PASSWORD 'x'`, `password=x`, `://u:x@`) replaced by `***`. */
function hidePasswords(s: string): string {
  return s
    .replace(/(\bpassword\s*=\s*)('(?:[^']|'')*'?|[^\s,)']+)/gi, '$1***')
    .replace(/(\bpassword\s+)'(?:[^']|'')*'?/gi, "$1'***'")
    .replace(/(:\/\/[^/@:\s]*:)[^@/\s]*@/g, '$1***@');
}

/** What a teardown did. */
export interface TeardownReport {
  killed: string[];
  /** Children still there after SIGKILL and the bound (should never happen). */
  stuck: string[];
}

/**
 * One per run. Create it with the run's stop signal; spawn every child through it; call
 * {@link fail} with every failure you observe; always await {@link teardown} before the run's
 * side effects are cleaned up (the scratch database, the spool, the multipart upload).
 */
export class Supervisor {
  readonly #ac = new AbortController();
  readonly #children = new Set<Child>();
  readonly #failures: unknown[] = [];
  #teardown: Promise<TeardownReport> | undefined;
  readonly #unfollow: () => void;

  constructor(outer?: AbortSignal) {
    this.#unfollow = outer ? followAbort(outer, () => this.fail(interruptedBy(outer))) : () => undefined;
  }

  /** Aborted at the first failure (or the outer stop signal). */
  get signal(): AbortSignal {
    return this.#ac.signal;
  }

  get failed(): boolean {
    return this.#failures.length > 0;
  }

  /** Spawns a child owned by this run. Throws (synchronously) only for a bug in the spec. */
  spawn(spec: SpawnSpec): Child {
    if (this.#teardown) throw new Error(`internal: ${spec.what} spawned after the teardown began`);
    const child = new Child(spec, () => this.failed);
    this.#children.add(child);
    if (!spec.expendable) child.done.catch((err: unknown) => this.fail(err));
    // A run aborted while this child was being set up: it must not live on.
    if (this.#ac.signal.aborted) child.kill();
    return child;
  }

  /** Records a failure and aborts the run (idempotent; every failure is kept for {@link cause}). */
  fail(err: unknown): void {
    this.#failures.push(err);
    if (!this.#ac.signal.aborted) this.#ac.abort(err);
  }

  /**
   * Runs `body` as this run: a failure is recorded, every child is torn down (awaited), and the
   * cause is thrown; on success too, nothing the run spawned outlives it.
   */
  async run<T>(body: () => Promise<T>): Promise<T> {
    try {
      return await body();
    } catch (err) {
      this.fail(err);
      await this.teardown();
      throw this.cause();
    } finally {
      await this.teardown();
    }
  }

  /**
   * The failure to report: the first in causal order (see the module doc), with the others
   * attached as `consequences`. `fallback` when nothing was recorded.
   */
  cause(fallback?: unknown): unknown {
    const all = fallback === undefined ? this.#failures : [...this.#failures, fallback];
    if (all.length === 0) return fallback;
    let best = all[0];
    for (const e of all) if (causeRank(e) < causeRank(best)) best = e;
    const rest = all.filter((e) => e !== best && !isAbortEcho(e));
    if (rest.length > 0 && best instanceof Error && !('consequences' in best)) {
      Object.defineProperty(best, 'consequences', { value: rest, enumerable: false });
    }
    return best;
  }

  /**
   * Kills every live child, destroys every pipe and awaits every exit (bounded), keeping the
   * event loop alive meanwhile. Idempotent: later calls await the same teardown. Does not
   * throw.
   */
  teardown(): Promise<TeardownReport> {
    this.#teardown ??= this.#runTeardown();
    return this.#teardown;
  }

  async #runTeardown(): Promise<TeardownReport> {
    this.#unfollow();
    const keepAlive = setInterval(() => undefined, 1000);
    try {
      const live = [...this.#children].filter((c) => !c.exited);
      for (const c of live) c.kill();
      for (const c of this.#children) c.destroyPipes();
      let bound: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((r) => (bound = setTimeout(() => r('timeout'), KILL_GRACE_MS + EXIT_BOUND_MS)));
      await Promise.race([Promise.all([...this.#children].map((c) => c.gone)), timedOut]);
      if (bound) clearTimeout(bound);
      return { killed: live.map((c) => c.what), stuck: [...this.#children].filter((c) => !c.exited).map((c) => `${c.what} (pid ${c.pid})`) };
    } finally {
      clearInterval(keepAlive);
    }
  }
}

/** Lower is more fundamental: a stop, then damage, then storage, then usage, then the rest, echoes last. */
function causeRank(e: unknown): number {
  if (e instanceof InterruptedError) return 0;
  if (isAbortEcho(e)) return 9;
  if (e instanceof IntegrityError) return 1;
  if (e instanceof StorageError) return 2;
  if (e instanceof UsageError) return 3;
  return 4;
}

/**
 * The environment of a program that needs no credentials (dd, zstd): the path, the home and
 * the locale, nothing else.
 */
export function toolEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { LC_ALL: 'C' };
  for (const k of ['PATH', 'HOME', 'TMPDIR', 'TZ']) if (env[k] !== undefined) out[k] = env[k];
  return out;
}
