import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { errnoWords, UsageError } from '../errors.js';
import type { ConfigFile } from './config-file.js';
import { allCommands, commandPath, optionSpecs, upperSnake, type OptionSpec } from './option-specs.js';
import { passwordInConnectionString, redactConnectionString, REDACTED } from './redact.js';
import { suggestKey } from './suggest.js';
import { checkOptionValue } from './value-checks.js';

/**
 * Precedence, implemented once for every option of every command:
 * flags > environment > configuration file > defaults.
 *
 * - Environment: `COFFER_<COMMAND>_<FLAG>` (e.g. `COFFER_RESTORE_DBNAME`), then
 *   `COFFER_<FLAG>` (`--keep-daily` → `COFFER_KEEP_DAILY`).
 * - File: the command's section (`backup:`), then the top level; keys are the camelCase flag
 *   names (`keepDaily`, `noOwner`).
 * - A few alternative names: `repository` / `COFFER_REPOSITORY` for `--to` and `--from`,
 *   `recipients` / `COFFER_RECIPIENTS` for `--recipient`, `COFFER_IDENTITY_FILE` for `--identity`.
 * - Secrets, which have no flag on purpose (a command line is world-readable): see
 *   {@link SECRET_SETTINGS}. Each can come from a file (`pgPasswordFile`, `COFFER_PGPASSWORD_FILE`).
 */

export type Env = NodeJS.ProcessEnv;

/** A value found in the environment or the file, and where (for messages and `config show`). */
export interface FoundValue {
  value: unknown;
  source: 'env' | 'config';
  /** `COFFER_TIMEOUT` or `coffer.yaml: backup.timeout`. */
  label: string;
}

/** A setting without a flag. It is attached to the option values of commands that declare `needs`. */
export interface SecretSetting {
  key: string;
  env: string;
  needs: string;
}

/** Secrets: never on a command line, never printed; each also as `<key>File` / `<ENV>_FILE`. */
export const SECRET_SETTINGS: readonly SecretSetting[] = [
  { key: 'pgPassword', env: 'COFFER_PGPASSWORD', needs: 'dbname' },
  { key: 's3AccessKeyId', env: 'COFFER_S3_ACCESS_KEY_ID', needs: 's3Endpoint' },
  { key: 's3SecretAccessKey', env: 'COFFER_S3_SECRET_ACCESS_KEY', needs: 's3Endpoint' },
];

interface Alias {
  /** File key ('' = environment only). */
  key: string;
  env: string;
  /** Option keys it stands for; the first one the command declares is used. */
  targets: string[];
}

const ALIASES: readonly Alias[] = [
  { key: 'repository', env: 'COFFER_REPOSITORY', targets: ['to', 'from'] },
  { key: 'recipients', env: 'COFFER_RECIPIENTS', targets: ['recipient'] },
  { key: '', env: 'COFFER_IDENTITY_FILE', targets: ['identity'] },
];

/** Placeholders whose values are free text: one list element per line in the environment. */
const FREE_TEXT = new Set(['sql', 'text', 'command']);

const TRUE = new Set(['1', 'true', 'yes', 'on']);
const FALSE = new Set(['0', 'false', 'no', 'off']);

function isMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function nonEmpty(env: Env, name: string): string | undefined {
  const v = env[name];
  return v === undefined || v === '' ? undefined : v;
}

/** Section of the file that applies to a command: its top-level command's name. */
function sectionOf(file: ConfigFile | undefined, section: string | undefined): Record<string, unknown> | undefined {
  if (!file || section === undefined) return undefined;
  const s = file.data[section];
  return isMapping(s) ? s : undefined;
}

/** Converts and checks one value for an option; `label` names its origin. */
function convert(spec: OptionSpec, raw: unknown, label: string, fromEnv: boolean): unknown {
  if (spec.kind === 'boolean') {
    let b: boolean;
    if (typeof raw === 'boolean') b = raw;
    else if (fromEnv && typeof raw === 'string' && TRUE.has(raw.trim().toLowerCase())) b = true;
    else if (fromEnv && typeof raw === 'string' && FALSE.has(raw.trim().toLowerCase())) b = false;
    else throw new UsageError(`${label}: expected true or false (got ${JSON.stringify(raw)})`);
    return spec.option.negate ? !b : b;
  }
  if (spec.kind === 'list') {
    let items: string[];
    if (fromEnv && typeof raw === 'string') {
      items = raw.includes('\n') || (spec.placeholder !== undefined && FREE_TEXT.has(spec.placeholder)) ? raw.split(/\r?\n/) : raw.split(/[\s,]+/);
      items = items.map((s) => s.trim()).filter(Boolean);
    } else if (typeof raw === 'string' || typeof raw === 'number') {
      items = [String(raw)];
    } else if (Array.isArray(raw) && raw.every((x) => typeof x === 'string' || typeof x === 'number')) {
      items = raw.map(String);
    } else {
      throw new UsageError(`${label}: expected a list of strings (got ${describe(raw)})`);
    }
    if (items.length === 0) throw new UsageError(`${label}: the list is empty`);
    for (const [i, item] of items.entries()) checkOptionValue(spec, item, items.length > 1 ? `${label}[${i}]` : label);
    return items;
  }
  if (typeof raw !== 'string' && typeof raw !== 'number') {
    throw new UsageError(`${label}: expected a single value (got ${describe(raw)})`, Array.isArray(raw) ? { hint: 'this command takes one value; put lists in the section of the command that takes several, e.g. backup:' } : undefined);
  }
  const s = String(raw);
  checkOptionValue(spec, s, label);
  return s;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return JSON.stringify(v);
  return `${typeof v} ${String(v)}`;
}

function aliasesFor(spec: OptionSpec, declared: Set<string>): Alias[] {
  return ALIASES.filter((a) => a.targets.find((t) => declared.has(t)) === spec.key);
}

/**
 * The value of one option from the environment or the file (not the command line), checked
 * and converted to what commander would have stored; undefined when neither sets it.
 */
export function findOptionValue(spec: OptionSpec, section: string | undefined, declared: Set<string>, env: Env, file: ConfigFile | undefined): FoundValue | undefined {
  const aliases = aliasesFor(spec, declared);
  const envNames = [
    ...(section !== undefined ? [`COFFER_${upperSnake(section)}_${spec.envSuffix}`] : []),
    `COFFER_${spec.envSuffix}`,
    ...aliases.map((a) => a.env),
  ];
  for (const name of envNames) {
    const v = nonEmpty(env, name);
    if (v !== undefined) return { value: convert(spec, v, name, true), source: 'env', label: name };
  }
  if (!file) return undefined;
  const keys = [spec.key, ...aliases.map((a) => a.key).filter(Boolean)];
  const sec = sectionOf(file, section);
  for (const [where, prefix] of [
    [sec, `${section}.`],
    [file.data, ''],
  ] as const) {
    if (!where) continue;
    for (const k of keys) {
      // A mapping at the top level is a command section (`backup:`), never an option value.
      if (prefix === '' && isMapping(where[k])) continue;
      if (where[k] !== undefined && where[k] !== null) {
        const label = `config file ${file.name}: ${prefix}${k}`;
        return { value: convert(spec, where[k], label, false), source: 'config', label };
      }
    }
  }
  return undefined;
}

function readSecretFile(file: string, label: string, baseDir: string): string {
  let text: string;
  try {
    text = readFileSync(path.resolve(baseDir, file), 'utf8');
  } catch (err) {
    throw new UsageError(`${label}: cannot read ${file} (${errnoWords(err)})`);
  }
  const v = text.replace(/\r?\n$/, '');
  if (v === '') throw new UsageError(`${label}: ${file} is empty`);
  return v;
}

/** A secret setting from `<ENV>`, `<ENV>_FILE`, the command's section, then the top level. */
export function findSecret(s: SecretSetting, section: string | undefined, env: Env, file: ConfigFile | undefined, cwd: string): FoundValue | undefined {
  // COFFER_RESTORE_PGPASSWORD before COFFER_PGPASSWORD, as for options.
  const names = [...(section !== undefined ? [s.env.replace(/^COFFER_/, `COFFER_${upperSnake(section)}_`)] : []), s.env];
  for (const name of names) {
    const direct = nonEmpty(env, name);
    if (direct !== undefined) return { value: direct, source: 'env', label: name };
    const viaFile = nonEmpty(env, `${name}_FILE`);
    if (viaFile !== undefined) return { value: readSecretFile(viaFile, `${name}_FILE`, cwd), source: 'env', label: `${name}_FILE` };
  }
  if (!file) return undefined;
  const sec = sectionOf(file, section);
  for (const [where, prefix] of [
    [sec, `${section}.`],
    [file.data, ''],
  ] as const) {
    if (!where) continue;
    const v = where[s.key];
    const f = where[`${s.key}File`];
    const label = `config file ${file.name}: ${prefix}${s.key}`;
    if (v !== undefined && v !== null && f !== undefined && f !== null) throw new UsageError(`${label} and ${s.key}File are both set; keep one`);
    if (v !== undefined && v !== null) {
      if (typeof v !== 'string' || v === '') throw new UsageError(`${label}: expected a non-empty string`);
      return { value: v, source: 'config', label };
    }
    if (f !== undefined && f !== null) {
      if (typeof f !== 'string' || f === '') throw new UsageError(`${label}File: expected a file path`);
      // Relative paths are relative to the working directory, as for every path setting.
      return { value: readSecretFile(f, `${label}File`, cwd), source: 'config', label: `${label}File` };
    }
  }
  return undefined;
}

/** Every file key a section (or the top level, `section` undefined) accepts, for messages. */
function knownKeys(program: Command, section: string | undefined): Map<string, OptionSpec | 'secret' | 'section'> {
  const out = new Map<string, OptionSpec | 'secret' | 'section'>();
  const cmds = allCommands(program).filter((c) => section === undefined || c.path[0] === section);
  const specs = [...optionSpecs(program), ...cmds.flatMap((c) => optionSpecs(c.cmd))];
  const declared = new Set(specs.map((s) => s.key));
  for (const spec of specs) if (!out.has(spec.key)) out.set(spec.key, spec);
  for (const a of ALIASES) {
    const target = a.targets.map((t) => specs.find((s) => s.key === t)).find(Boolean);
    if (a.key && target) out.set(a.key, target);
  }
  for (const s of SECRET_SETTINGS) {
    if (!declared.has(s.needs)) continue;
    out.set(s.key, 'secret');
    out.set(`${s.key}File`, 'secret');
  }
  if (section === undefined) for (const c of program.commands) if (!out.has(c.name())) out.set(c.name(), 'section');
  return out;
}

/**
 * Checks the whole file against the commands' declarations before anything runs: unknown keys
 * (with a suggestion), sections that are not mappings, wrong types and bad values, in any
 * section — a mistake in `restore:` is reported by tonight's backup, not by the restore.
 */
export function validateConfigFile(program: Command, file: ConfigFile): void {
  const check = (data: Record<string, unknown>, section: string | undefined): void => {
    const known = knownKeys(program, section);
    for (const [key, raw] of Object.entries(data)) {
      const label = `config file ${file.name}: ${section !== undefined ? `${section}.` : ''}${key}`;
      const isSection = section === undefined && program.commands.some((c) => c.name() === key);
      const what = isSection ? 'section' : known.get(key);
      if (what === undefined) {
        const best = suggestKey(key, [...known.keys()]);
        if (section !== undefined && !best && knownKeys(program, undefined).has(key)) {
          throw new UsageError(`${label}: not a setting of coffer ${section}`, { hint: `move it to the top level or to the section of a command that has --${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}` });
        }
        const scope = section !== undefined ? ` for coffer ${section}` : '';
        throw new UsageError(`${label}: unknown setting${scope}${best ? ` (did you mean "${best}"?)` : ''}`, {
          hint: 'keys are the camelCase flag names; see `coffer --help` and README "Configuration"',
        });
      }
      if (what === 'section') {
        if (!isMapping(raw)) throw new UsageError(`${label}: a command section must be a mapping of settings (got ${describe(raw)})`);
        check(raw, key);
        continue;
      }
      if (raw === null) continue;
      if (what === 'secret') {
        if (typeof raw !== 'string' || raw === '') throw new UsageError(`${label}: expected a non-empty string`);
        continue;
      }
      convert(what, raw, label, false);
    }
  };
  check(file.data, undefined);
}

/** What applying the configuration did, for the logger. */
export interface AppliedConfig {
  /** Secret values that must never appear in output (for the logger's scrubber). */
  secrets: string[];
  /** `--flag` → where its value came from (`COFFER_X`, `config file coffer.yaml: backup.x`), for flags not given on the command line. */
  origins: Map<string, string>;
}

/**
 * Fills every option of `action` (and of its parents, for global options) that was not given
 * on the command line from the environment, then the file. Secrets are attached to the
 * option values of commands that can use them (`pgPassword` where `--dbname` exists,
 * S3 keys where `--s3-endpoint` exists), under their key, with source 'env' or 'config'.
 */
export function applyConfig(program: Command, action: Command, env: Env, file: ConfigFile | undefined, cwd: string): AppliedConfig {
  const section = commandPath(action)[0];
  const chain: Command[] = [];
  for (let c: Command | null = action; c; c = c.parent) chain.push(c);
  const origins = new Map<string, string>();
  for (const cmd of chain) {
    const specs = optionSpecs(cmd);
    const declared = new Set(specs.map((s) => s.key));
    for (const spec of specs) {
      if (cmd.getOptionValueSource(spec.attr) === 'cli') continue;
      const found = findOptionValue(spec, section, declared, env, file);
      if (!found) continue;
      cmd.setOptionValueWithSource(spec.attr, found.value, found.source);
      if (spec.option.long) origins.set(spec.option.long, found.label);
    }
  }
  const declared = new Set(optionSpecs(action).map((s) => s.key));
  const secrets: string[] = [];
  for (const s of SECRET_SETTINGS) {
    if (!declared.has(s.needs)) continue;
    const found = findSecret(s, section, env, file, cwd);
    if (!found) continue;
    action.setOptionValueWithSource(s.key, found.value, found.source);
    secrets.push(String(found.value));
  }
  const opts = action.opts<Record<string, unknown>>();
  if ((opts.s3AccessKeyId === undefined) !== (opts.s3SecretAccessKey === undefined)) {
    throw new UsageError('s3AccessKeyId and s3SecretAccessKey must be set together', {
      hint: "set both (config file or COFFER_S3_…), or neither to use the AWS SDK's credential chain (AWS_ACCESS_KEY_ID, profile, instance role)",
    });
  }
  if (typeof opts.dbname === 'string') {
    const pw = passwordInConnectionString(opts.dbname);
    if (pw !== undefined) secrets.push(pw);
  }
  for (const name of ['PGPASSWORD', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']) {
    const v = nonEmpty(env, name);
    if (v !== undefined) secrets.push(v);
  }
  return { secrets, origins };
}

/**
 * Commands check their values and name the flag in the message (`--compress must be …`); when
 * that value came from the environment or the file, say so, so the operator edits the right
 * place: `--compress must be … (value from config file coffer.yaml: backup.compress)`.
 */
export function withOrigin(line: string, origins: ReadonlyMap<string, string>): string {
  const flag = /^(--[a-z0-9-]+)\b/.exec(line)?.[1];
  const origin = flag === undefined ? undefined : origins.get(flag);
  return origin === undefined ? line : `${line} (value from ${origin})`;
}

/** One row of `coffer config show`. */
export interface EffectiveSetting {
  value: unknown;
  /** `flag`, `env COFFER_X`, `config file coffer.yaml: backup.to`, or `default`. */
  source: string;
}

/**
 * The effective configuration of every command, as it would run without further flags:
 * environment, file and defaults, secrets replaced by `***` and passwords inside connection
 * strings and URLs hidden.
 */
export function effectiveConfig(program: Command, env: Env, file: ConfigFile | undefined, cwd: string): Record<string, Record<string, EffectiveSetting>> {
  const out: Record<string, Record<string, EffectiveSetting>> = {};
  for (const { cmd, path: p } of allCommands(program)) {
    if (cmd.commands.length > 0 && cmd.options.length === 0) continue;
    const section = p[0];
    const rows: Record<string, EffectiveSetting> = {};
    for (const c of [program, cmd]) {
      const specs = optionSpecs(c);
      const declared = new Set(specs.map((s) => s.key));
      for (const spec of specs) {
        if (spec.option.hidden) continue;
        const found = findOptionValue(spec, section, declared, env, file);
        const value = found ? found.value : spec.option.defaultValue;
        if (value === undefined) continue;
        rows[spec.key] = { value: redactValue(value, spec.placeholder), source: found ? sourceText(found) : 'default' };
      }
    }
    const declared = new Set(optionSpecs(cmd).map((s) => s.key));
    for (const s of SECRET_SETTINGS) {
      if (!declared.has(s.needs)) continue;
      const found = findSecret(s, section, env, file, cwd);
      if (found) rows[s.key] = { value: REDACTED, source: sourceText(found) };
    }
    out[p.join(' ')] = rows;
  }
  return out;
}

function sourceText(f: FoundValue): string {
  return f.source === 'env' ? `env ${f.label}` : f.label;
}

/**
 * Connection strings lose their passwords; URLs (`<url>` options: ping and webhook endpoints,
 * whose path is often the only credential, e.g. a healthchecks.io check id) keep only their
 * origin.
 */
function redactValue(v: unknown, placeholder: string | undefined): unknown {
  if (Array.isArray(v)) return v.map((x) => redactValue(x, placeholder));
  if (typeof v !== 'string') return v;
  if (placeholder === 'url') {
    try {
      const u = new URL(v);
      return u.pathname === '/' && u.search === '' && !u.username && !u.password ? `${u.origin}` : `${u.origin}/${REDACTED}`;
    } catch {
      return REDACTED;
    }
  }
  return redactConnectionString(v);
}

/** Variables holding secrets that no child process needs (libpq's PGPASSWORD is kept). */
const IN_PROCESS_ONLY = new Set(['AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']);
const SECRET_SUFFIXES = SECRET_SETTINGS.map((s) => s.env.replace(/^COFFER_/, ''));

/**
 * The environment for child processes (pg_dump, psql, command prefixes): the same, minus
 * S3 credentials and coffer's own secret variables (`COFFER_[<COMMAND>_]PGPASSWORD[_FILE]`,
 * `COFFER_…S3_SECRET_ACCESS_KEY…`), which are used in-process only.
 */
export function childSafeEnv(env: Env): Env {
  const out: Env = {};
  for (const [k, v] of Object.entries(env)) {
    if (IN_PROCESS_ONLY.has(k)) continue;
    if (k.startsWith('COFFER_') && SECRET_SUFFIXES.some((suf) => k.endsWith(suf) || k.endsWith(`${suf}_FILE`))) continue;
    out[k] = v;
  }
  return out;
}
