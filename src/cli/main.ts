#!/usr/bin/env node
import './heap.js';
// The AWS SDK warns on every start under Node 20 about its future Node 22 requirement: not
// something a cron job's mail should carry. Set before the SDK is (lazily) loaded.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

import { configurePluginClient } from '../crypto/plugin.js';
import { Command, CommanderError } from 'commander';
import { ExitCode, InterruptedError, UsageError, CofferError, StorageError, classifySystemError, exitCodeOf, formatErrorLine } from '../errors.js';
import { interruptedBy, isAbortEcho } from '../run/abort.js';
import { createLogger, newRunId, type Logger } from '../observe/log.js';
import { clearForLogLine } from '../observe/progress.js';
import { resolveLogFormat } from '../config/settings.js';
import { COFFER_VERSION } from '../version.js';
import { removePlaintextNow } from '../run/plaintext.js';
import type { CliContext } from './context.js';
import { COMMANDS, GLOBAL_OPTIONS, GROUPS, LAYOUT } from './registry.js';
import { addOptions, registerCommands, resolveInvocation } from './program.js';
import { childSafeEnv, errorLine, secretVariables, sourcesOf, valuesOf, type Given } from '../config/layers.js';
import type { Values } from '../config/options.js';
/**
 * The coffer binary. Parses argv, builds the context (logger, signals, timeout), runs one
 * command, and maps errors to the documented exit codes. The only place that exits.
 */
export async function main(argv: string[]): Promise<number> {
  const env = process.env;
  const runId = newRunId();
  // Usage errors come before the options are resolved: in the format asked for by flag, else env.
  const asked = argvLogFormat(argv);
  let log: Logger = createLogger({ format: asked === 'json' || asked === 'text' ? asked : resolveLogFormatSafe(env), runId });
  // What commander says of a bad command line: it becomes one log line.
  let usageText = '';
  const ac = new AbortController();
  let exitCode: number = ExitCode.ok;
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      // No cleanup runs now: at least no decrypted data stays on disk (a --jobs spool, an --output being written).
      removePlaintextNow();
      const code = sig === 'SIGINT' ? ExitCode.interrupted : ExitCode.terminated;
      // One JSON line in JSON log mode (a collector reads nothing else); the plain line otherwise.
      if (log.format === 'json') log.error(`second ${sig}, exiting now`, { exit: code });
      else process.stderr.write(`coffer: second ${sig}, exiting now\n`);
      process.exit(code);
    }
    log.warn(`received ${sig}: stopping (work not yet committed is torn down and not stored; a backup already committed stays complete)`);
    ac.abort(new InterruptedError(`stopped by ${sig}`, { exitCode: sig === 'SIGINT' ? ExitCode.interrupted : ExitCode.terminated }));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // The reader of stdout went away (`coffer list | head -1`): what is left of the output goes
  // nowhere, and the run ends as it would have (not node's unhandled EPIPE and exit 1).
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE' || err.code === 'ERR_STREAM_DESTROYED') return;
    log.warn(`cannot write the output: ${err.message}`);
  });
  // The event loop drained while the command is still waiting for something that can no longer
  // happen (a bug). Node would then exit 0: a false success for cron. Fail instead, and say so.
  const onDrained = (): void => {
    const reason: unknown = ac.signal.reason;
    const code = failureExitCode ?? (ac.signal.aborted ? exitCodeOf(reason) : ExitCode.unexpected);
    const what = ac.signal.aborted ? `${formatErrorLine(reason)}; its cleanup did not finish` : 'internal error: the command stopped with nothing left to wait for';
    log.error(`${what} (a bug: please report it with this log; nothing this run did counts as a backup or restore unless \`coffer list\` shows it)`, { exit: code });
    process.exit(code);
  };
  process.once('beforeExit', onDrained);

  const program = new Command('coffer')
    .description('Encrypted, streaming PostgreSQL backups to S3-compatible storage or a local directory')
    .version(COFFER_VERSION)
    .showHelpAfterError('(run coffer --help for usage)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => void (usageText += s), writeOut: (s) => process.stdout.write(s) });
  addOptions(program, GLOBAL_OPTIONS);

  let timer: NodeJS.Timeout | undefined;
  const context = (g: Values<typeof GLOBAL_OPTIONS>, secrets: string[]): CliContext => {
    // JSON lines are for a collector, also one reading a terminal (`docker run -t`): no progress
    // line is drawn between them (progress goes into the log as JSON instead).
    const format = resolveLogFormat(g.logFormat, env, !!process.stderr.isTTY);
    const drawsProgress = !!process.stderr.isTTY && format !== 'json';
    // On a terminal a log line first clears the progress line it would otherwise continue.
    const write = drawsProgress ? (line: string) => process.stderr.write(`${clearForLogLine()}${line}\n`) : undefined;
    log = createLogger({ format, runId, secrets, ...(write ? { write } : {}) });
    const timeout = g.timeout;
    if (timeout !== undefined) {
      // Node's timers hold at most 2^31-1 ms (~24.8 days; a longer one fires at once): a longer
      // --timeout is armed in steps.
      const deadline = Date.now() + timeout.ms;
      const arm = (): void => {
        const left = deadline - Date.now();
        timer = left > MAX_TIMER_MS ? setTimeout(arm, MAX_TIMER_MS) : setTimeout(() => ac.abort(new InterruptedError(`timed out after ${timeout.text}`, { exitCode: ExitCode.timeout })), Math.max(0, left));
        timer.unref();
      };
      arm();
    }
    const childEnv = childSafeEnv(env, secretVariables(LAYOUT));
    // age plugins (restores with AGE-PLUGIN-… identities) log through the run, stop with it.
    configurePluginClient({ log, signal: ac.signal, env: childEnv });
    return {
      // Children (pg_dump, psql…) get the environment without coffer's and the SDK's secrets.
      env: childEnv,
      stdout: (t) => process.stdout.write(t),
      stderrIsTty: drawsProgress,
      stdoutIsTty: !!process.stdout.isTTY,
      log,
      signal: ac.signal,
      cwd: process.cwd(),
    };
  };

  // Configuration: flags > env (COFFER_…) > file > defaults, for every option of every command
  // (src/config/layers.ts), resolved before the command runs; a bad file or value exits 2.
  // What the running command was given, to name where a value a command rejects came from.
  let given: Given[] = [];
  // A command that maps every failure to one exit code (wal-fetch): known before its options are
  // parsed, so that a bad flag exits with that code too.
  let failureExitCode: number | undefined;
  const onUncaught = (err: unknown): void => {
    process.stderr.write(`coffer: unexpected error: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(failureExitCode ?? ExitCode.unexpected);
  };
  program.hook('preSubcommand', (_program, sub) => {
    failureExitCode = COMMANDS.find((c) => c.name === sub.name())?.failureExitCode;
    if (failureExitCode !== undefined) process.once('uncaughtException', onUncaught);
  });
  registerCommands(program, COMMANDS, GROUPS, async (m, cmd) => {
    const run = resolveInvocation(program, cmd, m, LAYOUT, env, process.cwd());
    given = [
      { options: m.options, resolved: run.resolved },
      { options: GLOBAL_OPTIONS, resolved: run.globals },
    ];
    const ctx = context(valuesOf(run.globals), run.secrets);
    const forSource = (name: string): unknown => {
      const r = run.forSource(name);
      given = [{ options: m.options, resolved: r.resolved }, ...given.slice(1)];
      return valuesOf(r.resolved);
    };
    await m.run(valuesOf(run.resolved), ctx, { file: run.file, env, layout: LAYOUT, sources: Object.keys(sourcesOf(run.file) ?? {}), forSource }, [...cmd.args]);
  });

  try {
    await program.parseAsync(argv, { from: 'node' });
  } catch (thrown) {
    const err = stoppedOr(classifySystemError(thrown), ac.signal);
    if (err instanceof CommanderError) {
      exitCode = err.exitCode === 0 ? ExitCode.ok : (failureExitCode ?? ExitCode.usage);
      // A bad command line is one error line in either log format (cron mails the last line);
      // help asked for by a bare `coffer` stays the help text, except in JSON mode.
      const helpText = err.code === 'commander.help' || err.code === 'commander.helpDisplayed';
      if (helpText && log.format !== 'json') process.stderr.write(usageText);
      else {
        const text = usageText.split('\n').map((l) => l.trim()).filter((l) => l !== '').join(' ').replace(/^error: /, '');
        if (text !== '') log.error(text, { exit: exitCode });
      }
    } else if (err instanceof CofferError && err.kind === 'absent') {
      // Not a failure worth an error line (wal-fetch: PostgreSQL asks for files that do not exist).
      exitCode = err.exitCode;
      log.info(errorLine(err, given), { exit: exitCode });
    } else {
      exitCode = exitCodeOf(err);
      // Stopped by SIGINT/SIGTERM keeps 130/143 (PostgreSQL reads 143 as its own fast shutdown).
      if (failureExitCode !== undefined && !(err instanceof InterruptedError && exitCode > 125)) exitCode = failureExitCode;
      log.error(errorLine(err, given), { exit: exitCode, detail: err instanceof CofferError ? err.detail : undefined });
      if (env.COFFER_DEBUG && err instanceof Error) process.stderr.write(`${err.stack ?? ''}\n`);
    }
  } finally {
    if (timer) clearTimeout(timer);
    process.off('beforeExit', onDrained);
    // The run is over and its outcome logged: a stop signal from now on must not kill the
    // process (a restore whose swap committed would be reported as killed, 143). It is heard and
    // ignored; the process exits with the run's code right after (exitWhenIdle). Installed
    // before the run's own handlers go, so that no signal finds none (and its default action).
    process.on('SIGINT', afterRun);
    process.on('SIGTERM', afterRun);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('uncaughtException', onUncaught);
  }
  return exitCode;
}

/**
 * The error a command ended with, or the stop's own when the run was stopped (a stop signal,
 * `--timeout`) and the error is only what the stop made of the work in flight: a storage request
 * aborted mid-way ("aborted"), or its socket torn down under it ("cannot reach the S3 endpoint
 * (ECONNRESET)"), in whichever command and at whichever call site. The exit is then the stop's
 * (130/143/124), as documented. Other errors (a damaged backup, a bad option) keep their own.
 */
function stoppedOr(err: unknown, signal: AbortSignal): unknown {
  if (!signal.aborted || err instanceof InterruptedError) return err;
  if (err instanceof StorageError || isAbortEcho(err)) return interruptedBy(signal, err);
  return err;
}

/** The longest delay a Node timer holds (2^31-1 ms); a longer one fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A stop signal once the run is over: the process is exiting with the run's outcome already. */
function afterRun(): void {}

/**
 * Exits with the run's code once the event loop has nothing left to do (the run's last file
 * operations done, its children exited), before node's own teardown: that teardown first closes
 * every handle, the stop signals' too, and a SIGTERM during its ~60 ms would kill a run that had
 * finished (a restore whose swap committed, reported as killed). `process.exit` keeps the signal
 * handlers to the end. A stray keep-alive socket does not hold a cron job open (2 s at most).
 */
function exitWhenIdle(code: number): void {
  process.once('beforeExit', () => process.exit(code));
  setTimeout(() => process.exit(code), 2000).unref();
}

/** `--log-format X` or `--log-format=X` on the command line, before it is parsed; undefined when absent. */
function argvLogFormat(argv: string[]): string | undefined {
  let found: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (a === '--log-format') found = argv[i + 1];
    else if (a.startsWith('--log-format=')) found = a.slice('--log-format='.length);
  }
  return found;
}

function resolveLogFormatSafe(env: NodeJS.ProcessEnv): 'text' | 'json' {
  try {
    return resolveLogFormat(undefined, env, !!process.stderr.isTTY);
  } catch (err) {
    if (err instanceof UsageError) return 'text';
    throw err;
  }
}

main(process.argv).then(
  (code) => {
    process.exitCode = code;
    exitWhenIdle(code);
  },
  (err: unknown) => {
    process.stderr.write(`coffer: unexpected error: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = ExitCode.unexpected;
  },
);
