import type { ConfigLayout } from '../config/layers.js';
import { value } from '../config/options.js';
import { choice, duration, text } from '../config/parsers.js';
import type { CommandModule } from './command.js';
import { backup } from './commands/backup.js';
import { list } from './commands/list.js';
import { status } from './commands/status.js';
import { report } from './commands/report.js';
import { drill, restore, verify } from './commands/restore.js';
import { show } from './commands/show.js';
import { init } from './commands/init.js';
import { retentionCheck } from './commands/retention.js';
import { prune } from './commands/prune.js';
import { keygen } from './commands/keygen.js';
import { rekey } from './commands/rekey.js';
import { configShow } from './commands/config.js';
import { demo } from './commands/demo.js';
import { walFetchCommand, walPushCommand } from './commands/wal.js';

/**
 * Every command of the coffer binary and the program's own options: all main.ts registers.
 * A new command is a module in commands/ (`defineCommand`) listed here. Those modules hold the
 * declarations only (every command's options are needed at each start, to check the
 * configuration file); each `run` imports its module in run/ when that command runs, so that
 * starting coffer for one command does not load the code of all the others (a WAL file per
 * process: wal-push and wal-fetch start hundreds of times an hour).
 */

/** The commands, in the order `coffer --help` lists them. */
export const COMMANDS: readonly CommandModule[] = [backup, list, status, report, restore, show, verify, drill, walPushCommand, walFetchCommand, init, retentionCheck, prune, rekey, keygen, configShow, demo];

/** Commands that only group subcommands (`retention check`). */
export const GROUPS: Readonly<Record<string, string>> = {
  retention: 'retention policy of a repository',
  config: 'configuration',
};

/** Options of the program itself, before the command (`coffer --timeout 2h backup`). */
export const GLOBAL_OPTIONS = {
  logFormat: value('--log-format <format>', 'text, json or auto (json when stderr is not a terminal)', choice, { choices: ['text', 'json', 'auto'] }),
  timeout: value('--timeout <duration>', 'abort the whole run after this long (e.g. 2h)', duration),
  config: value('--config <file>', 'YAML configuration file (default ./coffer.yaml if present; COFFER_CONFIG)', text, { configurable: false }),
};

/** The declarations, for checking the configuration file and `config show`. */
export const LAYOUT: ConfigLayout & { globals: typeof GLOBAL_OPTIONS } = { globals: GLOBAL_OPTIONS, commands: COMMANDS.map((c) => ({ path: c.name.split(' '), options: c.options })) };
