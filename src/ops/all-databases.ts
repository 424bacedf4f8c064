import type { ConnectionSpec } from '../pg/connection.js';
import { psqlQuery } from '../pg/psql.js';
import type { PgTools } from '../pg/tools.js';

/** Schemas that are not the user's. */
const SYSTEM_NS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

/**
 * Whether the database holds anything of the user's: a relation (table, view, sequence…), a
 * function, a type, a schema other than public, a large object, an extension other than
 * plpgsql, an event trigger or a publication.
 */
const POSTGRES_USED = `SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE ${SYSTEM_NS})
  OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE ${SYSTEM_NS})
  OR EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE ${SYSTEM_NS})
  OR EXISTS (SELECT 1 FROM pg_namespace n WHERE ${SYSTEM_NS} AND n.nspname <> 'public')
  OR EXISTS (SELECT 1 FROM pg_largeobject_metadata)
  OR EXISTS (SELECT 1 FROM pg_extension WHERE extname <> 'plpgsql')
  OR EXISTS (SELECT 1 FROM pg_event_trigger)
  OR EXISTS (SELECT 1 FROM pg_publication);`;

/**
 * The databases `backup --all-databases` covers: every database that accepts connections, is
 * not a template and that the backup role may connect to. `postgres` (the maintenance database
 * every cluster has) is included only when it holds anything of the user's ({@link POSTGRES_USED}:
 * a table, a function, a large object…): an empty `postgres` is not worth a backup, but one
 * someone put data in must not be skipped silently.
 */
export async function listAllDatabases(
  tools: PgTools,
  conn: ConnectionSpec,
  opts: { maintenanceDb?: string; env: NodeJS.ProcessEnv; signal?: AbortSignal },
): Promise<string[]> {
  const maintenance = opts.maintenanceDb ?? conn.params.dbname ?? 'postgres';
  const LIST = "SELECT coalesce(json_agg(datname ORDER BY datname), '[]') FROM pg_database WHERE datallowconn AND NOT datistemplate AND has_database_privilege(datname, 'CONNECT');";
  // Connected to `postgres` already: whether it holds user objects is asked in the same call.
  const together = maintenance === 'postgres';
  const out = await psqlQuery(tools, conn, maintenance, together ? `${LIST}\n${POSTGRES_USED}` : LIST, { env: opts.env, signal: opts.signal, what: 'list databases (--all-databases)' });
  const [list = '[]', usedHere] = out.trim().split('\n');
  const names = JSON.parse(list) as string[];
  if (!names.includes('postgres')) return names;
  if (together) return usedHere === 't' ? names : names.filter((n) => n !== 'postgres');
  const used = await psqlQuery(
    tools,
    conn,
    'postgres',
    POSTGRES_USED,
    { env: opts.env, signal: opts.signal, what: 'look for user objects in database "postgres"' },
  );
  return used.trim() === 't' ? names : names.filter((n) => n !== 'postgres');
}
