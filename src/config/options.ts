/**
 * How an option is declared: once, in the module of the command that has it (or in a shared
 * group in src/cli/option-groups.ts). The declaration is all there is: commander's flag and
 * help text, the parser, the default, the names in the environment and the configuration file,
 * and whether the value is a secret. The command receives `Values<typeof options>`, typed from
 * the declarations; src/config/layers.ts resolves flags > environment > file > defaults.
 *
 * Names in the environment and the file are derived from the flag, the same for every option:
 * `--keep-daily` is `COFFER_BACKUP_KEEP_DAILY` (command first), then `COFFER_KEEP_DAILY`, and
 * `keepDaily` in the command's section of the file, then at its top level. The property name
 * of a declaration is that file key (`keepDaily: value('--keep-daily <period>', …)`).
 */

/**
 * Converts one option value.
 * - `parse` turns the text into the command's value; its messages name the option by its flag
 *   (`--wait`), and when the value came from the environment or the file the resolution adds
 *   where (`(value from COFFER_WAIT)`).
 * - `check`, when present, tests a value from the environment or the file up front — every
 *   section of the file, whichever command runs — naming where it came from
 *   (`config file coffer.yaml: backup.wait: invalid duration "soon"`).
 */
export interface Parser<T> {
  parse(raw: string, flag: string): T;
  check?(raw: string, label: string): void;
  /** In the environment, a list of these takes one item per line (SQL, free text), not words. */
  lines?: boolean;
  /** `config show` prints only a URL's origin (ping URLs often carry a token in their path). */
  url?: boolean;
}

/** A second name for an option: a file key ('' = none) and an environment variable. */
export interface Alias {
  key: string;
  env: string;
}

export type OptionKind = 'switch' | 'value' | 'list' | 'secret';

/**
 * One option. `R` is the type the command receives. Secrets have no flag on purpose (a
 * command line is world-readable): they come from `COFFER_<NAME>` or the file, each also from a
 * file (`<key>File`, `COFFER_<NAME>_FILE`), are never printed, and `config show` masks them.
 */
export interface OptionDecl<R = unknown> {
  readonly kind: OptionKind;
  /** commander's flags (`--to <repository>`, `--no-owner`); none for a secret. */
  readonly flags?: string;
  readonly help?: string;
  readonly parser: Parser<unknown>;
  /** Text used when nothing sets the option (parsed like any other value). */
  readonly default?: string;
  /** Show the default in `--help` (`(default: "postgres")`) and `config show`. */
  readonly showDefault?: boolean;
  /** The only values accepted (commander checks the flag, the resolution the rest). */
  readonly choices?: readonly string[];
  readonly aliases?: readonly Alias[];
  /** false: command line only (`--config`, which names the file itself). */
  readonly configurable?: boolean;
  /** A secret's environment variable (`COFFER_PGPASSWORD`). */
  readonly env?: string;
  /** Phantom: the resolved type. */
  readonly _value?: R;
}

export type Options = Readonly<Record<string, OptionDecl>>;

/** What a command receives: one typed value per declared option. */
export type Values<O extends Options> = { -readonly [K in keyof O]: O[K] extends OptionDecl<infer R> ? R : never };

interface ValueExtras {
  aliases?: readonly Alias[];
  choices?: readonly string[];
  configurable?: boolean;
}

/** A switch (`--json`, `--no-owner`): false unless given. */
export function flag(flags: string, help: string): OptionDecl<boolean> {
  return { kind: 'switch', flags, help, parser: { parse: () => true } };
}

/** An option with one value; undefined unless set, or its default. */
export function value<T>(flags: string, help: string, parser: Parser<T>, extras: ValueExtras & { default: string; showDefault?: boolean }): OptionDecl<T>;
export function value<T>(flags: string, help: string, parser: Parser<T>, extras?: ValueExtras): OptionDecl<T | undefined>;
export function value<T>(flags: string, help: string, parser: Parser<T>, extras: ValueExtras & { default?: string; showDefault?: boolean } = {}): OptionDecl<T | undefined> {
  return { kind: 'value', flags, help, parser, ...extras };
}

/** A repeatable option (`--db a --db b`); empty unless set. A flag list replaces a configured one. */
export function list<T>(flags: string, help: string, parser: Parser<T>, extras?: Pick<ValueExtras, 'aliases' | 'configurable'>): OptionDecl<T[]> {
  return { kind: 'list', flags, help, parser, ...extras };
}

/** A secret setting (no flag): its key is the property name, `env` its variable. */
export function secret(env: string): OptionDecl<string | undefined> {
  return { kind: 'secret', env, parser: { parse: (s) => s } };
}

/** `keep-daily` → `keepDaily`. */
export function camelCase(name: string): string {
  return name.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** `keep-daily` → `KEEP_DAILY`. */
export function upperSnake(name: string): string {
  return name.replace(/-/g, '_').toUpperCase();
}

/** `--no-owner <x>` → `no-owner`. */
export function longName(decl: OptionDecl): string | undefined {
  return /--([a-z0-9-]+)/.exec(decl.flags ?? '')?.[1];
}
