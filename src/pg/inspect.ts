/**
 * What a restore asks the restored database: its tables (to check them against the archive's
 * table of contents), the user's smoke queries, and the table statistics of the summary.
 */
import { DatabaseError } from '../errors.js';
import type { PgTarget } from './connection.js';
import { quoteLiteral } from './admin.js';
import { psqlQuery, type PreparedPsql } from './psql.js';
import type { PgTools } from './tools.js';

/** Runs one smoke query (a missing `;` added) and returns its output, trimmed. */
export async function smokeQuery(tools: Pick<PgTools, 'psql'>, target: PgTarget, sql: string, signal?: AbortSignal): Promise<string> {
  try {
    return (await psqlQuery(tools, target.conn, target.database, sql.trim().endsWith(';') ? sql : `${sql};`, { env: target.env, signal, what: 'smoke check', userSql: true })).trim();
  } catch (err) {
    throw new DatabaseError(`smoke check failed: ${sql}: ${(err as Error).message.replace(/^smoke check: /, '')}`, { cause: err });
  }
}

export interface TableStats {
  /**
   * Tables as the archive's table of contents (and the manifest) count them: ordinary and
   * partitioned tables outside the system schemas, not those an extension creates.
   */
  tables: number;
  /** The largest ordinary tables (partitions included, not their partitioned parents), by size, with their row counts. */
  largest: Array<{ table: string; rows: number }>;
}

/** A table named by its archive bytes (one per character, latin1) and the encoding they are in. */
export interface ArchivedName {
  schema: string;
  table: string;
  /**
   * Its rows as the archive's COPY data holds them (counted as it streamed to pg_restore, which
   * loads a table's rows all or none); unknown (the server counts them) for compressed data
   * blocks or INSERT statements.
   */
  rows?: number | undefined;
}

export interface InspectRequest {
  /**
   * The tables' names, for the check against the archive's table of contents: converted by the
   * server to the archive's encoding and returned as the hex of their bytes ({@link tableKey}s),
   * so they compare byte for byte with the archive's own.
   */
  names: { encoding: string } | false;
  /** The table count and the row counts of the largest tables. */
  stats: boolean;
  /**
   * The largest tables as the archive knows them (its data blocks' sizes), in its own bytes and
   * encoding; without them, the server ranks its tables by their heap and TOAST sizes.
   */
  largest?: { names: ArchivedName[]; encoding: string };
  /** SQL run in the same session after the inspection (the database's properties), and what it does, for messages. */
  then?: { sql: Buffer; what: string };
}

export interface Inspection {
  /** {@link tableKey}s of the database's tables, in the archive's encoding (empty unless asked). */
  names: string[];
  stats: TableStats;
}

const USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog','information_schema')";

/**
 * A table's schema and name as one key: the hex of their bytes in the archive's encoding (given
 * one byte per character, latin1), joined by a dot. The server returns its tables' names in this
 * form, so the check compares them as they come, without decoding thousands of names.
 */
export function tableKey(schema: string, table: string): string {
  return `${Buffer.from(schema, 'latin1').toString('hex')}.${Buffer.from(table, 'latin1').toString('hex')}`;
}

/** The schema and name of a {@link tableKey}, as the archive's bytes one per character. */
export function tableOfKey(key: string): { schema: string; table: string } {
  const [schema = '', table = ''] = key.split('.').map((h) => Buffer.from(h, 'hex').toString('latin1'));
  return { schema, table };
}

/**
 * What {@link inspectRestored}'s queries read, read once ahead (while pg_restore finishes its
 * post-data): rows a load just committed are slow to read the first time (their visibility is
 * looked up and noted on the page), and a new session's catalog caches are empty. Prints nothing.
 */
export const INSPECT_WARMUP = `SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e' \\gset coffer_warmup_\n`;

/**
 * What a restore asks of the restored database, in one psql call with a fixed number of
 * catalog queries whatever the number of tables: their names (ordinary, partitioned and
 * foreign tables, hex-encoded bytes in the archive's encoding: a name with a tab, a newline or
 * a space reads back whole), how many the summary counts, and the row counts of the five
 * largest. Rows come back tagged (`n`, `t`, `l`), tab-separated.
 */
export async function inspectRestored(tools: Pick<PgTools, 'psql'>, target: PgTarget, want: InspectRequest, signal?: AbortSignal, prepared?: PreparedPsql): Promise<Inspection> {
  const sql: string[] = [];
  if (want.names) {
    const encoding = quoteLiteral(want.names.encoding);
    const hex = (col: string): string => `encode(convert_to(${col}::text, ${encoding}), 'hex')`;
    sql.push(`SELECT 'n' || E'\\t' || ${hex('n.nspname')} || '.' || ${hex('c.relname')} FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','f') AND ${USER_SCHEMAS};`);
  }
  if (want.stats) {
    // What pg_dump writes a TABLE entry for (relkind r and p; a foreign table is a FOREIGN TABLE
    // entry), and what the manifest counts: not an extension's own tables.
    sql.push(
      `SELECT 't' || E'\\t' || count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p') AND ${USER_SCHEMAS} AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e');`,
    );
    // Row counts of ordinary tables only: a partitioned parent would count its partitions' rows again.
    const top = want.largest
      ? want.largest.names.length === 0
        ? undefined
        : `SELECT * FROM (VALUES ${want.largest.names
            .map((t, i) => `(${i}, ${fromArchive(t.schema, want.largest!.encoding)}, ${fromArchive(t.table, want.largest!.encoding)}, ${t.rows ?? 'NULL'}::bigint)`)
            .join(', ')}) v(i, ns, rel, n)`
      : `SELECT row_number() OVER () AS i, ns, rel, NULL::bigint AS n FROM (SELECT n.nspname AS ns, c.relname AS rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND ${USER_SCHEMAS} AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') ORDER BY pg_relation_size(c.oid) + COALESCE(pg_relation_size(NULLIF(c.reltoastrelid, 0)), 0) DESC, 1, 2 LIMIT 5) s`;
    if (top) {
      sql.push(
        // Rows the archive counted are not counted again: a count reads the whole table.
        `SELECT 'l' || E'\\t' || encode(convert_to(q, 'UTF8'), 'hex') || E'\\t' || CASE WHEN t.n IS NOT NULL THEN t.n::text ELSE substring(query_to_xml('SELECT count(*) AS c FROM ' || q, false, true, '')::text FROM '<c>([0-9]+)</c>') END FROM (${top}) t, LATERAL (SELECT quote_ident(t.ns) || '.' || quote_ident(t.rel) AS q) x WHERE to_regclass(q) IS NOT NULL ORDER BY t.i;`,
      );
    }
  }
  // The inspection's SQL is ASCII (names travel hex-encoded), so the SQL after it keeps its own bytes and encoding.
  const input = want.then ? Buffer.concat([Buffer.from(`${sql.join('\n')}\n`, 'latin1'), want.then.sql]) : sql.join('\n');
  const what = want.then ? `inspect the restored tables and ${want.then.what}` : 'inspect the restored tables';
  const out = sql.length === 0 && !want.then ? '' : prepared ? await prepared.run(input, what) : await psqlQuery(tools, target.conn, target.database, input, { env: target.env, signal, what });
  const names: string[] = [];
  const stats: TableStats = { tables: 0, largest: [] };
  for (const line of out.split('\n')) {
    // Names come as keys already (thousands of them: nothing is decoded).
    if (line.startsWith('n\t')) {
      names.push(line.slice(2));
      continue;
    }
    const tab = line.indexOf('\t');
    const kind = line.slice(0, tab);
    const rest = line.slice(tab + 1);
    if (kind === 't') stats.tables = Number(rest);
    else if (kind === 'l') {
      // The qualified name travels hex-encoded, as UTF-8: a newline or a tab in it, or a LATIN1 database's bytes, read back whole.
      const at = rest.lastIndexOf('\t');
      stats.largest.push({ table: Buffer.from(rest.slice(0, at), 'hex').toString('utf8'), rows: Number(rest.slice(at + 1)) });
    }
  }
  return { names, stats };
}

/** An SQL expression for a name in the archive's bytes and encoding, as the server's text. */
function fromArchive(raw: string, encoding: string): string {
  return `convert_from('\\x${Buffer.from(raw, 'latin1').toString('hex')}'::bytea, ${quoteLiteral(encoding)})`;
}
