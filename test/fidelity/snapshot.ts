/**
 * What the fidelity suite compares between a source database and its restored copy, aspect by
 * aspect, and the differences between two such snapshots as readable one-line strings.
 *
 * Every query runs with fixed session settings (search_path, DateStyle, …), so that what the
 * database-level settings change is reported once, under `database`, not again as data.
 * Text is read as UTF8 (PGCLIENTENCODING, pg_dump --encoding) and checksummed over its UTF8
 * bytes: a LATIN1 source and a UTF8 copy holding the same characters have the same content; the
 * encoding itself is compared under `database`.
 */
import { join } from 'node:path';
import { execa } from 'execa';
import { childEnv, type PgLike } from '../harness/pg.js';

export const ASPECTS = ['schema', 'tables', 'sequences', 'largeObjects', 'database'] as const;
export type Aspect = (typeof ASPECTS)[number];

type KeyedAspect = Exclude<Aspect, 'schema'>;
const KEYED_ASPECTS = ASPECTS.filter((a): a is KeyedAspect => a !== 'schema');
/** The schema dump's lines, and per other aspect: key → value. */
export type Snapshot = { schema: string[] } & Record<KeyedAspect, Map<string, string>>;
export type Differences = Record<Aspect, string[]>;

/** psql as superuser with UTF8 client encoding; `-v` variables from `vars`; SQL from `input`. */
export async function psqlUtf8(pg: PgLike, db: string, input: string | Buffer, vars: Record<string, string> = {}): Promise<string> {
  const args = ['-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-d', db];
  for (const [k, v] of Object.entries(vars)) args.push('-v', `${k}=${v}`);
  const r = await execa(join(pg.binDir, 'psql'), args, {
    input,
    env: childEnv(pg, { PGCLIENTENCODING: 'UTF8', PGOPTIONS: '--client-min-messages=warning' }),
    extendEnv: false,
    reject: false,
    stripFinalNewline: true,
    maxBuffer: 512 * 1024 * 1024,
  });
  if (r.exitCode !== 0 || r.failed) throw new Error(`psql on ${db} failed: ${String(r.stderr).trim().split('\n').slice(-3).join(' | ') || r.shortMessage}`);
  return String(r.stdout);
}

const SESSION = String.raw`
SET search_path = pg_catalog;
SET DateStyle = ISO, YMD;
SET IntervalStyle = postgres;
SET TimeZone = 'UTC';
SET extra_float_digits = 1;
SET bytea_output = hex;
`;

/** ACL items in a stable order (an ACL is a set; replaying GRANTs need not keep the order). */
const aclText = (col: string) => `coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(${col}) AS a), '(default)')`;

const CATALOG_SQL = String.raw`
-- tables: rows and md5 over the rows' text (UTF8 bytes), in a collation-independent order
SELECT CASE WHEN c.relkind = 'm' AND NOT c.relispopulated
         THEN format('SELECT json_build_array(%L, %L, %L)', 'tables', format('%I.%I', n.nspname, c.relname), 'unpopulated materialized view')
         ELSE format($q$SELECT json_build_array('tables', %L, count(*) || ' rows, md5 ' || md5(convert_to(coalesce(string_agg(t::text, E'\n' ORDER BY t::text COLLATE "C"), ''), 'UTF8'))) FROM ONLY %I.%I AS t$q$,
                     format('%I.%I', n.nspname, c.relname), n.nspname, c.relname)
       END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'
ORDER BY n.nspname, c.relname
\gexec
-- sequences: last_value and is_called, read from each sequence
SELECT format($q$SELECT json_build_array('sequences', %L, 'last_value ' || last_value || ', is_called ' || is_called) FROM %I.%I$q$,
              format('%I.%I', n.nspname, c.relname), n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S'
ORDER BY n.nspname, c.relname
\gexec
-- large objects: owner, ACL, comment, length and md5 of the content
SELECT json_build_array('largeObjects', m.oid::text,
         'owner ' || pg_get_userbyid(m.lomowner) || ', acl ' || ${aclText('m.lomacl')}
         || ', comment ' || coalesce(quote_literal(obj_description(m.oid, 'pg_largeobject')), '(none)')
         || ', ' || length(lo_get(m.oid)) || ' bytes, md5 ' || md5(lo_get(m.oid)))
FROM pg_largeobject_metadata m ORDER BY m.oid;
-- the database itself
SELECT json_build_array('database', p.key, p.value)
FROM pg_database d,
     LATERAL (VALUES ('encoding', pg_encoding_to_char(d.encoding)::text),
                     ('locale provider', d.datlocprovider::text),
                     ('LC_COLLATE', d.datcollate::text),
                     ('LC_CTYPE', d.datctype::text),
                     ('ICU locale', coalesce(d.daticulocale, '(none)')),
                     ('owner', pg_get_userbyid(d.datdba)::text),
                     ('ACL', ${aclText('d.datacl')}),
                     ('connection limit', d.datconnlimit::text),
                     ('comment', coalesce(quote_literal(shobj_description(d.oid, 'pg_database')), '(none)'))) AS p(key, value)
WHERE d.datname = current_database();
-- ALTER DATABASE … SET (role 0) and ALTER ROLE … IN DATABASE … SET
SELECT json_build_array('database',
         CASE WHEN s.setrole = 0 THEN 'settings (ALTER DATABASE SET)' ELSE 'settings of role ' || pg_get_userbyid(s.setrole) || ' (ALTER ROLE IN DATABASE SET)' END,
         array_to_string(s.setconfig, '; '))
FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
WHERE d.datname = current_database()
ORDER BY s.setrole;
`;

/**
 * `pg_dump --create --schema-only` of `db`, as UTF8, with the database's own name replaced by
 * `<database>` and the random `\restrict`/`\unrestrict` keys of pg_dump 15.14+ by `<key>`:
 * nothing else is filtered (comments, blank lines and the `CREATE DATABASE` line stay).
 */
export async function schemaDumpForComparison(pg: PgLike, db: string): Promise<string[]> {
  const r = await execa(join(pg.binDir, 'pg_dump'), ['--create', '--schema-only', '--encoding=UTF8', '-d', db], {
    env: childEnv(pg),
    extendEnv: false,
    reject: false,
    maxBuffer: 256 * 1024 * 1024,
  });
  if (r.exitCode !== 0 || r.failed) throw new Error(`pg_dump --schema-only of ${db} failed: ${String(r.stderr).trim() || r.shortMessage}`);
  const name = new RegExp(`(?<![\\w$"])${db}(?![\\w$"])`, 'g');
  return String(r.stdout)
    .split('\n')
    .map((l) => l.replace(/^\\(restrict|unrestrict) \S+$/, '\\$1 <key>').replace(name, '<database>'));
}

/** Everything compared, for one database. */
export async function snapshot(pg: PgLike, db: string): Promise<Snapshot> {
  const snap = { schema: await schemaDumpForComparison(pg, db), ...Object.fromEntries(KEYED_ASPECTS.map((a) => [a, new Map<string, string>()])) } as Snapshot;
  for (const line of (await psqlUtf8(pg, db, SESSION + CATALOG_SQL)).split('\n')) {
    if (line.trim() === '') continue;
    const [aspect, key, value] = JSON.parse(line) as [KeyedAspect, string, string];
    if (snap[aspect].has(key)) throw new Error(`${aspect} ${key} listed twice`);
    snap[aspect].set(key, value);
  }
  return snap;
}

/**
 * The differences between a source and its restored copy, per aspect. Keyed aspects give
 * `<key>: <source value> → <restored value>` (`(absent)` when missing on one side); the schema
 * dump gives the lines only in the source (`- `) and only in the copy (`+ `), in order.
 */
export function differences(source: Snapshot, restored: Snapshot): Differences {
  const out = Object.fromEntries(ASPECTS.map((a) => [a, [] as string[]])) as Differences;
  out.schema = lineDifferences(source.schema, restored.schema);
  for (const aspect of KEYED_ASPECTS) {
    const keys = [...new Set([...source[aspect].keys(), ...restored[aspect].keys()])].sort();
    for (const k of keys) {
      const a = source[aspect].get(k) ?? '(absent)';
      const b = restored[aspect].get(k) ?? '(absent)';
      if (a !== b) out[aspect].push(`${k}: ${a} → ${b}`);
    }
  }
  return out;
}

/**
 * The lines only in `a` (`- `) and only in `b` (`+ `), in order: a shortest edit script
 * (Myers' O(ND) algorithm, cheap when the texts are nearly the same). Past `maxEdits`, the
 * lines whose counts differ, then a note if the same lines come in another order.
 */
export function lineDifferences(a: string[], b: string[], maxEdits = 2000): string[] {
  const n = a.length;
  const m = b.length;
  const offset = maxEdits + 1;
  const trace: Int32Array[] = [];
  let v = new Int32Array(2 * offset + 1);
  let found = false;
  for (let d = 0; d <= maxEdits && !found; d++) {
    trace.push(v.slice());
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[offset + k - 1]! < v[offset + k + 1]!) ? v[offset + k + 1]! : v[offset + k - 1]! + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) (x++, y++);
      v[offset + k] = x;
      if (x >= n && y >= m) {
        found = true;
        break;
      }
    }
  }
  if (!found) return countDifferences(a, b);
  // Walk back through the trace: each step d came from diagonal prev by one insertion or deletion.
  const out: string[] = [];
  let x = n;
  let y = m;
  for (let d = trace.length - 1; d > 0; d--) {
    const vd = trace[d]!; // the V before step d was taken = after step d-1
    const k = x - y;
    const prevK = k === -d || (k !== d && vd[offset + k - 1]! < vd[offset + k + 1]!) ? k + 1 : k - 1;
    const prevX = vd[offset + prevK]!;
    const prevY = prevX - prevK;
    while (x > prevX && y > prevY) (x--, y--);
    if (prevK === k + 1) out.push(`+ ${b[prevY]!}`);
    else out.push(`- ${a[prevX]!}`);
    x = prevX;
    y = prevY;
  }
  return out.reverse();
}

function countDifferences(a: string[], b: string[]): string[] {
  const count = (lines: string[]) => lines.reduce((m, l) => m.set(l, (m.get(l) ?? 0) + 1), new Map<string, number>());
  const ca = count(a);
  const cb = count(b);
  const out: string[] = [];
  for (const [l, n] of ca) if (n > (cb.get(l) ?? 0)) out.push(`- ${l} (×${n - (cb.get(l) ?? 0)})`);
  for (const [l, n] of cb) if (n > (ca.get(l) ?? 0)) out.push(`+ ${l} (×${n - (ca.get(l) ?? 0)})`);
  if (out.length === 0) out.push('the same lines in another order');
  return out;
}
