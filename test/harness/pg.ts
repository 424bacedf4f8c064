/**
 * PostgreSQL helpers for tests: a handle on the run's throwaway cluster (from `inject('pg')`),
 * databases loaded with fixtures, and schema/data fingerprints for round-trip comparisons.
 *
 * Every helper takes a {@link PgLike}: the object from {@link pgFromInject} or a
 * `ThrowawayCluster` from `startThrowawayCluster()` (e.g. a second, "fresh host" cluster).
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { VAULT_SAMPLE_SQL } from '../../src/demo/vault-sample.js';
import { DatabaseError } from '../../src/errors.js';
import { runPsql, tailOneLine } from '../../src/demo/throwaway-cluster.js';

export interface PgInjected {
  host: string;
  port: number;
  user: string;
  binDir: string;
  dataDir: string;
}

/** What the helpers need: libpq env for children, a psql runner and the binaries. */
export interface PgLike {
  env(): Record<string, string>;
  psql(sql: string, db?: string): Promise<string>;
  binDir: string;
}

export interface PgHandle extends PgLike {
  host: string;
  port: number;
  user: string;
}

export type Fixture = 'varied' | 'vault' | 'empty';

export const VARIED_FIXTURE_PATH = new URL('../fixtures/varied.sql', import.meta.url);

/** A handle on the cluster started by the global setup (`inject('pg')`). */
export function pgFromInject(info: PgInjected | null | undefined): PgHandle {
  if (!info) {
    throw new DatabaseError('no throwaway PostgreSQL cluster was provided to this test run', {
      hint: 'run with the global setup (unset COFFER_TEST_SERVICES=none)',
    });
  }
  const libpqEnv = { PGHOST: info.host, PGPORT: String(info.port), PGUSER: info.user };
  return {
    binDir: info.binDir,
    host: info.host,
    port: info.port,
    user: info.user,
    env: () => ({ ...libpqEnv }),
    psql: (sql: string, db?: string) => runPsql(info.binDir, libpqEnv, sql, db),
  };
}

/** Quotes an SQL identifier (always, so case and unicode survive). */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Quotes an SQL string literal (standard_conforming_strings on). */
export function quoteLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/** process.env without PG* variables, plus the cluster's libpq env: for running pg_dump & co. */
export function childEnv(pg: PgLike, extra: Record<string, string> = {}): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('PG')) out[k] = v;
  return { ...out, ...pg.env(), ...extra };
}

/** A fresh unique database name, e.g. `t_3f9a1c0b2d4e`. */
export function uniqueDbName(prefix = 't'): string {
  return `${prefix}_${randomBytes(6).toString('hex')}`;
}

async function fixtureSql(fixture: Exclude<Fixture, 'empty'>): Promise<string> {
  return fixture === 'varied' ? await readFile(VARIED_FIXTURE_PATH, 'utf8') : VAULT_SAMPLE_SQL;
}

const templates = new Map<string, Promise<string>>();

/**
 * A template database holding the fixture, made once per cluster (and shared by all test workers):
 * loaded under a temporary name, marked IS_TEMPLATE (so listDatabases() doesn't show it) and only
 * then renamed to its final name, so a template that exists is always complete.
 */
async function fixtureTemplate(pg: PgLike, fixture: Exclude<Fixture, 'empty'>): Promise<string> {
  const sql = await fixtureSql(fixture);
  const name = `coffer_fixture_${fixture}_${createHash('sha256').update(sql).digest('hex').slice(0, 12)}`;
  const key = `${pg.env().PGHOST}:${pg.env().PGPORT}/${name}`;
  let p = templates.get(key);
  if (!p) {
    p = (async () => {
      if (await databaseExists(pg, name)) return name;
      const tmp = uniqueDbName('coffer_fixture_tmp');
      await pg.psql(`CREATE DATABASE ${quoteIdent(tmp)};`);
      try {
        await pg.psql(sql, tmp);
        await pg.psql(`ALTER DATABASE ${quoteIdent(tmp)} WITH IS_TEMPLATE true;`);
        await pg.psql(`ALTER DATABASE ${quoteIdent(tmp)} RENAME TO ${quoteIdent(name)};`);
      } catch (err) {
        // another worker may have won the race
        await pg.psql(`ALTER DATABASE ${quoteIdent(tmp)} WITH IS_TEMPLATE false; DROP DATABASE IF EXISTS ${quoteIdent(tmp)} WITH (FORCE);`).catch(() => undefined);
        if (!(await databaseExists(pg, name))) throw err;
      }
      return name;
    })();
    templates.set(key, p);
    p.catch(() => templates.delete(key));
  }
  return await p;
}

/**
 * How tests copy a template database: `STRATEGY FILE_COPY` copies its files (after a checkpoint,
 * cheap with the test clusters' fsync=off) instead of PostgreSQL 15's default WAL_LOG, which
 * reads every block through the 32 MB of shared buffers and writes it all to the WAL: 2-3 times
 * slower for a fixture, more for one with many MB of rows. The copy is the same database.
 */
export const COPY_STRATEGY = 'STRATEGY FILE_COPY';

/**
 * Creates a database (unique name by default) holding a fixture; returns its name.
 * Fixtures are copied from a per-cluster template database (CREATE DATABASE … TEMPLATE), which
 * is several times faster than loading the SQL; pass `{ template: false }` to load the SQL directly.
 */
export async function createDatabase(
  pg: PgLike,
  name: string = uniqueDbName(),
  fixture: Fixture = 'empty',
  opts: { template?: boolean } = {},
): Promise<string> {
  if (fixture === 'empty') {
    await pg.psql(`CREATE DATABASE ${quoteIdent(name)};`);
  } else if (opts.template === false) {
    await pg.psql(`CREATE DATABASE ${quoteIdent(name)};`);
    await pg.psql(await fixtureSql(fixture), name);
  } else {
    const tpl = await fixtureTemplate(pg, fixture);
    await pg.psql(`CREATE DATABASE ${quoteIdent(name)} TEMPLATE ${quoteIdent(tpl)} ${COPY_STRATEGY};`);
  }
  return name;
}

/** Drops a database, disconnecting its sessions (WITH (FORCE)); no error if it does not exist. */
export async function dropDatabase(pg: PgLike, name: string): Promise<void> {
  await pg.psql(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE);`);
}

export async function databaseExists(pg: PgLike, name: string): Promise<boolean> {
  return (await pg.psql(`SELECT count(*) FROM pg_database WHERE datname = ${quoteLiteral(name)};`)) === '1';
}

/** Names of all non-template databases, sorted. */
export async function listDatabases(pg: PgLike): Promise<string[]> {
  const out = await pg.psql(`SELECT coalesce(json_agg(datname ORDER BY datname), '[]') FROM pg_database WHERE NOT datistemplate;`);
  return JSON.parse(out) as string[];
}

/**
 * `pg_dump --schema-only` of a database, without `\restrict`/`\unrestrict` lines (random keys
 * from pg_dump 15.14+), comments and blank lines: identical databases give identical text.
 */
export async function schemaDump(pg: PgLike, db: string): Promise<string> {
  const r = await execa(join(pg.binDir, 'pg_dump'), ['--schema-only', '-d', db], {
    env: childEnv(pg),
    extendEnv: false,
    reject: false,
    maxBuffer: 256 * 1024 * 1024,
  });
  if (r.exitCode !== 0 || r.failed) throw new DatabaseError(`pg_dump --schema-only of ${db} failed: ${tailOneLine(String(r.stderr ?? '')) || r.shortMessage}`);
  return String(r.stdout)
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('--') && !/^\\(un)?restrict\b/.test(l))
    .join('\n');
}

export type Fingerprint = Record<string, { rows: number; md5: string }>;

/**
 * Content fingerprint of a database:
 * - `<schema>.<table>` (quoted as by format('%I.%I')) for every table, partition (and the
 *   partitioned parent) and materialized view outside the system schemas: row count and an md5
 *   over the rows' text, independent of physical order;
 * - `large_object:<oid>`: byte length and md5 of the content;
 * - `sequence:<schema>.<name>`: rows = last_value (0 if never called), md5 = `last_value=<v|null>`.
 */
export async function dataFingerprint(pg: PgLike, db: string): Promise<Fingerprint> {
  const sql = String.raw`
SELECT CASE WHEN c.relkind = 'm' AND NOT c.relispopulated
         THEN format('SELECT json_build_array(%L, -1, %L)', format('%I.%I', n.nspname, c.relname), 'unpopulated')
         ELSE format($q$SELECT json_build_array(%L, count(*), md5(coalesce(string_agg(md5("fp row"::text), '' ORDER BY md5("fp row"::text)), ''))) FROM %I.%I AS "fp row"$q$,
                     format('%I.%I', n.nspname, c.relname), n.nspname, c.relname)
       END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
ORDER BY n.nspname, c.relname
\gexec
SELECT json_build_array('large_object:' || oid, length(lo_get(oid)), md5(lo_get(oid))) FROM pg_largeobject_metadata ORDER BY oid;
SELECT json_build_array('sequence:' || format('%I.%I', schemaname, sequencename), coalesce(last_value, 0), 'last_value=' || coalesce(last_value::text, 'null'))
FROM pg_sequences ORDER BY schemaname, sequencename;
`;
  const out = await pg.psql(sql, db);
  const fp: Fingerprint = {};
  for (const line of out.split('\n')) {
    if (line.trim() === '') continue;
    const [key, rows, md5] = JSON.parse(line) as [string, number, string];
    fp[key] = { rows: Number(rows), md5 };
  }
  return fp;
}

/**
 * Adds `megabytes` MB (MiB) of incompressible, repeatable pseudo-random bytea to `table`
 * (created if missing; rows of 256 KiB built from sha512 chains, stored uncompressed). Calling it
 * again appends different rows. Note that pg_dump writes bytea as hex: the dump grows by about
 * 2 × megabytes before compression (and compresses back to ~1×).
 */
export async function fillLargeTable(pg: PgLike, db: string, megabytes: number, table = 'large_fill'): Promise<void> {
  if (!(megabytes > 0)) return;
  const rows = Math.ceil(megabytes * 4);
  const t = quoteIdent(table);
  await pg.psql(
    `CREATE TABLE IF NOT EXISTS ${t} (id integer PRIMARY KEY, payload bytea NOT NULL);
ALTER TABLE ${t} ALTER COLUMN payload SET STORAGE EXTERNAL;
INSERT INTO ${t} (id, payload)
SELECT b.base + s.i,
       (SELECT string_agg(sha512(int4send(b.base + s.i) || int4send(j)), ''::bytea ORDER BY j) FROM generate_series(1, 4096) AS j)
FROM (SELECT coalesce(max(id), 0) AS base FROM ${t}) AS b, generate_series(1, ${rows}) AS s(i);`,
    db,
  );
}
