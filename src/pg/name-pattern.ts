/**
 * pg_dump's table name patterns (`-t`, `--exclude-table-data`…), matched the way pg_dump
 * matches them: a port of `patternToSQLRegex` and `processSQLNamePattern` (PostgreSQL's
 * src/fe_utils/string_utils.c), which turn a pattern into anchored regular expressions that
 * the server then applies to `pg_namespace.nspname` and `pg_class.relname`.
 *
 * - unquoted letters are lower-cased; inside double quotes everything is literal (`""` is a `"`);
 * - unquoted `*` is `.*`, `?` is `.`, `.` separates database, schema and name;
 * - `$` is always literal; other regular-expression characters pass through outside quotes
 *   (and are escaped inside them); `[]` is always literal;
 * - without a schema part, only tables visible on the search path match
 *   (`pg_table_is_visible`).
 *
 * The server then does the matching, so collation-dependent classes behave as in pg_dump.
 */
import { UsageError } from '../errors.js';

export interface NamePatternRegex {
  /** The database part, literal (pg_dump requires it to be the current database). */
  database?: string;
  /** `^(…)$` for the schema, when the pattern has one. */
  schema?: string;
  /** `^(…)$` for the name. */
  name: string;
  /** Separators seen (more than 2 is an error in pg_dump). */
  dots: number;
}

const REGEX_SPECIAL = '|*+?()[]{}.^$\\';

/** `patternToSQLRegex(…, force_escape = false, want_literal_dbname = true)` with three buffers. */
export function patternToRegex(pattern: string): NamePatternRegex {
  const bufs: string[] = ['^('];
  let literalDb = '';
  let left = true;
  let inQuotes = false;
  let dots = 0;
  let i = 0;
  const cur = (): number => bufs.length - 1;
  const add = (s: string): void => {
    bufs[cur()] += s;
  };
  while (i < pattern.length) {
    const ch = pattern[i]!;
    if (ch === '"') {
      if (inQuotes && pattern[i + 1] === '"') {
        add('"');
        if (left) literalDb += '"';
        i++;
      } else inQuotes = !inQuotes;
      i++;
    } else if (!inQuotes && ch >= 'A' && ch <= 'Z') {
      add(ch.toLowerCase());
      if (left) literalDb += ch.toLowerCase();
      i++;
    } else if (!inQuotes && ch === '*') {
      add('.*');
      if (left) literalDb += '*';
      i++;
    } else if (!inQuotes && ch === '?') {
      add('.');
      if (left) literalDb += '?';
      i++;
    } else if (!inQuotes && ch === '.') {
      left = false;
      dots++;
      if (cur() < 2) {
        add(')$');
        bufs.push('^(');
      } else add(ch);
      i++;
    } else if (ch === '$') {
      add('\\$');
      if (left) literalDb += '$';
      i++;
    } else {
      if (inQuotes && REGEX_SPECIAL.includes(ch)) add('\\');
      else if (ch === '[' && pattern[i + 1] === ']') add('\\');
      if (left) literalDb += ch;
      add(ch);
      i++;
    }
  }
  add(')$');
  const name = bufs.pop()!;
  const schema = bufs.pop();
  const database = bufs.length > 0 ? literalDb : undefined;
  return { name, dots, ...(schema !== undefined ? { schema } : {}), ...(database !== undefined ? { database } : {}) };
}

/** A string literal for SQL (standard_conforming_strings on). */
export function sqlLiteral(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

/**
 * The WHERE condition pg_dump uses for one table pattern (`n` is pg_namespace, `c` pg_class),
 * for a server ≥ 12 (COLLATE pg_catalog.default). Throws a UsageError where pg_dump would stop:
 * too many dotted names, or a database part that is not `database`.
 */
export function tablePatternCondition(pattern: string, database: string, flag = '--exclude-table-data'): string {
  const r = patternToRegex(pattern);
  if (r.dots > 2) throw new UsageError(`${flag} ${JSON.stringify(pattern)}: improper relation name (too many dotted names)`);
  if (r.database !== undefined && r.database !== database) {
    throw new UsageError(`${flag} ${JSON.stringify(pattern)}: cross-database references are not implemented (the pattern names database ${JSON.stringify(r.database)}, the backup is of ${JSON.stringify(database)})`);
  }
  const conds: string[] = [];
  if (r.name.length > 2 && r.name !== '^(.*)$') conds.push(`c.relname OPERATOR(pg_catalog.~) ${sqlLiteral(r.name)} COLLATE pg_catalog.default`);
  if (r.schema !== undefined && r.schema.length > 2) {
    if (r.schema !== '^(.*)$') conds.push(`n.nspname OPERATOR(pg_catalog.~) ${sqlLiteral(r.schema)} COLLATE pg_catalog.default`);
  } else conds.push('pg_catalog.pg_table_is_visible(c.oid)');
  return conds.length > 0 ? conds.join(' AND ') : 'true';
}

/** A pattern that matches exactly one table: `"schema"."name"`, quotes doubled. */
export function exactTablePattern(schema: string, name: string): string {
  const q = (s: string): string => `"${s.replace(/"/g, '""')}"`;
  return `${q(schema)}.${q(name)}`;
}
