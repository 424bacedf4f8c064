import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { existsSync } from 'node:fs';
import { DatabaseError, UsageError, type CofferError } from '../errors.js';

/** Command prefixes for the PostgreSQL client programs (a binary, or a wrapper + binary). */
export interface PgTools {
  pgDump: string[];
  pgDumpall: string[];
  pgRestore: string[];
  psql: string[];
}

export interface PgToolsOptions {
  /** Directory holding the client binaries (`--pg-bin`). */
  binDir?: string;
  /** Full command prefixes (`--pg-dump-command "docker compose exec -T db pg_dump"`). */
  pgDumpCommand?: string;
  pgDumpallCommand?: string;
  pgRestoreCommand?: string;
  psqlCommand?: string;
}

/**
 * Splits a command line into words the way a POSIX shell would for quoting (single quotes,
 * double quotes, backslashes), without any expansion: no variables, globs, pipes or
 * redirections. Such characters outside quotes are refused, since they would mean a shell was
 * expected.
 */
export function splitCommand(input: string): string[] {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  let i = 0;
  const s = input;
  while (i < s.length) {
    const c = s[i]!;
    if (/\s/.test(c)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
      i++;
    } else if (c === "'") {
      const end = s.indexOf("'", i + 1);
      if (end < 0) throw new UsageError(`unterminated single quote in command ${JSON.stringify(input)}`);
      cur += s.slice(i + 1, end);
      inWord = true;
      i = end + 1;
    } else if (c === '"') {
      i++;
      let closed = false;
      while (i < s.length) {
        const d = s[i]!;
        if (d === '\\' && i + 1 < s.length && '"\\$`'.includes(s[i + 1]!)) {
          cur += s[i + 1];
          i += 2;
        } else if (d === '"') {
          closed = true;
          i++;
          break;
        } else {
          cur += d;
          i++;
        }
      }
      if (!closed) throw new UsageError(`unterminated double quote in command ${JSON.stringify(input)}`);
      inWord = true;
    } else if (c === '\\' && i + 1 < s.length) {
      cur += s[i + 1];
      inWord = true;
      i += 2;
    } else if (c === '#' && !inWord) {
      break; // a comment, as in a shell
    } else if ('|&;<>`$'.includes(c)) {
      throw new UsageError(`command ${JSON.stringify(input)} contains the shell character ${JSON.stringify(c)}`, {
        hint: 'coffer runs commands without a shell; put pipelines in a wrapper script',
      });
    } else {
      cur += c;
      inWord = true;
      i++;
    }
  }
  if (inWord) words.push(cur);
  if (words.length === 0) throw new UsageError('empty command');
  return words;
}

/** Resolves the client programs from `--pg-bin`, command prefixes, or PATH. */
export function resolvePgTools(opts: PgToolsOptions = {}): PgTools {
  const bin = (name: string): string[] => {
    if (opts.binDir) {
      const p = path.join(opts.binDir, name);
      if (!existsSync(p)) throw new UsageError(`--pg-bin ${opts.binDir}: ${name} not found there`, { hint: 'point --pg-bin at a PostgreSQL bin directory, e.g. /usr/lib/postgresql/16/bin' });
      return [p];
    }
    return [name];
  };
  return {
    pgDump: opts.pgDumpCommand ? splitCommand(opts.pgDumpCommand) : bin('pg_dump'),
    pgDumpall: opts.pgDumpallCommand ? splitCommand(opts.pgDumpallCommand) : bin('pg_dumpall'),
    pgRestore: opts.pgRestoreCommand ? splitCommand(opts.pgRestoreCommand) : bin('pg_restore'),
    psql: opts.psqlCommand ? splitCommand(opts.psqlCommand) : bin('psql'),
  };
}

/** Keeps the last `max` bytes written to it (a child's stderr, for error messages). */
export class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly max = 8192) {}
  push(b: Buffer): void {
    this.chunks.push(b);
    this.size += b.length;
    while (this.size - this.chunks[0]!.length >= this.max) this.size -= this.chunks.shift()!.length;
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

export interface RunningChild {
  child: ChildProcess;
  stderr: TailBuffer;
  /** Resolves when the child exits 0; rejects with DatabaseError (stderr tail) otherwise. */
  done: Promise<void>;
  kill(): void;
}

/**
 * Spawns a child without a shell. stdin/stdout per `stdio`; stderr is always captured (tail).
 * Aborting `signal` kills the child (SIGTERM, then SIGKILL after 5 s).
 */
export function spawnChild(
  argv: string[],
  opts: {
    env?: NodeJS.ProcessEnv;
    stdin?: 'pipe' | 'ignore' | import('node:stream').Readable | number;
    stdout?: 'pipe' | 'ignore' | number;
    signal?: AbortSignal;
    what: string;
    /** The error when the program is not installed (default: the PostgreSQL client is missing). */
    missing?: (cmd: string) => CofferError;
  },
): RunningChild {
  const [cmd, ...args] = argv as [string, ...string[]];
  const child = spawn(cmd, args, {
    env: opts.env ?? process.env,
    stdio: [opts.stdin ?? 'ignore', opts.stdout ?? 'pipe', 'pipe'],
    detached: false,
  });
  const stderr = new TailBuffer();
  child.stderr!.on('data', (b: Buffer) => stderr.push(b));
  let killTimer: NodeJS.Timeout | undefined;
  const kill = (): void => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    killTimer ??= setTimeout(() => child.kill('SIGKILL'), 5000);
    killTimer.unref();
  };
  const onAbort = (): void => kill();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  // A run aborted while this child was being set up: its listener would never fire.
  if (opts.signal?.aborted) kill();
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', (err: NodeJS.ErrnoException) => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (err.code === 'ENOENT') {
        reject(
          opts.missing?.(cmd) ??
            new DatabaseError(`${opts.what}: ${cmd} not found`, { cause: err, hint: 'install the PostgreSQL client (apt-get install postgresql-client) or set --pg-bin' }),
        );
      } else reject(new DatabaseError(`${opts.what}: cannot start ${cmd}: ${err.message}`, { cause: err }));
    });
    // 'close' waits for the child's pipes to be drained as well as for its exit. In a run that
    // was aborted, a pipe that nobody reads any more would hold that forever; so once the run is
    // aborted AND the process has exited, its pipes get a short grace period and are then
    // destroyed. Never in a healthy run: there, unread output is data, and must not be lost.
    let drainTimer: NodeJS.Timeout | undefined;
    const destroyPipesLater = (): void => {
      if (drainTimer || (child.exitCode === null && child.signalCode === null)) return;
      if (!opts.signal?.aborted) return;
      // Not unref'd: a paused pipe keeps nothing alive, so an unref'd timer would let the event
      // loop drain with this run still waiting for 'close' (node then exits 0: a false success).
      drainTimer = setTimeout(() => {
        for (const s of [child.stdin, child.stdout, child.stderr]) s?.destroy();
      }, 2000);
    };
    child.once('exit', destroyPipesLater);
    opts.signal?.addEventListener('abort', destroyPipesLater, { once: true });
    child.once('close', (code, sig) => {
      opts.signal?.removeEventListener('abort', onAbort);
      opts.signal?.removeEventListener('abort', destroyPipesLater);
      if (killTimer) clearTimeout(killTimer);
      if (drainTimer) clearTimeout(drainTimer);
      if (code === 0) return resolve();
      const tail = stderr.lastLines();
      const how = sig ? `was killed by ${sig}` : `exited with code ${code}`;
      reject(new DatabaseError(`${opts.what} ${how}${tail ? `: ${tail}` : ''}`));
    });
  });
  done.catch(() => undefined);
  return { child, stderr, done, kill };
}

/** The error for a missing system tool that is not part of PostgreSQL (zstd, dd). */
export function missingTool(what: string, hint: string): (cmd: string) => CofferError {
  return (cmd) => new UsageError(`${what}: ${cmd} not found on PATH`, { hint });
}

/** Runs a child to completion and returns its stdout (small outputs only). */
export async function runChild(argv: string[], opts: { env?: NodeJS.ProcessEnv; signal?: AbortSignal; what: string; input?: string }): Promise<string> {
  const r = spawnChild(argv, { env: opts.env, stdin: opts.input !== undefined ? 'pipe' : 'ignore', signal: opts.signal, what: opts.what });
  const out: Buffer[] = [];
  r.child.stdout!.on('data', (b: Buffer) => out.push(b));
  if (opts.input !== undefined) {
    r.child.stdin!.on('error', () => undefined);
    r.child.stdin!.end(opts.input);
  }
  await r.done;
  return Buffer.concat(out).toString('utf8');
}
