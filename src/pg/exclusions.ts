/**
 * `--exclude-table-data`, made to mean what it says before pg_dump runs:
 *
 * - **Partitions.** pg_dump matches the pattern against tables only: for a partitioned table
 *   the rows live in its partitions, which pg_dump (before 16, and 16+ without the
 *   `-and-children` variant) still dumps. Every partition (all levels) of a partitioned table
 *   the pattern matches gets its own exact pattern.
 * - **Foreign keys.** A table whose data is excluded but that a table whose data is included
 *   references by a foreign key makes a backup that cannot be restored (adding the constraint
 *   fails on the rows that reference nothing). Each such constraint is reported.
 *
 * Patterns are matched on the server with pg_dump's own rules (./name-pattern.ts), in one query.
 */
import type { ConnectionSpec } from './connection.js';
import { exactTablePattern, tablePatternCondition } from './name-pattern.js';
import { psqlQuery } from './psql.js';
import type { PgTools } from './tools.js';

export interface ExcludedPartition {
  /** The user's pattern that matched the partitioned table. */
  pattern: string;
  /** The partitioned table, `schema.name` (quoted where needed). */
  parent: string;
  /** The partition, `schema.name` (quoted where needed). */
  partition: string;
  /** The exact pattern to pass to pg_dump for it. */
  exact: string;
}

export interface ExcludedReference {
  /** The foreign key constraint's name. */
  constraint: string;
  /** The referencing table (its data is included). */
  table: string;
  /** The referenced table (its data is excluded). */
  references: string;
}

export interface ResolvedExclusions {
  partitions: ExcludedPartition[];
  references: ExcludedReference[];
}

/** The relkinds pg_dump matches table patterns against (expand_table_name_patterns). */
const PATTERN_RELKINDS = "array['r', 'S', 'v', 'm', 'f', 'p']";

/** The query that resolves `patterns` in `database` (exported for tests). */
export function exclusionsQuery(patterns: string[], database: string, serverVersionNum: number): string {
  const collate = serverVersionNum >= 120000;
  const matched = patterns
    .map((p, i) => {
      let cond = tablePatternCondition(p, database);
      if (!collate) cond = cond.replace(/ COLLATE pg_catalog\.default/g, '');
      return `SELECT ${i} AS idx, c.oid FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  WHERE c.relkind OPERATOR(pg_catalog.=) ANY (${PATTERN_RELKINDS}) AND ${cond}`;
    })
    .join('\n  UNION ALL\n  ');
  const qname = (rel: string): string => `(SELECT pg_catalog.format('%I.%I', nn.nspname, cc.relname) FROM pg_catalog.pg_class cc JOIN pg_catalog.pg_namespace nn ON nn.oid = cc.relnamespace WHERE cc.oid = ${rel})`;
  return `SET standard_conforming_strings = on;
WITH RECURSIVE matched AS (
  ${matched}
),
tree(idx, root, relid) AS (
  SELECT m.idx, m.oid, i.inhrelid FROM matched m JOIN pg_catalog.pg_class c ON c.oid = m.oid JOIN pg_catalog.pg_inherits i ON i.inhparent = m.oid
  WHERE c.relkind = 'p'
  UNION
  SELECT t.idx, t.root, i.inhrelid FROM tree t JOIN pg_catalog.pg_class c ON c.oid = t.relid JOIN pg_catalog.pg_inherits i ON i.inhparent = t.relid
  WHERE c.relkind = 'p'
),
parts AS (SELECT DISTINCT ON (relid) idx, root, relid FROM tree WHERE relid NOT IN (SELECT oid FROM matched) ORDER BY relid, idx),
excluded AS (SELECT oid FROM matched UNION SELECT relid FROM parts),
fks AS (
  SELECT c.oid, c.conname, c.conrelid, c.confrelid, coalesce((pg_catalog.to_jsonb(c) ->> 'conparentid')::oid, 0) AS parentid
  FROM pg_catalog.pg_constraint c WHERE c.contype = 'f'
),
-- Foreign keys from a table whose data is included to one whose data is excluded. A key on a
-- partitioned referencing table is cloned onto each partition (another conrelid): the parent's
-- row stands for them. A key referencing a partitioned table is cloned for each partition of it
-- (same conrelid, another name): reported under the name of the key pg_dump dumps (the root).
raw AS (
  SELECT f.* FROM fks f
  WHERE f.confrelid IN (SELECT oid FROM excluded) AND f.conrelid NOT IN (SELECT oid FROM excluded)
    AND NOT EXISTS (SELECT 1 FROM fks p WHERE p.oid = f.parentid AND p.conrelid <> f.conrelid)
),
up(start, cur, depth) AS (
  SELECT r.oid, r.oid, 0 FROM raw r
  UNION ALL
  SELECT up.start, p.oid, up.depth + 1 FROM up JOIN fks c ON c.oid = up.cur JOIN fks p ON p.oid = c.parentid AND p.conrelid = c.conrelid
),
roots AS (SELECT DISTINCT ON (start) start, cur AS root, depth FROM up ORDER BY start, depth DESC),
refs AS (
  SELECT DISTINCT ON (rt.root) rf.conname, rf.conrelid, r.confrelid
  FROM raw r JOIN roots rt ON rt.start = r.oid JOIN fks rf ON rf.oid = rt.root
  ORDER BY rt.root, rt.depth
)
SELECT pg_catalog.json_build_object(
  'partitions', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(p.idx, ${qname('p.root')}, ${qname('p.relid')},
                   (SELECT nn.nspname FROM pg_catalog.pg_class cc JOIN pg_catalog.pg_namespace nn ON nn.oid = cc.relnamespace WHERE cc.oid = p.relid),
                   (SELECT cc.relname FROM pg_catalog.pg_class cc WHERE cc.oid = p.relid)) ORDER BY p.idx, p.relid), '[]') FROM parts p),
  'references', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(r.conname, ${qname('r.conrelid')}, ${qname('r.confrelid')}) ORDER BY r.conrelid, r.conname, r.confrelid), '[]') FROM refs r)
);`;
}

/** Resolves the `--exclude-table-data` patterns of a backup against its database. */
export async function resolveExclusions(
  tools: PgTools,
  conn: ConnectionSpec,
  database: string,
  patterns: string[],
  serverVersionNum: number,
  opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal },
): Promise<ResolvedExclusions> {
  if (patterns.length === 0) return { partitions: [], references: [] };
  // On the database's own search_path, as pg_dump matches patterns (it resets its secure one
  // for that query): a pattern without a schema matches the tables visible on it.
  const out = await psqlQuery(tools, conn, database, exclusionsQuery(patterns, database, serverVersionNum), { ...opts, what: 'resolve --exclude-table-data', userSql: true });
  const parsed = JSON.parse(out.trim()) as { partitions: Array<[number, string, string, string, string]>; references: Array<[string, string, string]> };
  return {
    partitions: parsed.partitions.map(([idx, parent, partition, schema, name]) => ({ pattern: patterns[idx]!, parent, partition, exact: exactTablePattern(schema, name) })),
    references: parsed.references.map(([constraint, table, references]) => ({ constraint, table, references })),
  };
}
