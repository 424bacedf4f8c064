#!/usr/bin/env node
// The AWS SDK warns on every start under Node 20 about its future Node 22 requirement: not
// something a cron job's mail should carry. Set before the SDK is (lazily) loaded.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

import { Command, Option, CommanderError } from 'commander';
import { CofferError, ExitCode, InterruptedError, UsageError, exitCodeOf, formatErrorLine } from '../errors.js';
import { createLogger, newRunId, type Logger } from '../observe/log.js';
import { parseDuration, resolveLogFormat } from '../config/settings.js';
import { COFFER_VERSION } from '../version.js';
import type { CliContext } from './context.js';
import { loadConfigFile, type ConfigFile } from '../config/config-file.js';
import { applyConfig, childSafeEnv, validateConfigFile, withOrigin } from '../config/layers.js';
import { collect } from '../config/option-specs.js';

interface GlobalFlags {
  logFormat?: string;
  timeout?: string;
  quiet?: boolean;
}

/**
 * The coffer binary. Parses argv, builds the context (logger, signals, timeout), runs one
 * command, and maps errors to the documented exit codes. The only place that exits.
 */
export async function main(argv: string[]): Promise<number> {
  const env = process.env;
  const runId = newRunId();
  let log: Logger = createLogger({ format: resolveLogFormatSafe(env), runId });
  const ac = new AbortController();
  let exitCode: number = ExitCode.ok;
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      process.stderr.write(`coffer: second ${sig}, exiting now\n`);
      process.exit(sig === 'SIGINT' ? ExitCode.interrupted : ExitCode.terminated);
    }
    log.warn(`received ${sig}: stopping (work not yet committed is torn down and not stored; a backup already committed stays complete)`);
    ac.abort(new InterruptedError(`stopped by ${sig}`, { exitCode: sig === 'SIGINT' ? ExitCode.interrupted : ExitCode.terminated }));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // The event loop drained while the command is still waiting for something that can no longer
  // happen (a bug). Node would then exit 0: a false success for cron. Fail instead, and say so.
  const onDrained = (): void => {
    const reason: unknown = ac.signal.reason;
    const code = ac.signal.aborted ? exitCodeOf(reason) : ExitCode.unexpected;
    const what = ac.signal.aborted ? `${formatErrorLine(reason)}; its cleanup did not finish` : 'internal error: the command stopped with nothing left to wait for';
    log.error(`${what} (a bug: please report it with this log; nothing this run did counts as a backup or restore unless \`coffer list\` shows it)`, { exit: code });
    process.exit(code);
  };
  process.once('beforeExit', onDrained);

  const program = new Command('coffer')
    .description('Encrypted, streaming PostgreSQL backups to S3-compatible storage or a local directory')
    .version(COFFER_VERSION)
    .addOption(new Option('--log-format <format>', 'text, json or auto (json when stderr is not a terminal)').choices(['text', 'json', 'auto']))
    .option('--timeout <duration>', 'abort the whole run after this long (e.g. 2h)')
    .option('--config <file>', 'YAML configuration file (default ./coffer.yaml if present; COFFER_CONFIG)')
    .showHelpAfterError('(run coffer --help for usage)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s), writeOut: (s) => process.stdout.write(s) });

  // Configuration: flags > env (COFFER_…) > file > defaults, for every option of every command
  // (src/config/layers.ts). Runs after parsing, before the action; a bad file or value exits 2.
  let configFile: ConfigFile | undefined;
  let secrets: string[] = [];
  let origins = new Map<string, string>();
  program.hook('preAction', (_root, action) => {
    configFile = loadConfigFile(program.opts<{ config?: string }>().config ?? (env.COFFER_CONFIG || undefined), process.cwd());
    if (configFile) validateConfigFile(program, configFile);
    ({ secrets, origins } = applyConfig(program, action, env, configFile, process.cwd()));
  });

  let timer: NodeJS.Timeout | undefined;
  const context = (): CliContext => {
    const g = program.opts<GlobalFlags>();
    log = createLogger({ format: resolveLogFormat(g.logFormat, env, !!process.stderr.isTTY), runId, secrets });
    if (g.timeout !== undefined) {
      const ms = parseDuration(g.timeout, '--timeout');
      timer = setTimeout(() => ac.abort(new InterruptedError(`timed out after ${g.timeout}`, { exitCode: ExitCode.timeout })), ms);
      timer.unref();
    }
    return {
      // Children (pg_dump, psql…) get the environment without coffer's and the SDK's secrets.
      env: childSafeEnv(env),
      stdout: (t) => process.stdout.write(t),
      stderrIsTty: !!process.stderr.isTTY,
      stdoutIsTty: !!process.stdout.isTTY,
      log,
      signal: ac.signal,
      cwd: process.cwd(),
    };
  };

  const s3Options = (c: Command): Command =>
    c
      .option('--s3-endpoint <url>', 'S3 endpoint for MinIO/Ceph/… (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)')
      .option('--s3-region <region>', 'S3 region (default: AWS_REGION, else us-east-1)')
      .option('--s3-timeout <duration>', 'fail an S3 request whose connection is silent this long; it is retried (default 2m)');

  s3Options(
    program
      .command('backup')
      .description('dump one or more databases, compress, encrypt and store them')
      .option('--to <repository>', 's3://bucket/prefix, file:///path or a directory', undefined)
      .option('--db <name>', 'database to back up (repeatable; default PGDATABASE)', collect)
      .option('--dbname <conninfo>', 'libpq connection string or URI (password is never put on a command line)')
      .option('--recipient <age1…>', 'age recipient (public key); repeatable', collect)
      .option('--recipients-file <file>', 'file of age recipients, one per line; repeatable', collect)
      .option('--label <text>', 'label recorded in the manifest (implies --tier manual)')
      .option('--tier <tier>', 'daily, weekly, monthly or manual (default: decided from what exists)')
      .option('--compress <method>', 'zstd[:level] (default zstd:1), gzip[:level] or none')
      .option('--part-size <size>', 'multipart part size (default: from the database size)')
      .option('--max-parts <n>', 'provider limit on multipart parts (default 10000)')
      .option('--schema-only', 'plain SQL, schema only')
      .option('--data-only', 'plain SQL, data only')
      .option('--disable-triggers', 'with --data-only: pg_dump --disable-triggers, so the data loads despite foreign-key cycles (loaded by a superuser)')
      .option('--exclude-table-data <pattern>', 'pg_dump --exclude-table-data (repeatable)', collect)
      .option('--globals', 'also store pg_dumpall --globals-only (roles, tablespaces)')
      .option('--pg-bin <dir>', 'directory of pg_dump/psql')
      .option('--pg-dump-command <command>', 'command prefix to run pg_dump (no shell), e.g. "docker compose exec -T db pg_dump"')
      .option('--pg-dumpall-command <command>', 'command prefix to run pg_dumpall')
      .option('--psql-command <command>', 'command prefix to run psql')
      .option('--json', 'print the manifests as JSON on stdout')
      .option('--object-lock-mode <mode>', 'write each object with S3 object-lock retention (governance or compliance) for its tier\'s keep period')
      .option('--keep-daily <period>', 'retention of daily backups (object lock), e.g. 14d')
      .option('--keep-weekly <period>', 'retention of weekly backups (object lock), e.g. 8w')
      .option('--keep-monthly <period>', 'retention of monthly backups (object lock), e.g. 12mo')
      .option('--keep-manual <period>', 'retention of manual backups (object lock), e.g. 90d')
      .option('--all-databases', 'back up every connectable non-template database (postgres only if it holds user objects)')
      .option('--wait <duration>', 'if another run holds the lock, wait up to this long (default: exit 6 at once)')
      .option('--lock-dir <dir>', 'host lock directory (default $XDG_RUNTIME_DIR/coffer, /run/lock/coffer or TMPDIR/coffer-locks-<uid>)')
      .option('--metrics-file <path>', 'write Prometheus textfile-collector metrics here after every run')
      .option('--notify <url>', 'healthchecks.io-style ping URL: URL/start, URL on success, URL/fail on failure')
      .option('--webhook <url>', 'POST a JSON summary here per database, on success and on failure'),
  ).action(async (flags) => {
    const { runBackupCommand } = await import('./commands/backup.js');
    await runBackupCommand(flags, context());
  });

  s3Options(
    program
      .command('list')
      .description('list completed backups, newest first')
      .option('--from <repository>', 's3://bucket/prefix, file:///path or a directory')
      .option('--db <name>', 'only this database')
      .option('--json', 'print a JSON array on stdout'),
  ).action(async (flags) => {
    const { runListCommand } = await import('./commands/list.js');
    await runListCommand(flags, context());
  });

  s3Options(
    program
      .command('status')
      .description('newest completed backup per database; exits 7 when one is older than --max-age or missing')
      .option('--from <repository>', 's3://bucket/prefix, file:///path or a directory')
      .option('--db <name>', 'database that must have a fresh backup (repeatable; default: every database in the repository)', collect)
      .option('--max-age <duration>', 'oldest acceptable newest backup (default 26h)')
      .option('--json', 'print a JSON array on stdout'),
  ).action(async (flags) => {
    const { runStatusCommand } = await import('./commands/status.js');
    await runStatusCommand(flags, context());
  });

  const sourceOptions = (c: Command): Command =>
    s3Options(
      c
        .option('--from <repository>', 's3://bucket/prefix, file:///path or a directory')
        .option('--db <name>', 'database whose backups to use (needed when the repository holds several)')
        .option('--backup <id>', 'backup id, or latest', undefined)
        .option('--kind <kind>', 'with latest: full (default), schema-only or data-only')
        .option('--file <path>', 'a local copy of a backup object (.age), instead of a repository')
        .option('--identity <file>', 'age identity file (private key); repeatable', collect),
    );
  const serverOptions = (c: Command): Command =>
    c
      .option('--dbname <conninfo>', 'target server (libpq conninfo or URI; default: PG* environment)')
      .option('--maintenance-db <name>', 'database to connect to for CREATE/DROP/RENAME', 'postgres')
      .option('--pg-bin <dir>', 'directory of pg_restore/psql')
      .option('--pg-restore-command <command>', 'command prefix to run pg_restore (no shell)')
      .option('--psql-command <command>', 'command prefix to run psql (no shell)');

  serverOptions(
    sourceOptions(
      program
        .command('restore')
        .description('restore a backup into a fresh database (atomically), then run smoke checks'),
    ),
  )
    .option('--target-db <name>', 'the database to create')
    .option('--replace', 'if the target exists, keep it aside as <name>__before_<time> and put the restore in its place')
    .option('--smoke <sql>', 'query to run on the restored database; a failure fails the restore (repeatable)', collect)
    .option('--no-owner', 'pg_restore --no-owner')
    .option('--no-privileges', 'pg_restore --no-privileges')
    .option('--jobs <n>', 'parallel pg_restore jobs (spools the archive to a private temp file)')
    .option('--spool-dir <dir>', 'where to spool for --jobs (default: TMPDIR)')
    .option('--with-globals', "apply the backup's roles first (backups taken with --globals)")
    .option('--output <file>', 'write the decrypted archive to a file instead of restoring')
    .option('--into-existing <db>', 'load a data-only backup (latest: the newest data-only one) into this existing database, which holds the schema: one transaction, materialized views refreshed')
    .option('--json', 'print the summary as JSON on stdout')
    .action(async (flags) => {
      const { runRestoreCommand } = await import('./commands/restore.js');
      await runRestoreCommand(flags, context());
    });

  sourceOptions(program.command('verify').description('download, check sha256, decrypt to the last byte and read the archive TOC'))
    .option('--pg-bin <dir>', 'directory of pg_restore')
    .option('--pg-restore-command <command>', 'command prefix to run pg_restore')
    .option('--json', 'print results as JSON on stdout')
    .action(async (flags) => {
      const { runVerifyCommand } = await import('./commands/restore.js');
      await runVerifyCommand(flags, context());
    });

  serverOptions(sourceOptions(program.command('drill').description('restore drill: restore into a scratch database, check, record, drop')))
    .option('--smoke <sql>', 'query to run on the restored database (repeatable)', collect)
    .option('--jobs <n>', 'parallel pg_restore jobs')
    .option('--result-file <file>', 'also write the JSON result here')
    .action(async (flags) => {
      const { runDrillCommand } = await import('./commands/restore.js');
      await runDrillCommand(flags, context());
    });

  // Retention: the keep periods (units d, w, mo = 31 d, y = 366 d; whole days rounded up).
  const keepOptions = (c: Command): Command =>
    c
      .option('--keep-daily <period>', 'keep daily backups this long (default 14d)')
      .option('--keep-weekly <period>', 'keep weekly backups this long (default 8w)')
      .option('--keep-monthly <period>', 'keep monthly backups this long (default 12mo = 372 days)')
      .option('--keep-manual <period>', 'keep manual backups this long (default 90d)');

  keepOptions(
    s3Options(
      program
        .command('init')
        .description('set up an S3 bucket for coffer (admin, once, idempotent): bucket, object lock, lifecycle rules')
        .option('--to <repository>', 's3://bucket/prefix')
        .option('--create-bucket', 'create the bucket if it does not exist')
        .option('--object-lock <mode>', 'governance or compliance: create the bucket with object lock and set its default retention')
        .option('--dry-run', 'print the plan, change nothing'),
    ),
  ).action(async (flags) => {
    const { runInitCommand } = await import('./commands/init.js');
    await runInitCommand(flags, context());
  });

  const retention = program.command('retention').description('retention policy of a repository');
  keepOptions(
    s3Options(
      retention
        .command('check')
        .description("compare the bucket's lifecycle and object-lock configuration with the policy; drift exits 7")
        .option('--from <repository>', 's3://bucket/prefix')
        .option('--object-lock-mode <mode>', 'also require object lock with this mode (governance or compliance)')
        .option('--json', 'print the result as JSON on stdout'),
    ),
  ).action(async (flags) => {
    const { runRetentionCheckCommand } = await import('./commands/retention.js');
    await runRetentionCheckCommand(flags, context());
  });

  keepOptions(
    program
      .command('prune')
      .description('delete expired backups from a local repository (never the newest --min-keep per database, never foreign files)')
      .option('--from <repository>', 'the repository directory')
      .option('--dry-run', 'print what would be deleted, delete nothing')
      .option('--min-keep <n>', 'always keep this many newest good backups per database (default 3)')
      .option('--json', 'print the plan as JSON on stdout'),
  ).action(async (flags) => {
    const { runPruneCommand } = await import('./commands/prune.js');
    await runPruneCommand(flags, context());
  });

  program
    .command('keygen')
    .description('create an age X25519 identity (private key); prints its recipient')
    .option('--out <file>', 'write the identity here (mode 0600, never overwritten)')
    .action(async (flags) => {
      const { runKeygenCommand } = await import('./commands/keygen.js');
      await runKeygenCommand(flags, context());
    });

  program
    .command('config')
    .description('configuration')
    .command('show')
    .description('print the effective configuration of every command (file, environment, defaults), secrets redacted')
    .option('--json', 'print it as JSON on stdout')
    .action(async (flags) => {
      const { runConfigShowCommand } = await import('./commands/config.js');
      runConfigShowCommand(flags, context(), program, configFile, env);
    });

  program
    .command('demo')
    .description('try coffer: a throwaway PostgreSQL with a sample "vault" database, backed up into ./backups')
    .option('--dir <directory>', 'repository directory', './backups')
    .option('--pg-bin <dir>', 'PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)')
    .action(async (flags) => {
      const { runDemoCommand } = await import('./commands/demo.js');
      await runDemoCommand(flags, context());
    });

  try {
    await program.parseAsync(argv, { from: 'node' });
  } catch (err) {
    if (err instanceof CommanderError) {
      exitCode = err.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
    } else {
      exitCode = exitCodeOf(err);
      log.error(err instanceof UsageError ? withOrigin(formatErrorLine(err), origins) : formatErrorLine(err), { exit: exitCode, detail: err instanceof CofferError ? err.detail : undefined });
      if (env.COFFER_DEBUG && err instanceof Error) process.stderr.write(`${err.stack ?? ''}\n`);
    }
  } finally {
    if (timer) clearTimeout(timer);
    process.off('beforeExit', onDrained);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  return exitCode;
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
    // Everything is closed by now; a stray keep-alive socket must not hold a cron job open.
    setTimeout(() => process.exit(code), 2000).unref();
  },
  (err: unknown) => {
    process.stderr.write(`coffer: unexpected error: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = ExitCode.unexpected;
  },
);
