import type { Command, Option } from 'commander';

/**
 * How the configuration layer sees the options a command declares. Nothing here lists
 * coffer's options by name: everything is derived from the commander declarations, so an
 * option added to any command is configurable from the environment and the file at once.
 */

/** Argument parser for repeatable options (`--db a --db b`). The config layer recognises
 * list-valued options by this exact function, so use it for every repeatable option. */
export const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

/** Value shape of an option: a switch, a repeatable list, or a single value. */
export type OptionKind = 'boolean' | 'list' | 'value';

/** One option of one command, with its names in each configuration source. */
export interface OptionSpec {
  option: Option;
  /** The key commander stores the value under (`--no-owner` → `owner`). */
  attr: string;
  /** Configuration file key: camelCase of the long flag (`--no-owner` → `noOwner`). */
  key: string;
  /** Environment suffix: UPPER_SNAKE of the long flag (`--keep-daily` → `KEEP_DAILY`). */
  envSuffix: string;
  kind: OptionKind;
  /** The argument placeholder without brackets (`--timeout <duration>` → `duration`). */
  placeholder: string | undefined;
}

/** Options that are about the configuration itself, or commander's own. */
const NOT_CONFIGURABLE = new Set(['config', 'help', 'version']);

/** `keep-daily` → `keepDaily`. */
export function camelCase(name: string): string {
  return name.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** `keep-daily` → `KEEP_DAILY`. */
export function upperSnake(name: string): string {
  return name.replace(/-/g, '_').toUpperCase();
}

function kindOf(o: Option): OptionKind {
  if (o.isBoolean() || o.negate) return 'boolean';
  if (o.variadic || o.parseArg === (collect as unknown)) return 'list';
  return 'value';
}

/** The configurable options a command declares itself (not its parent's). */
export function optionSpecs(cmd: Command): OptionSpec[] {
  const out: OptionSpec[] = [];
  for (const o of cmd.options) {
    const name = o.name();
    if (!o.long || NOT_CONFIGURABLE.has(name)) continue;
    const placeholder = /[<[]([^>\]]+)[>\]]/.exec(o.flags)?.[1]?.replace(/\.\.\.$/, '');
    out.push({ option: o, attr: o.attributeName(), key: camelCase(name), envSuffix: upperSnake(name), kind: kindOf(o), placeholder });
  }
  return out;
}

/** Every command below `root` (depth first), with its path of names from the root. */
export function allCommands(root: Command): { cmd: Command; path: string[] }[] {
  const out: { cmd: Command; path: string[] }[] = [];
  const walk = (c: Command, p: string[]): void => {
    for (const sub of c.commands) {
      const sp = [...p, sub.name()];
      out.push({ cmd: sub, path: sp });
      walk(sub, sp);
    }
  };
  walk(root, []);
  return out;
}

/** The command's path of names below the root (`retention check` → `['retention', 'check']`). */
export function commandPath(cmd: Command): string[] {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names;
}
