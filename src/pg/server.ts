import { DatabaseError } from '../errors.js';
import type { ConnectionSpec } from './connection.js';
import { psqlQuery } from './psql.js';
import { runChild, type PgTools } from './tools.js';
import type { DatabaseLocale } from './database-props.js';

export interface ServerInfo {
  serverVersion: string;
  serverVersionNum: number;
  databaseSizeBytes: number;
  isSuperuser: boolean;
  /** Tables (plain and partitioned) outside the system schemas and extensions: what pg_dump archives as TABLE entries. */
  tables: number;
  /** The database's encoding and locale (recorded in the manifest: plain-SQL backups carry neither). */
  locale: DatabaseLocale | undefined;
}

/** The database's pg_database row as JSON (every server version's columns), with its encoding's name. */
const DATABASE_ROW_SQL = `SELECT (jsonb_build_object('encoding_name', pg_encoding_to_char(d.encoding)) || (to_jsonb(d) - 'datacl'))::text FROM pg_database d WHERE d.datname = current_database()`;

/** Reads {@link DatabaseLocale} from a pg_database row (PostgreSQL 12–18 column names). */
export function localeFromRow(json: string | undefined): DatabaseLocale | undefined {
  if (!json) return undefined;
  let row: Record<string, unknown>;
  try {
    row = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const str = (k: string): string | null => (typeof row[k] === 'string' ? (row[k] as string) : null);
  const encoding = str('encoding_name');
  const collate = str('datcollate');
  const ctype = str('datctype');
  if (!encoding || collate === null || ctype === null) return undefined;
  const provider = ({ c: 'libc', i: 'icu', b: 'builtin' } as Record<string, string>)[str('datlocprovider') ?? 'c'] ?? 'libc';
  const locale = str('datlocale') ?? str('daticulocale');
  return { encoding, collate, ctype, localeProvider: provider, locale, icuRules: str('daticurules') };
}

/** The tables `pg_dump` writes TABLE entries for: ordinary and partitioned, not system, not extension members. */
const USER_TABLES_SQL = `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')`;

/** Server version, database size and whether we are superuser: one round trip. */
export async function probeServer(
  tools: PgTools,
  conn: ConnectionSpec,
  database: string | undefined,
  opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal; ask?: (sql: string) => Promise<string> },
): Promise<ServerInfo> {
  // rolsuper as text is 'true'/'false' (a boolean cast), not psql's 't'/'f'.
  const sql = `SELECT current_setting('server_version_num') || '|' || current_setting('server_version') || '|' || pg_database_size(current_database()) || '|' || (SELECT CASE WHEN rolsuper THEN 't' ELSE 'f' END FROM pg_roles WHERE rolname = current_user) || '|' || (${USER_TABLES_SQL}) || '|' || (${DATABASE_ROW_SQL});`;
  // Through a session already connected to the database (the backup lock's), else its own psql.
  const out = opts.ask ? await opts.ask(sql.replace(/\s*\n\s*/g, ' ')) : await psqlQuery(tools, conn, database, sql, { env: opts.env, signal: opts.signal, what: `connect to database ${JSON.stringify(database ?? '')}` });
  const [num, ver, size, superuser, tables, ...row] = out.trim().split('|');
  const n = Number(num);
  if (!Number.isInteger(n)) throw new DatabaseError(`could not read the server version (got ${JSON.stringify(out.trim().slice(0, 80))})`);
  return { serverVersionNum: n, serverVersion: ver ?? String(n), databaseSizeBytes: Number(size) || 0, isSuperuser: superuser === 't', tables: Number(tables) || 0, locale: localeFromRow(row.join('|')) };
}

/** `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → { text, major: 15 }. */
export function clientVersion(argv: string[], what: string, opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal }): Promise<{ text: string; major: number }> {
  // A program's version does not change during a run: asked once per program (a run over many
  // databases, or a restore's several checks), and asked again only after a failure.
  const key = JSON.stringify(argv);
  let known = versions.get(key);
  if (!known) {
    known = readClientVersion(argv, what, opts);
    versions.set(key, known);
    known.catch(() => versions.delete(key));
  }
  return known;
}

const versions = new Map<string, Promise<{ text: string; major: number }>>();

async function readClientVersion(argv: string[], what: string, opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal }): Promise<{ text: string; major: number }> {
  const out = (await runChild([...argv, '--version'], { env: opts.env, signal: opts.signal, what: `${what} --version` })).trim();
  const m = /\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?/.exec(out) ?? /(\d+)\.(\d+)/.exec(out);
  if (!m) throw new DatabaseError(`${what} --version printed something unexpected: ${JSON.stringify(out.slice(0, 80))}`);
  return { text: out.split('\n')[0]!, major: Number(m[1]) };
}

/** Major version of a server_version_num (150018 → 15, 90624 → 9). */
export function serverMajor(num: number): number {
  return num >= 100000 ? Math.floor(num / 10000) : Math.floor(num / 100) / 100;
}

/**
 * pg_dump refuses a newer server ("aborting because of server version mismatch"); say so before
 * we start, naming both versions and the fix.
 */
export function checkDumpVersion(pgDumpMajor: number, pgDumpText: string, server: ServerInfo): void {
  const sMajor = serverMajor(server.serverVersionNum);
  if (pgDumpMajor < sMajor) {
    throw new DatabaseError(`pg_dump ${pgDumpMajor} is older than the server (PostgreSQL ${server.serverVersion}); pg_dump must be at least as new as the server [${pgDumpText}]`, {
      hint: `install postgresql-client-${Math.floor(sMajor)} and use --pg-bin /usr/lib/postgresql/${Math.floor(sMajor)}/bin, or run pg_dump inside the database container with --pg-dump-command`,
    });
  }
}
