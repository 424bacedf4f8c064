/**
 * `--before` / `--after`: commands run around a backup or a restore (stop a batch job first,
 * resume it after; pause a replica; tell another system).
 *
 * - A hook is an argv, split like a shell would split quotes but never given to one (no
 *   variables, pipes or redirections: a script does those).
 * - It runs once per run (not once per database), with a small environment: PATH, HOME, TMPDIR,
 *   TZ, and the `COFFER_HOOK_*` variables that say what runs and, after, how it went. Not
 *   coffer's own environment, which can hold credentials.
 * - A `--before` hook that fails (non-zero, killed, not found) cancels the run before anything
 *   is locked, dumped or restored: exit 9, naming the hook and its last line of stderr.
 * - The `--after` hook runs whatever the outcome; when it fails the run's own failure stands,
 *   and a run that succeeded exits 9 (its backups are made and committed: the message says so).
 * - Both are stopped with the run (SIGINT, SIGTERM, --timeout): the run's signal kills them. A
 *   run that was stopped does not run its `--after` hook (it must exit within seconds): the log
 *   says so. A `--before` hook that failed has no `--after` (nothing was done to undo).
 * - A stop during the `--after` hook of a run that succeeded kills the hook, but what the run
 *   made is committed and complete: the run succeeds (exit 0) with a warning that names it and
 *   says the hook was stopped, as a stop after a backup's commit does (not 124/130/143, which
 *   say that everything was aborted).
 */
import { exitCodeOf, formatErrorLine, HookError, UsageError } from '../errors.js';
import { interruptedBy } from '../run/abort.js';
import type { Logger } from '../observe/log.js';
import { splitCommand } from '../pg/tools.js';
import { Supervisor, toolEnv } from '../run/supervisor.js';

export type HookPhase = 'before' | 'after';

/** Parses a hook's command line (at the configuration's check, before anything runs). */
export function parseHook(input: string, flag: string): string[] {
  const argv = splitCommand(input);
  if (argv.length === 0) throw new UsageError(`${flag}: empty command`, { hint: 'give a program and its arguments, e.g. --before "systemctl stop batch-job.timer"' });
  return argv;
}

/**
 * Runs one hook to its end. `vars` are set as `COFFER_HOOK_<NAME>` (e.g. `COMMAND`,
 * `DATABASES`, `RESULT`). Resolves when it exited 0; throws {@link HookError} otherwise.
 */
export async function runHook(phase: HookPhase, argv: string[], vars: Record<string, string>, opts: { env: NodeJS.ProcessEnv; signal: AbortSignal; log: Logger }): Promise<void> {
  const env: NodeJS.ProcessEnv = { ...toolEnv(opts.env), COFFER_HOOK: phase };
  for (const [k, v] of Object.entries(vars)) env[`COFFER_HOOK_${k}`] = v;
  const flag = `--${phase}`;
  const sup = new Supervisor(opts.signal);
  const started = Date.now();
  opts.log.info(`${flag} hook started`, { hook: argv[0] });
  // sup.run: on a stop signal (or any failure) the hook is killed and the cause thrown.
  await sup.run(async () => {
    const child = sup.spawn({
      argv,
      env,
      what: `the ${flag} hook`,
      missing: (cmd) => new HookError(`the ${flag} hook could not start: ${cmd} not found`, { hint: `give the program's absolute path in ${flag}, or install it` }),
      explain: (f) => {
        const how = f.signal ? `was killed by ${f.signal}` : `exited with code ${f.code}`;
        const tail = f.stderr.lastLines(1, 300);
        return new HookError(`the ${flag} hook (${argv[0]}) ${how}${tail ? `: ${tail}` : ''}`, {
          hint: phase === 'before' ? 'nothing was done; fix the hook, or run without it' : "see the hook's output in the log",
        });
      },
    });
    const out: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.length < 64 && out.push(b));
    // The hook's end, or the run's stop (the signal aborts sup.signal), whichever comes first.
    await new Promise<void>((resolve, reject) => {
      const stop = (): void => reject(sup.signal.reason);
      if (sup.signal.aborted) return stop();
      sup.signal.addEventListener('abort', stop, { once: true });
      child.done.then(resolve, reject).finally(() => sup.signal.removeEventListener('abort', stop));
    });
    const text = Buffer.concat(out).toString('utf8').trim();
    opts.log.info(`${flag} hook finished`, { hook: argv[0], seconds: (Date.now() - started) / 1000, ...(text ? { output: text.slice(0, 2000) } : {}) });
  });
}

export interface Hooks {
  before?: string[] | undefined;
  after?: string[] | undefined;
}

/**
 * Runs `run` between the hooks. `vars` describe the run for both (`COMMAND`, `REPOSITORY`,
 * `DATABASES`, `RUN_ID`…); `outcome` adds, for `--after`, what a successful run made. After a
 * failure the hook gets `RESULT=failure`, `EXIT_CODE` and `ERROR` (the error's one line, which
 * never holds a secret). `committed` says what a successful run made, for the warning when a
 * stop kills its `--after` hook (the run still resolves: its work is complete).
 */
export async function withHooks<T>(
  hooks: Hooks,
  vars: Record<string, string>,
  opts: { env: NodeJS.ProcessEnv; signal: AbortSignal; log: Logger },
  run: () => Promise<T>,
  outcome: (r: T) => Record<string, string>,
  committed: (r: T) => string,
): Promise<T> {
  if (hooks.before) await runHook('before', hooks.before, vars, opts);
  let result: T;
  try {
    result = await run();
  } catch (err) {
    if (hooks.after) {
      if (opts.signal.aborted) opts.log.warn('the --after hook was not run: the run was stopped');
      else {
        try {
          await runHook('after', hooks.after, { ...vars, RESULT: 'failure', EXIT_CODE: String(exitCodeOf(err)), ERROR: formatErrorLine(err) }, opts);
        } catch (hookErr) {
          opts.log.error(`${formatErrorLine(hookErr)} (after the run had failed)`);
        }
      }
    }
    throw err;
  }
  if (hooks.after) {
    try {
      await runHook('after', hooks.after, { ...vars, RESULT: 'success', EXIT_CODE: '0', ...outcome(result) }, opts);
    } catch (err) {
      if (opts.signal.aborted) {
        // The stop came after the commit: it ends the hook, not what was made (exit 0).
        opts.log.warn(`${committed(result)}; the --after hook was stopped (${formatErrorLine(interruptedBy(opts.signal))}) before it finished`);
        return result;
      }
      if (err instanceof HookError) throw new HookError(`the run succeeded, but ${err.message}`, { cause: err, hint: 'what the run made is stored and committed; see the hook\'s output in the log' });
      throw err;
    }
  }
  return result;
}
