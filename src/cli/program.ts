import { Option, type Command } from 'commander';
import { loadConfigFile, type ConfigFile } from '../config/config-file.js';
import { resolveOptions, secretValues, sourcesOf, validateConfigFile, type ConfigLayout, type Env, type Raw, type Resolved } from '../config/layers.js';
import { camelCase, longName, type Options } from '../config/options.js';
import type { CommandModule } from './command.js';

/**
 * How command modules become commander commands: one commander option per declaration, and
 * before `run`, the resolution of every option (flags > environment > file > defaults).
 */

/** One commander option per declaration (secrets have none); the property name is the file key. */
export function addOptions(cmd: Command, options: Options): void {
  for (const [key, decl] of Object.entries(options)) {
    if (decl.flags === undefined) continue;
    if (camelCase(longName(decl) ?? '') !== key) throw new Error(`option ${key} is declared as ${decl.flags}: its key must be the camelCase flag name`);
    const o = new Option(decl.flags, decl.help);
    if (decl.kind === 'list') o.argParser((v: string, prev: string[] = []) => [...prev, v]);
    if (decl.choices) o.choices(decl.choices);
    if (decl.showDefault) o.default(decl.default);
    cmd.addOption(o);
  }
}

/** What the command line set, by option key (`--no-owner` given: `noOwner: true`). */
export function givenOn(cmd: Command, options: Options): Record<string, Raw> {
  const out: Record<string, Raw> = {};
  for (const [key, decl] of Object.entries(options)) {
    const o = cmd.options.find((x) => x.long === `--${longName(decl)}`);
    if (!o || cmd.getOptionValueSource(o.attributeName()) !== 'cli') continue;
    const v = cmd.getOptionValue(o.attributeName()) as Raw;
    out[key] = o.negate ? !v : v;
  }
  return out;
}

/**
 * Registers `commands` below `program` (`retention check` below a `retention` command that
 * `groups` describes); `action` runs the one the command line names.
 */
export function registerCommands(program: Command, commands: readonly CommandModule[], groups: Readonly<Record<string, string>>, action: (m: CommandModule, cmd: Command) => Promise<void>): void {
  for (const m of commands) {
    const [first, sub] = m.name.split(' ') as [string, string | undefined];
    let parent = program;
    if (sub !== undefined) parent = program.commands.find((c) => c.name() === first) ?? program.command(first).description(groups[first] ?? '');
    const cmd = parent.command(sub ?? first).description(m.summary);
    addOptions(cmd, m.options);
    if (m.operands !== undefined) cmd.arguments(m.operands);
    cmd.action(() => action(m, cmd));
  }
}

/** A command about to run, with everything resolved. */
export interface Invocation<G extends Options> {
  file: ConfigFile | undefined;
  resolved: Resolved<Options>;
  /** The program's own options (`--timeout`…), resolved in the command's section. */
  globals: Resolved<G>;
  /** Values the logger must never print. */
  secrets: string[];
  /** The command's options resolved for one source of the file's `sources:` (and its secrets), the command line still winning. */
  forSource: (name: string) => { resolved: Resolved<Options>; secrets: string[] };
}

/**
 * Loads the configuration file (`--config`, COFFER_CONFIG, else ./coffer.yaml if present),
 * checks all of it against `layout`, and resolves the options of `m` and of the program.
 */
export function resolveInvocation<G extends Options>(program: Command, cmd: Command, m: CommandModule, layout: ConfigLayout & { globals: G }, env: Env, cwd: string): Invocation<G> {
  const file = loadConfigFile(program.opts<{ config?: string }>().config ?? (env.COFFER_CONFIG || undefined), cwd);
  if (file) validateConfigFile(layout, file);
  const layers = { env, file, cwd, section: m.name.split(' ')[0] };
  const given = givenOn(cmd, m.options);
  const resolved = resolveOptions(m.options, given, layers);
  const globals = resolveOptions(layout.globals, givenOn(program, layout.globals), layers);
  // Every source's secrets are known to the logger from the start: a source's error is logged too.
  const sourceSecrets = ('allSources' in m.options ? Object.keys(sourcesOf(file) ?? {}) : []).flatMap((name) => secretValues(m.options, resolveOptions(m.options, given, { ...layers, source: name }), env));
  const forSource = (name: string): { resolved: Resolved<Options>; secrets: string[] } => {
    const r = resolveOptions(m.options, given, { ...layers, source: name });
    return { resolved: r, secrets: secretValues(m.options, r, env) };
  };
  return { file, resolved, globals, secrets: [...secretValues(m.options, resolved, env), ...sourceSecrets], forSource };
}
