/**
 * Materialized views and what they read: the SQL shared by `--into-existing` (which refreshes
 * every one after the load) and `--sanitize` (which refreshes the populated ones after the file,
 * so that no view keeps the rows from before the mask).
 */

/**
 * `refs(mv, ref)`: each materialized view and each relation it reads, directly or through plain
 * views (a recursive CTE, to follow `WITH RECURSIVE`).
 */
export const MATVIEW_REFS_CTE = `refs(mv, ref) AS (
  SELECT r.ev_class, d.refobjid
  FROM pg_catalog.pg_rewrite r
  JOIN pg_catalog.pg_class m ON m.oid = r.ev_class AND m.relkind = 'm'
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
  WHERE d.refobjid <> r.ev_class
  UNION
  SELECT refs.mv, d.refobjid
  FROM refs
  JOIN pg_catalog.pg_class v ON v.oid = refs.ref AND v.relkind = 'v'
  JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
  WHERE d.refobjid <> v.oid
)`;

/**
 * One row per populated materialized view (outside the system schemas): its qualified, quoted
 * name, each after every materialized view it reads (by depth: the longest chain of
 * materialized views below it), then by name. A view left unpopulated (`WITH NO DATA`) is not
 * listed: refreshing it would fill it.
 */
export const POPULATED_MATVIEWS_IN_ORDER = `WITH RECURSIVE ${MATVIEW_REFS_CTE},
edges(mv, ref) AS (
  SELECT DISTINCT refs.mv, refs.ref FROM refs JOIN pg_catalog.pg_class c ON c.oid = refs.ref AND c.relkind = 'm'
),
depth(mv, d) AS (
  SELECT c.oid, 0 FROM pg_catalog.pg_class c WHERE c.relkind = 'm'
  UNION
  SELECT edges.mv, depth.d + 1 FROM depth JOIN edges ON edges.ref = depth.mv
  WHERE depth.d < (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class WHERE relkind = 'm')
)
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
FROM (SELECT mv, pg_catalog.max(d) AS d FROM depth GROUP BY mv) x
JOIN pg_catalog.pg_class c ON c.oid = x.mv
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relispopulated AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY x.d, n.nspname, c.relname`;
