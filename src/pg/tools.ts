import * as path from 'node:path';
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { UsageError, type CofferError } from '../errors.js';
import { untilAborted } from '../run/abort.js';
import { Supervisor, type SpawnSpec } from '../run/supervisor.js';

/** Command prefixes for the PostgreSQL client programs (a binary, or a wrapper + binary). */
export interface PgTools {
  pgDump: string[];
  /** pg_dump runs through a command wrapper (`--pg-dump-command`; a script in `--pg-bin` counts too, ../pipeline/backup.ts): its output is read back whole. */
  pgDumpWrapped?: boolean;
  pgDumpall: string[];
  pgRestore: string[];
  psql: string[];
  /**
   * psql runs through a command wrapper (`--psql-command`): each statement gets a psql of its own
   * (no session kept open, ./admin.ts). A wrapper such as `tee log | psql` outlives a psql that
   * stopped at an error until its input ends, so only the end of input ends it.
   */
  psqlWrapped?: boolean;
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
  const bin = (name: string): string[] => pgProgram(opts.binDir, name);
  return {
    pgDump: opts.pgDumpCommand ? splitCommand(opts.pgDumpCommand) : bin('pg_dump'),
    pgDumpWrapped: opts.pgDumpCommand !== undefined && opts.pgDumpCommand !== '',
    pgDumpall: opts.pgDumpallCommand ? splitCommand(opts.pgDumpallCommand) : bin('pg_dumpall'),
    pgRestore: opts.pgRestoreCommand ? splitCommand(opts.pgRestoreCommand) : bin('pg_restore'),
    psql: opts.psqlCommand ? splitCommand(opts.psqlCommand) : bin('psql'),
    psqlWrapped: opts.psqlCommand !== undefined && opts.psqlCommand !== '',
  };
}

/**
 * One PostgreSQL client program: `<binDir>/<name>` (which must exist) with `--pg-bin`, else
 * `name` from PATH. As an argv prefix.
 */
export function pgProgram(binDir: string | undefined, name: string): string[] {
  if (!binDir) return [name];
  const p = path.join(binDir, name);
  if (!existsSync(p)) throw new UsageError(`--pg-bin ${binDir}: ${name} not found there`, { hint: 'point --pg-bin at a PostgreSQL bin directory, e.g. /usr/lib/postgresql/16/bin' });
  return [p];
}

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

/**
 * Whether `program` (a path, or a name found on PATH) is a script rather than a compiled program:
 * a wrapper put in `--pg-bin` (`docker compose exec -T db pg_dump "$@"`), which can lose the end of
 * pg_dump's output and still exit 0, so the run reads its output back whole, as with
 * `--pg-dump-command`. Debian's /usr/bin/pg_dump (pg_wrapper, a Perl script) counts as one too:
 * that costs CPU, not correctness. A program that cannot be read is none (its spawn says why).
 */
export function isScriptProgram(program: string, env: NodeJS.ProcessEnv): boolean {
  const candidates = program.includes('/') ? [program] : (env.PATH ?? '').split(':').filter(Boolean).map((d) => path.join(d, program));
  for (const file of candidates) {
    let fd: number;
    try {
      fd = openSync(file, 'r');
    } catch {
      continue;
    }
    try {
      const head = Buffer.alloc(ELF_MAGIC.length);
      return !(readSync(fd, head, 0, head.length, 0) === head.length && head.equals(ELF_MAGIC));
    } catch {
      return false;
    } finally {
      closeSync(fd);
    }
  }
  return false;
}

/** The error for a missing system tool that is not part of PostgreSQL (zstd, dd). */
export function missingTool(what: string, hint: string): (cmd: string) => CofferError {
  return (cmd) => new UsageError(`${what}: ${cmd} not found on PATH`, { hint });
}

/**
 * Runs one child to completion (its own supervisor: attached at spawn, killed on abort,
 * awaited) and returns its stdout (small outputs only). A stop of `signal` ends the wait at once
 * and kills the child (the supervisor does not kill on abort by itself: a user's `--smoke
 * 'SELECT pg_sleep(600)'` would otherwise hold a stopped run for as long).
 */
export async function runChild(
  argv: string[],
  opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal; what: string; input?: string | Buffer; explain?: SpawnSpec['explain'] },
): Promise<string> {
  const sup = new Supervisor(opts.signal);
  return sup.run(async () => {
    const child = sup.spawn({ argv, env: opts.env, stdin: opts.input !== undefined ? 'pipe' : 'ignore', what: opts.what, explain: opts.explain });
    const out: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    const drained = new Promise((r) => child.stdout!.once('close', r));
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    await untilAborted(Promise.all([child.done, drained]), sup.signal);
    return Buffer.concat(out).toString('utf8');
  });
}
