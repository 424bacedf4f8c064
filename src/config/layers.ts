import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { errnoWords, formatErrorLine, UsageError } from '../errors.js';
import type { ConfigFile } from './config-file.js';
import { longName, upperSnake, type OptionDecl, type Options, type Values } from './options.js';
import { passwordInConnectionString, redactConnectionString, REDACTED } from './redact.js';
import { suggestKey } from './suggest.js';

/**
 * Precedence, implemented once for every option of every command:
 * flags > environment > configuration file > defaults.
 *
 * - Environment: `COFFER_<COMMAND>_<FLAG>` (e.g. `COFFER_RESTORE_DBNAME`), then
 *   `COFFER_<FLAG>` (`--keep-daily` → `COFFER_KEEP_DAILY`), then the option's aliases.
 * - File: the command's section (`backup:`), then the top level; keys are the camelCase flag
 *   names (`keepDaily`, `noOwner`), then the option's aliases (`repository`, `recipients`).
 * - Secrets (declared with `secret()`, no flag on purpose: a command line is world-readable):
 *   `COFFER_[<COMMAND>_]<NAME>`, the file's key; each also from a file (`pgPasswordFile`,
 *   `COFFER_PGPASSWORD_FILE`).
 *
 * Every resolved value carries where it came from ({@link Setting}), so a message about a bad
 * value names the variable or the file line to fix.
 */

export type Env = NodeJS.ProcessEnv;

/** A value as given, before parsing: text, a list of texts, or a switch. */
export type Raw = string | string[] | boolean;

export type SourceKind = 'flag' | 'env' | 'file' | 'default';

/** One resolved option: its parsed value and where it came from. */
export interface Setting<T = unknown> {
  value: T;
  source: SourceKind;
  /** `COFFER_TIMEOUT` or `config file coffer.yaml: backup.timeout` (env and file only). */
  label?: string;
  /** The value as given (what `config show` prints); undefined when nothing set the option. */
  raw?: Raw;
}

/** Every option of a command, resolved. */
export type Resolved<O extends Options> = { [K in keyof O]: Setting<Values<O>[K]> };

/** Where values come from besides the command line. */
export interface Layers {
  env: Env;
  file: ConfigFile | undefined;
  /** Relative secret-file paths are relative to it. */
  cwd: string;
  /** The file section and environment infix of the command: its top-level name (`retention`). */
  section: string | undefined;
  /**
   * A source of the file's `sources:` (`backup --source NAME`): its settings win over the
   * environment and the rest of the file, for that source (flags still win over them).
   */
  source?: string | undefined;
}

/** The commands' declarations, for checking the file and for `config show`. */
export interface ConfigLayout {
  globals: Options;
  commands: readonly { path: readonly string[]; options: Options }[];
}

interface Found {
  raw: Raw;
  source: 'env' | 'file';
  label: string;
}

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

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return JSON.stringify(v);
  return `${typeof v} ${String(v)}`;
}

/** The up-front test of one value from the environment or the file; `label` names its origin. */
function checkValue(decl: OptionDecl, value: string, label: string): void {
  if (decl.choices && !decl.choices.includes(value)) {
    throw new UsageError(`${label}: must be one of ${decl.choices.join(', ')} (got ${JSON.stringify(value)})`);
  }
  decl.parser.check?.(value, label);
}

/** Converts a value from the environment or the file to its raw form, and checks it. */
function convert(decl: OptionDecl, raw: unknown, label: string, fromEnv: boolean): Raw {
  if (decl.kind === 'switch') {
    if (typeof raw === 'boolean') return raw;
    if (fromEnv && typeof raw === 'string' && TRUE.has(raw.trim().toLowerCase())) return true;
    if (fromEnv && typeof raw === 'string' && FALSE.has(raw.trim().toLowerCase())) return false;
    throw new UsageError(`${label}: expected true or false (got ${JSON.stringify(raw)})`);
  }
  if (decl.kind === 'list') {
    let items: string[];
    if (fromEnv && typeof raw === 'string') {
      items = raw.includes('\n') || decl.parser.lines ? raw.split(/\r?\n/) : raw.split(/[\s,]+/);
      items = items.map((s) => s.trim()).filter(Boolean);
    } else if (typeof raw === 'string' || typeof raw === 'number') {
      items = [String(raw)];
    } else if (Array.isArray(raw) && raw.every((x) => typeof x === 'string' || typeof x === 'number')) {
      items = raw.map(String);
    } else {
      throw new UsageError(`${label}: expected a list of strings (got ${describe(raw)})`);
    }
    if (items.length === 0) throw new UsageError(`${label}: the list is empty`);
    for (const [i, item] of items.entries()) checkValue(decl, item, items.length > 1 ? `${label}[${i}]` : label);
    return items;
  }
  if (typeof raw !== 'string' && typeof raw !== 'number') {
    throw new UsageError(`${label}: expected a single value (got ${describe(raw)})`, Array.isArray(raw) ? { hint: 'this command takes one value; put lists in the section of the command that takes several, e.g. backup:' } : undefined);
  }
  const s = String(raw);
  checkValue(decl, s, label);
  return s;
}

/** The option's value from the environment or the file, checked; undefined when neither sets it. */
function findValue(key: string, decl: OptionDecl, layers: Layers): Found | undefined {
  const { env, file, section } = layers;
  const suffix = upperSnake(longName(decl)!);
  const aliases = decl.aliases ?? [];
  const envNames = [...(section !== undefined ? [`COFFER_${upperSnake(section)}_${suffix}`] : []), `COFFER_${suffix}`, ...aliases.map((a) => a.env)];
  for (const name of envNames) {
    const v = nonEmpty(env, name);
    if (v !== undefined) return { raw: convert(decl, v, name, true), source: 'env', label: name };
  }
  if (!file) return undefined;
  const keys = [key, ...aliases.map((a) => a.key).filter(Boolean)];
  for (const [where, prefix] of [
    [sectionOf(file, section), `${section}.`],
    [file.data, ''],
  ] as const) {
    if (!where) continue;
    for (const k of keys) {
      // A mapping at the top level is a command section (`backup:`), never an option value.
      if (prefix === '' && isMapping(where[k])) continue;
      if (where[k] !== undefined && where[k] !== null) {
        const label = `config file ${file.name}: ${prefix}${k}`;
        return { raw: convert(decl, where[k], label, false), source: 'file', label };
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

/** A secret from `<ENV>`, `<ENV>_FILE`, the command's section, then the top level. */
function findSecret(key: string, decl: OptionDecl, layers: Layers): Found | undefined {
  const { env, file, section, cwd } = layers;
  const base = decl.env!;
  // COFFER_RESTORE_PGPASSWORD before COFFER_PGPASSWORD, as for options.
  const names = [...(section !== undefined ? [base.replace(/^COFFER_/, `COFFER_${upperSnake(section)}_`)] : []), base];
  for (const name of names) {
    const direct = nonEmpty(env, name);
    if (direct !== undefined) return { raw: direct, source: 'env', label: name };
    const viaFile = nonEmpty(env, `${name}_FILE`);
    if (viaFile !== undefined) return { raw: readSecretFile(viaFile, `${name}_FILE`, cwd), source: 'env', label: `${name}_FILE` };
  }
  if (!file) return undefined;
  for (const [where, prefix] of [
    [sectionOf(file, section), `${section}.`],
    [file.data, ''],
  ] as const) {
    if (!where) continue;
    const v = where[key];
    const f = where[`${key}File`];
    const label = `config file ${file.name}: ${prefix}${key}`;
    if (v !== undefined && v !== null && f !== undefined && f !== null) throw new UsageError(`${label} and ${key}File are both set; keep one`);
    if (v !== undefined && v !== null) {
      if (typeof v !== 'string' || v === '') throw new UsageError(`${label}: expected a non-empty string`);
      return { raw: v, source: 'file', label };
    }
    if (f !== undefined && f !== null) {
      if (typeof f !== 'string' || f === '') throw new UsageError(`${label}File: expected a file path`);
      // Relative paths are relative to the working directory, as for every path setting.
      return { raw: readSecretFile(f, `${label}File`, cwd), source: 'file', label: `${label}File` };
    }
  }
  return undefined;
}

/** Where an option's value comes from when the command line does not give it. */
function findConfigured(key: string, decl: OptionDecl, layers: Layers): Found | undefined {
  if (decl.configurable === false && decl.kind !== 'secret') return undefined;
  const fromSource = findInSource(key, decl, layers);
  if (fromSource) return fromSource;
  if (decl.kind === 'secret') return findSecret(key, decl, layers);
  return findValue(key, decl, layers);
}

/** The file's `sources:` mapping (name → settings), or undefined. */
export function sourcesOf(file: ConfigFile | undefined): Record<string, Record<string, unknown>> | undefined {
  const s = file?.data.sources;
  return isMapping(s) ? (s as Record<string, Record<string, unknown>>) : undefined;
}

/** An option's value from the source's own settings (`sources.<name>.<key>`, `<key>File` for a secret). */
function findInSource(key: string, decl: OptionDecl, layers: Layers): Found | undefined {
  const { file, source, cwd } = layers;
  if (source === undefined || !file) return undefined;
  const data = sourcesOf(file)?.[source];
  if (!isMapping(data)) throw new UsageError(`config file ${file.name}: no source named ${JSON.stringify(source)} under sources:`, { hint: `the sources are: ${Object.keys(sourcesOf(file) ?? {}).join(', ') || 'none'}` });
  const prefix = `config file ${file.name}: sources.${source}.`;
  if (decl.kind === 'secret') {
    const v = data[key];
    const f = data[`${key}File`];
    if (v !== undefined && v !== null && f !== undefined && f !== null) throw new UsageError(`${prefix}${key} and ${key}File are both set; keep one`);
    if (typeof v === 'string' && v !== '') return { raw: v, source: 'file', label: `${prefix}${key}` };
    if (typeof f === 'string' && f !== '') return { raw: readSecretFile(f, `${prefix}${key}File`, cwd), source: 'file', label: `${prefix}${key}File` };
    return undefined;
  }
  for (const k of [key, ...(decl.aliases ?? []).map((a) => a.key).filter(Boolean)]) {
    if (data[k] !== undefined && data[k] !== null) return { raw: convert(decl, data[k], `${prefix}${k}`, false), source: 'file', label: `${prefix}${k}` };
  }
  return undefined;
}

/** Parses a raw value; a message about a value from the environment or the file says which. */
function parse(decl: OptionDecl, raw: Raw, origin: Found | undefined): unknown {
  const flag = `--${longName(decl) ?? ''}`;
  try {
    if (typeof raw === 'boolean') return raw;
    if (Array.isArray(raw)) return raw.map((s) => decl.parser.parse(s, flag));
    return decl.parser.parse(raw, flag);
  } catch (err) {
    if (!(err instanceof UsageError) || origin === undefined) throw err;
    throw new UsageError(`${err.message} (value from ${origin.label})`, { hint: err.hint, cause: err });
  }
}

/**
 * Resolves every option of a command: `given` holds what the command line set (by option key),
 * the rest comes from the environment, the file, then the declared defaults. Each value is
 * parsed once, here; a bad one is a {@link UsageError} naming where it came from.
 */
export function resolveOptions<O extends Options>(options: O, given: Readonly<Record<string, Raw>>, layers: Layers): Resolved<O> {
  const out: Record<string, Setting> = {};
  for (const [key, decl] of Object.entries(options)) {
    const fromFlag = given[key];
    if (fromFlag !== undefined) {
      out[key] = { value: parse(decl, fromFlag, undefined), source: 'flag', raw: fromFlag };
      continue;
    }
    const found = findConfigured(key, decl, layers);
    if (found) {
      out[key] = { value: parse(decl, found.raw, found), source: found.source, label: found.label, raw: found.raw };
    } else if (decl.default !== undefined) {
      out[key] = { value: parse(decl, decl.default, undefined), source: 'default', ...(decl.showDefault ? { raw: decl.default } : {}) };
    } else {
      out[key] = { value: decl.kind === 'switch' ? false : decl.kind === 'list' ? [] : undefined, source: 'default' };
    }
  }
  const v = out as Record<string, Setting | undefined>;
  if ((v.s3AccessKeyId?.value === undefined) !== (v.s3SecretAccessKey?.value === undefined)) {
    throw new UsageError('s3AccessKeyId and s3SecretAccessKey must be set together', {
      hint: "set both (config file or COFFER_S3_…), or neither to use the AWS SDK's credential chain (AWS_ACCESS_KEY_ID, profile, instance role)",
    });
  }
  return out as Resolved<O>;
}

/** The values alone, as the command receives them. */
export function valuesOf<O extends Options>(resolved: Resolved<O>): Values<O> {
  return Object.fromEntries(Object.entries(resolved).map(([k, s]) => [k, (s as Setting).value])) as Values<O>;
}

/**
 * Values that must never appear in output (for the logger's scrubber): the secrets, a
 * password inside `--dbname`, and the standard variables that hold one.
 */
export function secretValues(options: Options, resolved: Readonly<Record<string, Setting>>, env: Env): string[] {
  const out: string[] = [];
  for (const [key, decl] of Object.entries(options)) {
    const v = resolved[key]?.value;
    if (decl.kind === 'secret' && typeof v === 'string') out.push(v);
  }
  const dbname = resolved.dbname?.value;
  if (typeof dbname === 'string') {
    const pw = passwordInConnectionString(dbname);
    if (pw !== undefined) out.push(pw);
  }
  for (const name of ['PGPASSWORD', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']) {
    const v = nonEmpty(env, name);
    if (v !== undefined) out.push(v);
  }
  return out;
}

/** Options and how they were resolved. */
export interface Given {
  options: Options;
  resolved: Readonly<Record<string, Setting>>;
}

/**
 * The line for an error a command raised after resolution. Lower layers name the option a
 * value belongs to by its flag (`--pg-bin /x: pg_dump not found there`); when that option's
 * value came from the environment or the file, say so, so the operator edits the right place.
 */
export function errorLine(err: unknown, given: readonly Given[]): string {
  const line = formatErrorLine(err);
  if (!(err instanceof UsageError)) return line;
  for (const { options, resolved } of given) {
    for (const [key, decl] of Object.entries(options)) {
      const s = resolved[key];
      const name = longName(decl);
      if (s?.label === undefined || name === undefined) continue;
      const flag = `--${name}`;
      if (line.startsWith(flag) && !/[a-z0-9-]/.test(line.charAt(flag.length))) return `${line} (value from ${s.label})`;
    }
  }
  return line;
}

/** Every file key a section (or the top level, `section` undefined) accepts, for messages. */
function knownKeys(layout: ConfigLayout, section: string | undefined): Map<string, OptionDecl | 'section'> {
  const out = new Map<string, OptionDecl | 'section'>();
  const cmds = layout.commands.filter((c) => section === undefined || c.path[0] === section);
  const entries = [layout.globals, ...cmds.map((c) => c.options)].flatMap((o) => Object.entries(o));
  for (const [key, decl] of entries) {
    if (decl.configurable === false || out.has(key)) continue;
    out.set(key, decl);
    if (decl.kind === 'secret') out.set(`${key}File`, decl);
  }
  for (const [, decl] of entries) for (const a of decl.aliases ?? []) if (a.key && !out.has(a.key)) out.set(a.key, decl);
  if (section === undefined) for (const name of topLevelNames(layout)) if (!out.has(name)) out.set(name, 'section');
  return out;
}

function topLevelNames(layout: ConfigLayout): string[] {
  return [...new Set(layout.commands.map((c) => c.path[0]!))];
}

/**
 * Checks the whole file against the commands' declarations before anything runs: unknown keys
 * (with a suggestion), sections that are not mappings, wrong types and bad values, in any
 * section — a mistake in `restore:` is reported by tonight's backup, not by the restore.
 */
export function validateConfigFile(layout: ConfigLayout, file: ConfigFile): void {
  const sections = new Set(topLevelNames(layout));
  const check = (data: Record<string, unknown>, section: string | undefined): void => {
    const known = knownKeys(layout, section);
    for (const [key, raw] of Object.entries(data)) {
      const label = `config file ${file.name}: ${section !== undefined ? `${section}.` : ''}${key}`;
      if (section === undefined && key === 'sources') {
        checkSources(raw);
        continue;
      }
      const what = section === undefined && sections.has(key) ? 'section' : known.get(key);
      if (what === undefined) {
        const best = suggestKey(key, [...known.keys()]);
        if (section !== undefined && !best && knownKeys(layout, undefined).has(key)) {
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
      if (what.kind === 'secret') {
        if (typeof raw !== 'string' || raw === '') throw new UsageError(`${label}: expected a non-empty string`);
        continue;
      }
      convert(what, raw, label, false);
    }
  };
  // `sources:` name → the settings of one server (connection, databases, repository, recipients…):
  // keys of backup and status, the commands that walk the sources.
  const checkSources = (raw: unknown): void => {
    const label = `config file ${file.name}: sources`;
    if (!isMapping(raw)) throw new UsageError(`${label}: must be a mapping of source names to settings (got ${describe(raw)})`);
    for (const [name, data] of Object.entries(raw)) {
      if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) throw new UsageError(`${label}.${name}: a source name is letters, digits, '.', '_' and '-'`);
      if (!isMapping(data)) throw new UsageError(`${label}.${name}: must be a mapping of settings (got ${describe(data)})`);
      const known = new Map([...knownKeys(layout, 'status'), ...knownKeys(layout, 'backup')]);
      for (const [key, v] of Object.entries(data)) {
        const what = known.get(key);
        const where = `${label}.${name}.${key}`;
        if (key === 'before' || key === 'after') {
          throw new UsageError(`${where}: hooks run once per run, not per source`, { hint: `set ${key}: at the top level or in the backup: section` });
        }
        if (what === undefined || what === 'section' || key === 'source' || key === 'allSources') {
          const best = suggestKey(key, [...known.keys()]);
          throw new UsageError(`${where}: not a setting a source can have${best ? ` (did you mean "${best}"?)` : ''}`, { hint: 'a source takes the settings of coffer backup and coffer status' });
        }
        if (v === null) continue;
        if (what.kind === 'secret') {
          if (typeof v !== 'string' || v === '') throw new UsageError(`${where}: expected a non-empty string`);
          continue;
        }
        convert(what, v, where, false);
      }
    }
  };
  check(file.data, undefined);
}

/** One row of `coffer config show`. */
export interface EffectiveSetting {
  value: unknown;
  /** `env COFFER_X`, `config file coffer.yaml: backup.to`, or `default`. */
  source: string;
}

/**
 * The effective configuration of every command, as it would run without further flags: the
 * same resolution as a run (environment, file, defaults), secrets replaced by `***` and
 * passwords inside connection strings and URLs hidden. Values are shown as given.
 */
export function effectiveConfig(layout: ConfigLayout, env: Env, file: ConfigFile | undefined, cwd: string): Record<string, Record<string, EffectiveSetting>> {
  const out: Record<string, Record<string, EffectiveSetting>> = {};
  for (const c of layout.commands) {
    const layers: Layers = { env, file, cwd, section: c.path[0] };
    const rows: Record<string, EffectiveSetting> = {};
    const secrets: [string, EffectiveSetting][] = [];
    for (const options of [layout.globals, c.options]) {
      for (const [key, decl] of Object.entries(options)) {
        const found = findConfigured(key, decl, layers);
        if (decl.kind === 'secret') {
          if (found) secrets.push([key, { value: REDACTED, source: sourceText(found) }]);
          continue;
        }
        const raw = found ? found.raw : decl.showDefault ? decl.default : undefined;
        if (raw === undefined) continue;
        rows[key] = { value: redactValue(raw, decl.parser.url === true), source: found ? sourceText(found) : 'default' };
      }
    }
    for (const [key, row] of secrets.sort(([a], [b]) => a.localeCompare(b))) rows[key] = row;
    out[c.path.join(' ')] = rows;
  }
  return out;
}

function sourceText(f: Found): string {
  return f.source === 'env' ? `env ${f.label}` : f.label;
}

/**
 * Connection strings lose their passwords; URLs (ping and webhook endpoints, whose path is
 * often the only credential, e.g. a healthchecks.io check id) keep only their origin.
 */
function redactValue(v: Raw, isUrl: boolean): Raw {
  if (Array.isArray(v)) return v.map((x) => redactValue(x, isUrl) as string);
  if (typeof v !== 'string') return v;
  if (isUrl) {
    try {
      const u = new URL(v);
      return u.pathname === '/' && u.search === '' && !u.username && !u.password ? `${u.origin}` : `${u.origin}/${REDACTED}`;
    } catch {
      return REDACTED;
    }
  }
  return redactConnectionString(v);
}

/** The environment variables of the secrets `layout` declares (`COFFER_PGPASSWORD`…). */
export function secretVariables(layout: ConfigLayout): string[] {
  const names = new Set<string>();
  for (const o of [layout.globals, ...layout.commands.map((c) => c.options)]) for (const d of Object.values(o)) if (d.kind === 'secret') names.add(d.env!);
  return [...names];
}

/** Variables holding secrets that no child process needs (libpq's PGPASSWORD is kept). */
const IN_PROCESS_ONLY = new Set(['AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']);

/**
 * The environment for child processes (pg_dump, psql, command prefixes): the same, minus
 * S3 credentials and coffer's own secret variables (`COFFER_[<COMMAND>_]PGPASSWORD[_FILE]`,
 * `COFFER_…S3_SECRET_ACCESS_KEY…`; `secretEnvs` from {@link secretVariables}), which are used
 * in-process only.
 */
export function childSafeEnv(env: Env, secretEnvs: readonly string[]): Env {
  const suffixes = secretEnvs.map((s) => s.replace(/^COFFER_/, ''));
  const out: Env = {};
  for (const [k, v] of Object.entries(env)) {
    if (IN_PROCESS_ONLY.has(k)) continue;
    if (k.startsWith('COFFER_') && suffixes.some((suf) => k.endsWith(suf) || k.endsWith(`${suf}_FILE`))) continue;
    out[k] = v;
  }
  return out;
}
