import type { ConfigFile } from '../config/config-file.js';
import type { ConfigLayout, Env } from '../config/layers.js';
import type { Options, Values } from '../config/options.js';
import type { CliContext } from './context.js';

/** What `config show` needs of the whole configuration (other commands ignore it). */
export interface LoadedConfig {
  /** The configuration file in use, if any. */
  file: ConfigFile | undefined;
  /** The full environment (the context's `env` has the secrets removed for children). */
  env: Env;
  /** Every command's declarations. */
  layout: ConfigLayout;
  /** The sources of the file's `sources:` (names, in the file's order). */
  sources: string[];
  /** The command's values for one source (its settings over the environment and the file; the command line still wins). */
  forSource: (name: string) => unknown;
}

/**
 * One command of the coffer binary. main.ts registers it with commander (`name` and
 * `summary`, one commander option per declaration), resolves its options (flags > environment
 * > file > defaults, src/config/layers.ts) and calls `run` with the parsed values.
 */
export interface CommandModule<O extends Options = Options> {
  /** `backup`, or `retention check` for a subcommand. */
  readonly name: string;
  readonly summary: string;
  readonly options: O;
  /** Positional operands in commander's syntax (`<path> [name]`); `run` receives them as `operands`. None unless declared. */
  readonly operands?: string;
  /**
   * The exit code of every failure of this command, whatever its kind (usage, storage, a bug…),
   * except `absent` (exit 1). `wal-fetch` sets it: a restore_command that fails must exit above
   * 125, or PostgreSQL ends recovery early.
   */
  readonly failureExitCode?: number;
  run(values: Values<O>, ctx: CliContext, config: LoadedConfig, operands: string[]): Promise<unknown> | unknown;
}

/** Declares a command; `run` receives values typed from `options`. */
export function defineCommand<O extends Options>(command: CommandModule<O>): CommandModule<O> {
  return command;
}
