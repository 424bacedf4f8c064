import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { errnoWords, UsageError } from '../errors.js';

/** The file looked for in the working directory when `--config` is not given. */
export const DEFAULT_CONFIG_FILE = 'coffer.yaml';

/** A parsed configuration file: a YAML mapping, not yet validated against the commands. */
export interface ConfigFile {
  /** The path as the user gave it (or `coffer.yaml`), used in every message about the file. */
  name: string;
  /** Absolute path. */
  path: string;
  data: Record<string, unknown>;
}

/**
 * Loads the configuration file: `explicit` (from `--config` or `COFFER_CONFIG`) must exist;
 * otherwise `./coffer.yaml` is used when present and silently skipped when not.
 * Unreadable files, YAML syntax errors (with line and column) and a top level that is not a
 * mapping are {@link UsageError}s.
 */
export function loadConfigFile(explicit: string | undefined, cwd: string): ConfigFile | undefined {
  const name = explicit ?? DEFAULT_CONFIG_FILE;
  const abs = path.resolve(cwd, name);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (explicit === undefined && code === 'ENOENT') return undefined;
    throw new UsageError(`config file ${name}: cannot read it (${errnoWords(err)})`, {
      hint: explicit === undefined ? `fix or remove ./${DEFAULT_CONFIG_FILE}` : 'check the --config path (or COFFER_CONFIG)',
    });
  }
  // Loaded only when there is a file to read: most runs (cron with flags, env) have none, and the
  // parser is a good part of a start-up.
  const { parseDocument } = createRequire(import.meta.url)('yaml') as typeof import('yaml');
  const doc = parseDocument(text, { uniqueKeys: true });
  const first = doc.errors[0];
  if (first) {
    const pos = first.linePos?.[0];
    const where = pos ? ` at line ${pos.line}, column ${pos.col}` : '';
    const what = first.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    throw new UsageError(`config file ${name}: YAML syntax error${where}: ${what}`);
  }
  const data: unknown = doc.toJS();
  if (data === null || data === undefined) return { name, path: abs, data: {} };
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new UsageError(`config file ${name}: the top level must be a mapping of settings (key: value)`);
  }
  return { name, path: abs, data: data as Record<string, unknown> };
}
