/**
 * What a restore asks the restored database: its tables (to check them against the archive's
 * table of contents), the user's smoke queries, and the table statistics of the summary.
 */
import { DatabaseError } from '../errors.js';
import type { PgTarget } from './connection.js';
import { psqlQuery } from './psql.js';
import type { PgTools } from './tools.js';

/** Ordinary, partitioned and foreign tables outside the system schemas, as "schema name" strings. */
export async function tableNames(tools: Pick<PgTools, 'psql'>, target: PgTarget, signal?: AbortSignal): Promise<string[]> {
  const rows = await psqlQuery(
    tools,
    target.conn,
    target.database,
    "SELECT n.nspname || E'\\t' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','f') AND n.nspname NOT IN ('pg_catalog','information_schema');",
    { env: target.env, signal, what: 'check restored tables' },
  );
  return rows
    .split('\n')
    .filter(Boolean)
    .map((r) => r.replace('\t', ' '));
}

/** Runs one smoke query (a missing `;` added) and returns its output, trimmed. */
export async function smokeQuery(tools: Pick<PgTools, 'psql'>, target: PgTarget, sql: string, signal?: AbortSignal): Promise<string> {
  try {
    return (await psqlQuery(tools, target.conn, target.database, sql.trim().endsWith(';') ? sql : `${sql};`, { env: target.env, signal, what: 'smoke check' })).trim();
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

/** The database's tables, and the row counts of the five largest. */
export async function tableStats(tools: Pick<PgTools, 'psql'>, target: PgTarget): Promise<TableStats> {
  const list = await psqlQuery(
    tools,
    target.conn,
    target.database,
    // What pg_dump writes a TABLE entry for (relkind r and p; a foreign table is a FOREIGN TABLE
    // entry), and what the manifest counts: not an extension's own tables.
    "SELECT c.relkind::text || E'\\t' || quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') ORDER BY pg_total_relation_size(c.oid) DESC;",
    { env: target.env, what: 'summarize restored tables' },
  );
  const rows = list
    .split('\n')
    .filter(Boolean)
    .map((l) => ({ kind: l.slice(0, 1), name: l.slice(2) }));
  const names = rows.map((r) => r.name);
  // Row counts of ordinary tables only: a partitioned parent would count its partitions' rows again.
  const top = rows
    .filter((r) => r.kind === 'r')
    .slice(0, 5)
    .map((r) => r.name);
  const largest: Array<{ table: string; rows: number }> = [];
  if (top.length > 0) {
    const counts = await psqlQuery(tools, target.conn, target.database, top.map((t) => `SELECT count(*) FROM ${t};`).join('\n'), { env: target.env, what: 'count rows' });
    const ns = counts.split('\n').filter(Boolean).map(Number);
    top.forEach((t, i) => largest.push({ table: t, rows: ns[i] ?? 0 }));
  }
  return { tables: names.length, largest };
}
