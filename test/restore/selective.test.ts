/**
 * Selective and sanitised restores (`--table`, `--schema`, `--exclude-table`, `--list-file`,
 * `--sanitize`), `coffer show`, and the restore-side version checks, against real PostgreSQL,
 * RGW, age and pg_restore. One backup of one source database, made once, in an S3 repository
 * and in a file repository.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { dataFingerprint, dropDatabase, listDatabases, type Fingerprint } from '../harness/pg.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { scanArchiveFile } from '../../src/pg/archive-offsets.js';
import { dataBlockSizes } from '../../src/pg/archive-toc.js';

const f = useFixture({ name: 'selective', s3: true, db: 'empty' });
const pg = f.pg;

const SOURCE = String.raw`
CREATE SCHEMA app;
COMMENT ON SCHEMA app IS 'the application';
CREATE SCHEMA audit;
CREATE SCHEMA "Mixed Case";
CREATE TYPE app.status AS ENUM ('new', 'paid');
CREATE TABLE app.customers (id serial PRIMARY KEY, email text NOT NULL UNIQUE, name text);
CREATE TABLE app.orders (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id int NOT NULL REFERENCES app.customers (id),
  status app.status NOT NULL DEFAULT 'new',
  total numeric(10,2) CHECK (total >= 0)
);
CREATE INDEX orders_customer_idx ON app.orders (customer_id);
COMMENT ON TABLE app.orders IS 'orders of customers';
CREATE SEQUENCE app.invoice_no;
CREATE TABLE app.invoices (no int DEFAULT nextval('app.invoice_no'), order_id bigint);
CREATE VIEW app.v_orders AS SELECT o.id, c.email FROM app.orders o JOIN app.customers c ON c.id = o.customer_id;
CREATE TABLE "Mixed Case"."Odd ""Name""" (x int PRIMARY KEY);
CREATE TABLE public.events (id int, payload text);
CREATE TABLE audit.log (id int, msg text);
INSERT INTO app.customers (email, name) SELECT 'user' || g || '@corp.example', 'name ' || g FROM generate_series(1, 200) g;
INSERT INTO app.orders (customer_id, total) SELECT 1 + g % 200, g FROM generate_series(1, 3000) g;
INSERT INTO app.invoices (order_id) SELECT g FROM generate_series(1, 20) g;
INSERT INTO "Mixed Case"."Odd ""Name""" SELECT g FROM generate_series(1, 7) g;
INSERT INTO public.events SELECT g, repeat('p', 50) FROM generate_series(1, 500) g;
INSERT INTO audit.log SELECT g, 'm' || g FROM generate_series(1, 40) g;
CREATE TABLE audit.readings (id int, at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE audit.readings_2025 PARTITION OF audit.readings FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE audit.readings_2026 PARTITION OF audit.readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01') PARTITION BY LIST (v);
CREATE TABLE audit.readings_2026_rest PARTITION OF audit.readings_2026 DEFAULT;
CREATE INDEX readings_at_idx ON audit.readings (at);
INSERT INTO audit.readings SELECT g, DATE '2025-06-01' + g, g FROM generate_series(1, 400) g;
`;

let s3Repo: string;
let fileRepo: string;
let manifest: BackupManifest;
let sourceRelations: string[];
let sourceData: Fingerprint;

/** Relations (tables, views, sequences, indexes) outside the system schemas, as "schema.name:relkind". */
async function relations(db: string): Promise<string[]> {
  const out = await pg.psql(
    "SELECT format('%I.%I', n.nspname, c.relname) || ':' || c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','v','m','S','i','f') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1;",
    db,
  );
  return out.split('\n').filter(Boolean);
}

async function constraints(db: string): Promise<string[]> {
  const out = await pg.psql("SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname NOT IN ('pg_catalog','information_schema') ORDER BY 1;", db);
  return out.split('\n').filter(Boolean);
}

/** The source's relations restricted to `keep` (by "schema.name" prefix of the qualified name). */
function sourceRelationsOf(keep: (rel: string) => boolean): string[] {
  return sourceRelations.filter(keep);
}

/** The source's fingerprint restricted to these tables. */
function sourceDataOf(tables: string[]): Fingerprint {
  return Object.fromEntries(Object.entries(sourceData).filter(([k]) => tables.includes(k) || tables.some((t) => k === `sequence:${t}`)));
}

/** Databases left by restores into `target`: the target itself and any scratch of it. */
async function databasesOf(target: string): Promise<string[]> {
  return (await listDatabases(pg)).filter((d) => d === target || d.startsWith(`${target}__`));
}

function restore(target: string, args: string[], repo = s3Repo) {
  return f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target, ...args]);
}

beforeAll(async () => {
  await pg.psql(SOURCE, f.db);
  sourceRelations = await relations(f.db);
  sourceData = await dataFingerprint(pg, f.db);
  s3Repo = f.repo('sel');
  fileRepo = f.path('repo');
  // Both have an archive index: selective restores fetch only their bytes (ranged reads on RGW
  // and on the file store), except with --download-whole (the --exclude-table test).
  manifest = await f.backup(s3Repo, f.db);
  await f.backup(fileRepo, f.db);
});

describe('selective restore', () => {
  it('--table (S3): the tables with their data, indexes, constraints and owned sequences; nothing else', async () => {
    const target = f.dropAtEnd(`${f.db}_t`);
    const r = await restore(target, ['--table', 'orders', '--table', 'customers', '--table', 'invoices', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as { selection: { tables: string[]; download: { bytes: number; of: number } | 'whole' }; checks: { tocTables: number } };
    expect(summary.selection.tables.sort()).toEqual(['app.customers', 'app.invoices', 'app.orders']);
    expect(summary.selection.download).not.toBe('whole');
    expect(summary.checks.tocTables).toBe(3);
    // app.invoice_no is not owned by a table: it comes as a definition invoices' default needs, with its value.
    const want = sourceRelationsOf((x) => /^app\.(customers|orders|invoice)/.test(x));
    expect(want).toContain('app.orders_id_seq:S');
    expect(want).toContain('app.orders_customer_idx:i');
    expect(await relations(target)).toEqual(want);
    expect(await constraints(target)).toEqual(expect.arrayContaining(['orders_customer_id_fkey', 'orders_total_check', 'customers_email_key', 'orders_pkey', 'customers_pkey']));
    expect(await dataFingerprint(pg, target)).toEqual(sourceDataOf(['app.customers', 'app.orders', 'app.invoices', 'app.customers_id_seq', 'app.orders_id_seq', 'app.invoice_no']));
    expect(await pg.psql("SELECT obj_description('app.orders'::regclass);", target)).toBe('orders of customers');
    // The owned sequence goes on from the source's value.
    expect(await pg.psql('INSERT INTO app.customers (email) VALUES ($$new@x$$) RETURNING id;', target)).toBe('201');
    await dropDatabase(pg, target);
  });

  it('--table of a partitioned table brings its partitions, at every level, with their rows and indexes', async () => {
    const target = f.dropAtEnd(`${f.db}_p`);
    const r = await restore(target, ['--table', 'readings', '--json'], fileRepo);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { selection: { tables: string[] } }).selection.tables.sort()).toEqual(['audit.readings', 'audit.readings_2025', 'audit.readings_2026', 'audit.readings_2026_rest']);
    expect(await relations(target)).toEqual(sourceRelationsOf((x) => x.startsWith('audit.readings')));
    expect(await dataFingerprint(pg, target)).toEqual(sourceDataOf(['audit.readings', 'audit.readings_2025', 'audit.readings_2026', 'audit.readings_2026_rest']));
    expect(await pg.psql('SELECT count(*) FROM audit.readings;', target)).toBe('400');
    await dropDatabase(pg, target);
  });

  it('--schema with --exclude-table (file repository, --jobs 2), and a name that needs quoting', async () => {
    const target = f.dropAtEnd(`${f.db}_s`);
    const r = await restore(target, ['--schema', 'app', '--exclude-table', 'invoices', '--jobs', '2', '--spool-dir', f.path('spool')], fileRepo);
    expect(r.code, r.stderr).toBe(0);
    expect(await relations(target)).toEqual(sourceRelationsOf((x) => x.startsWith('app.') && !x.startsWith('app.invoices')));
    expect(await dataFingerprint(pg, target)).toEqual(sourceDataOf(['app.customers', 'app.orders', 'app.customers_id_seq', 'app.orders_id_seq', 'app.invoice_no']));
    // The schema's own comment (and grants) come with it.
    expect(await pg.psql("SELECT obj_description('app'::regnamespace, 'pg_namespace');", target)).toBe('the application');
    await dropDatabase(pg, target);

    const odd = f.dropAtEnd(`${f.db}_q`);
    const q = await restore(odd, ['--table', 'Odd "Name"'], fileRepo);
    expect(q.code, q.stderr).toBe(0);
    expect(await relations(odd)).toEqual(['"Mixed Case"."Odd ""Name""":r', '"Mixed Case"."Odd ""Name""_pkey":i']);
    expect(await dataFingerprint(pg, odd)).toEqual(sourceDataOf(['"Mixed Case"."Odd ""Name"""']));
    await dropDatabase(pg, odd);
  });

  it('--exclude-table alone (the whole backup read, --download-whole): everything else; what depends on it (a view, a foreign key) is left out and said', async () => {
    const target = f.dropAtEnd(`${f.db}_x`);
    const r = await restore(target, ['--exclude-table', 'customers', '--download-whole']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/VIEW app\.v_orders left out: it needs TABLE app\.customers, which is excluded/);
    expect(r.stderr).toMatch(/FK CONSTRAINT app\.orders orders_customer_id_fkey left out/);
    expect(await relations(target)).toEqual(sourceRelationsOf((x) => !/^app\.(customers|v_orders)/.test(x)));
    expect(await constraints(target)).not.toContain('orders_customer_id_fkey');
    const tables = Object.keys(sourceData).filter((k) => !k.startsWith('sequence:') && k !== 'app.customers');
    expect(await dataFingerprint(pg, target)).toEqual(sourceDataOf([...tables, 'app.orders_id_seq', 'app.invoice_no']));
    await dropDatabase(pg, target);
  });

  it('--list-file: exactly the entries of a pg_restore -L list', async () => {
    const archive = f.path('whole.dump');
    const out = await f.run(['restore', '--from', s3Repo, '--identity', f.identityFile, '--output', archive]);
    expect(out.code, out.stderr).toBe(0);
    const toc = String((await execa(path.join(pg.binDir, 'pg_restore'), ['--list', archive])).stdout);
    const list = toc
      .split('\n')
      .map((l) => (/ SCHEMA - audit | audit log /.test(l) || l.startsWith(';') ? l : `;${l}`))
      .join('\n');
    const listFile = f.path('audit.list');
    await fsp.writeFile(listFile, list);
    const target = f.dropAtEnd(`${f.db}_l`);
    const r = await restore(target, ['--list-file', listFile]);
    expect(r.code, r.stderr).toBe(0);
    expect(await relations(target)).toEqual(['audit.log:r']);
    expect(await dataFingerprint(pg, target)).toEqual(sourceDataOf(['audit.log']));
    await dropDatabase(pg, target);
  });

  it('a name that matches nothing: one clear line, exit 2, no database created', async () => {
    const target = `${f.db}_none`;
    const listFile = f.path('bad.list');
    await fsp.writeFile(listFile, '999999; 0 0 TABLE public nothing postgres\n');
    const cases: Array<[string[], RegExp]> = [
      [['--table', 'Orders'], /^--table "Orders" matches no table, view, sequence or foreign table in the backup/],
      [['--table', 'app.orders'], /^--table "app\.orders" matches no table/],
      [['--schema', 'audit', '--table', 'orders'], /^--table "orders" matches no table, view, sequence or foreign table in schema "audit"/],
      [['--schema', 'nope'], /^--schema "nope" matches no schema in the backup/],
      [['--exclude-table', 'nope'], /^--exclude-table "nope" matches no table/],
      [['--list-file', listFile], /^--list-file .*bad\.list: entry 999999 is not in this backup's table of contents/],
      [['--table', 'v_orders'], /^VIEW app\.v_orders needs TABLE app\.(customers|orders), which is not selected/],
    ];
    for (const [args, line] of cases) {
      const r = await restore(target, args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(errorLine(r.stderr)).toMatch(line);
      expect(r.stderr).not.toMatch(/restoring into a scratch database/);
    }
    expect(await databasesOf(target)).toEqual([]);
  });
});

describe('selective restore: what --schema brings and --exclude-table takes', () => {
  // A second source: a partitioned table whose partitions live in other schemas (two levels, a
  // default partition), the public schema with its own comment and grants, a policy and a rule
  // that read another table, and columns that draw from sequences (serial, identity, shared).
  const SOURCE2 = String.raw`
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'coffer_sel_reader') THEN CREATE ROLE coffer_sel_reader; END IF; END $$;
CREATE SCHEMA app; CREATE SCHEMA parts; CREATE SCHEMA leaf;
CREATE TABLE app.events (id int, at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE app.events_2024 PARTITION OF app.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE parts.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE parts.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01') PARTITION BY LIST (v);
CREATE TABLE leaf.events_2026_odd PARTITION OF parts.events_2026 FOR VALUES IN (1);
CREATE TABLE leaf.events_2026_rest PARTITION OF parts.events_2026 DEFAULT;
CREATE TABLE parts.events_other PARTITION OF app.events DEFAULT;
CREATE INDEX events_at_idx ON app.events (at);
INSERT INTO app.events SELECT g, DATE '2024-06-01' + g, g % 3 FROM generate_series(1, 1200) g;
CREATE TABLE app.other (x int); INSERT INTO app.other VALUES (1);
COMMENT ON SCHEMA public IS 'changed';
GRANT USAGE ON SCHEMA public TO coffer_sel_reader;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
CREATE TABLE owners (id int PRIMARY KEY, name text);
INSERT INTO owners VALUES (1, 'alice');
CREATE TABLE docs (id int PRIMARY KEY, own int, body text);
INSERT INTO docs VALUES (1, 1, 'a'), (2, 2, 'b');
ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
CREATE POLICY p_own ON docs USING (own IN (SELECT id FROM owners WHERE name = current_user));
CREATE TABLE queue (x int);
CREATE RULE r_copy AS ON INSERT TO queue DO ALSO INSERT INTO owners VALUES (NEW.x, 'from-queue');
CREATE TABLE items (id serial PRIMARY KEY, v text);
CREATE TABLE idents (id int GENERATED BY DEFAULT AS IDENTITY, v text);
CREATE SEQUENCE shared_no;
CREATE TABLE tickets (no int DEFAULT nextval('shared_no'), v text);
INSERT INTO items (v) VALUES ('a'); INSERT INTO idents (v) VALUES ('a'); INSERT INTO tickets (v) VALUES ('a');
`;
  let db2: string;
  let repo2: string;
  let data2: Fingerprint;
  const restore2 = (target: string, args: string[]) => restore(target, args, repo2);
  const schemaState = (db: string) => pg.psql("SELECT coalesce(obj_description(oid, 'pg_namespace'), '<none>') || ' | ' || coalesce(nspacl::text, '<default>') FROM pg_namespace WHERE nspname = 'public';", db);

  beforeAll(async () => {
    db2 = await f.database({ prefix: 'selx' });
    await pg.psql(SOURCE2, db2);
    data2 = await dataFingerprint(pg, db2);
    repo2 = f.path('repo2');
    await f.backup(repo2, db2);
  });

  it('--schema of a partitioned table brings its partitions in other schemas, at every level, with their rows', async () => {
    const parts = ['app.events', 'app.events_2024', 'leaf.events_2026_odd', 'leaf.events_2026_rest', 'parts.events_2025', 'parts.events_2026', 'parts.events_other'];
    for (const args of [['--schema', 'app'], ['--table', 'events']]) {
      const target = f.dropAtEnd(`${db2}_sp`);
      const r = await restore2(target, [...args, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const tables = (JSON.parse(r.stdout) as { selection: { tables: string[] } }).selection.tables.sort();
      expect(tables).toEqual(args[0] === '--schema' ? [...parts, 'app.other'].sort() : parts);
      expect(await pg.psql('SELECT count(*) FROM app.events;', target)).toBe('1200');
      expect(await dataFingerprint(pg, target)).toEqual(Object.fromEntries(Object.entries(data2).filter(([k]) => tables.includes(k))));
      expect(await pg.psql('SELECT count(*) FROM pg_inherits;', target)).toBe(await pg.psql('SELECT count(*) FROM pg_inherits;', db2));
      await dropDatabase(pg, target);
    }
  });

  it('--schema public brings the public schema\'s own comment and grants (pg_dump writes no SCHEMA entry for it)', async () => {
    const target = f.dropAtEnd(`${db2}_pub`);
    const r = await restore2(target, ['--schema', 'public']);
    expect(r.code, r.stderr).toBe(0);
    const source = await schemaState(db2);
    expect(source).toMatch(/^changed \| .*coffer_sel_reader=U/);
    expect(source).not.toMatch(/[{,]=U/);
    expect(await schemaState(target)).toBe(source);
    await dropDatabase(pg, target);
  });

  it('--exclude-table names each entry of a restored table it leaves out; a sequence a restored column draws from is refused', async () => {
    const target = f.dropAtEnd(`${db2}_ex`);
    const r = await restore2(target, ['--exclude-table', 'owners']);
    expect(r.code, r.stderr).toBe(0);
    const warned = r.stderr.split('\n').filter((l) => l.includes('"level":"warn"') && l.includes('left out'));
    expect(warned.map((l) => (JSON.parse(l) as { msg: string }).msg).sort()).toEqual([
      'POLICY public.docs p_own left out: it needs TABLE public.owners, which is excluded',
      'RULE public.queue r_copy left out: it needs TABLE public.owners, which is excluded',
    ]);
    // The excluded table's own index and data are not named; the rest is there.
    expect(await pg.psql("SELECT count(*) FROM pg_class WHERE relname IN ('owners', 'owners_pkey');", target)).toBe('0');
    expect(await pg.psql('SELECT count(*) FROM docs;', target)).toBe('2');
    await dropDatabase(pg, target);

    const none = `${db2}_seq`;
    const cases: Array<[string[], RegExp]> = [
      [['--exclude-table', 'items_id_seq'], /^--exclude-table "items_id_seq": SEQUENCE public\.items_id_seq gives the values of a serial or identity column of TABLE public\.items, which is restored; without the sequence, inserts relying on it would fail \(exclude the table too: --exclude-table "items"; or keep the sequence\)$/],
      [['--exclude-table', 'idents_id_seq'], /^--exclude-table "idents_id_seq": SEQUENCE public\.idents_id_seq gives the values of a serial or identity column of TABLE public\.idents, which is restored/],
      [['--exclude-table', 'shared_no'], /^--exclude-table "shared_no": SEQUENCE public\.shared_no gives the values of a column DEFAULT of TABLE public\.tickets, which is restored/],
      [['--schema', 'public', '--exclude-table', 'items_id_seq'], /^--exclude-table "items_id_seq": SEQUENCE public\.items_id_seq gives the values of a serial or identity column of TABLE public\.items/],
    ];
    for (const [args, line] of cases) {
      const x = await restore2(none, args);
      expect(x.code, `${args.join(' ')}: ${x.stderr}`).toBe(2);
      expect(errorLine(x.stderr)).toMatch(line);
    }
    expect(await databasesOf(none)).toEqual([]);
    // With its table excluded too, the sequence goes quietly with it.
    const both = f.dropAtEnd(`${db2}_both`);
    const b = await restore2(both, ['--exclude-table', 'items', '--exclude-table', 'items_id_seq', '--exclude-table', 'owners']);
    expect(b.code, b.stderr).toBe(0);
    expect(await pg.psql("SELECT count(*) FROM pg_class WHERE relname LIKE 'items%';", both)).toBe('0');
    await dropDatabase(pg, both);
  });
});

describe('sanitised restore', () => {
  const mask = "UPDATE app.customers SET email = 'user' || id || '@example.invalid', name = NULL;\n";

  it('--sanitize with --table and --replace: masked before the rename; a failing one changes nothing and leaves no scratch', async () => {
    const target = f.dropAtEnd(`${f.db}_stage`);
    await pg.psql(`CREATE DATABASE ${JSON.stringify(target)};`);
    await pg.psql('CREATE TABLE marker (x int); INSERT INTO marker VALUES (1);', target);
    const maskFile = f.path('mask.sql');
    await fsp.writeFile(maskFile, mask);
    // The smoke query runs in the scratch database after --sanitize and before the rename: no
    // unmasked address was there when the database got the target's name.
    const unmasked = "SELECT count(*) FROM app.customers WHERE email NOT LIKE '%@example.invalid' OR name IS NOT NULL";
    const r = await restore(target, ['--table', 'customers', '--sanitize', maskFile, '--replace', '--smoke', unmasked, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as { replacedAside: string; checks: { sanitized: string; smoke: Array<{ output: string }> } };
    expect(summary.checks.sanitized).toBe(maskFile);
    expect(summary.checks.smoke[0]!.output).toBe('0');
    f.dropAtEnd(summary.replacedAside);
    expect(await relations(target)).toEqual(sourceRelationsOf((x) => x.startsWith('app.customers')));
    expect(await pg.psql(unmasked, target)).toBe('0');
    expect(await pg.psql('SELECT count(*) FROM app.customers;', target)).toBe('200');

    // A failing sanitize: exit 3, one line naming the file and the error; the target is as it was.
    const badFile = f.path('bad.sql');
    await fsp.writeFile(badFile, `${mask}UPDATE app.customers SET nosuch = 1;\n`);
    const bad = await restore(target, ['--sanitize', badFile, '--replace']);
    expect(bad.code, bad.stderr).toBe(3);
    expect(errorLine(bad.stderr)).toMatch(/^--sanitize .*bad\.sql failed: line 2: ERROR: column "nosuch" of relation "customers" does not exist/);
    expect((await databasesOf(target)).sort()).toEqual([target, summary.replacedAside].sort());
    expect(await pg.psql(unmasked, target)).toBe('0');
    expect(await relations(target)).toEqual(sourceRelationsOf((x) => x.startsWith('app.customers')));

    // A file that turns psql's stop-at-error off cannot pass its failure off as success.
    const sly = f.path('sly.sql');
    await fsp.writeFile(sly, `\\set ON_ERROR_STOP off\nUPDATE app.customers SET nosuch = 1;\n${mask}`);
    const slyRun = await restore(target, ['--sanitize', sly, '--replace']);
    expect(slyRun.code, slyRun.stderr).toBe(3);
    expect(errorLine(slyRun.stderr)).toMatch(/^--sanitize .*sly\.sql failed: line 2: ERROR: column "nosuch"/);
    expect((await databasesOf(target)).sort()).toEqual([target, summary.replacedAside].sort());

    // A missing file is refused before anything is read.
    const missing = await restore(`${f.db}_nofile`, ['--sanitize', f.path('nope.sql')]);
    expect(missing.code).toBe(2);
    expect(errorLine(missing.stderr)).toMatch(/^--sanitize .*nope\.sql: no such file or not readable/);
    expect(missing.stderr).not.toMatch(/backup selected/);
  });

  it('a --sanitize file that ends coffer\'s transaction or hides an error fails the restore: no scratch left, the target untouched', async () => {
    // Each ran, before, to exit 0 with the masking rolled back (psql's COMMIT of an aborted
    // transaction is a ROLLBACK) or with statements outside the one transaction.
    const replaced = f.dropAtEnd(`${f.db}_keep`);
    await pg.psql(`CREATE DATABASE ${JSON.stringify(replaced)};`);
    await pg.psql('CREATE TABLE marker (x int); INSERT INTO marker VALUES (1);', replaced);
    const typo = 'UPDATE app.customers SET emial = 1;';
    const ended = /ended coffer's transaction \(a COMMIT, ROLLBACK, END, ABORT or \\connect in the file/;
    const cases: Array<[string, RegExp]> = [
      [`\\set ON_ERROR_STOP off\nBEGIN;\n${mask}${typo}\nCOMMIT;\n`, /failed: line 4: ERROR: column "emial" of relation "customers" does not exist/],
      [`\\set ON_ERROR_STOP off\n${mask}${typo}\nROLLBACK;\n`, /failed: line 3: ERROR: column "emial"/],
      [`\\set ON_ERROR_STOP off\nSAVEPOINT s;\n${typo}\nROLLBACK TO SAVEPOINT s;\n${mask}`, /failed: line 3: ERROR: column "emial"/],
      [`\\set ON_ERROR_ROLLBACK on\n\\set ON_ERROR_STOP off\n${typo}\n${mask}`, /failed: line 3: ERROR: column "emial"/],
      [`\\set ON_ERROR_STOP off\n\\i ${f.path('nope.sql')}\n${mask}`, /failed: line 2: error: .*nope\.sql: No such file/],
      [`${mask}ROLLBACK;\n`, ended],
      [`${mask}SAVEPOINT s;\nROLLBACK;\n`, ended],
      [`${mask}COMMIT;\n`, ended],
      [`BEGIN;\n${mask}COMMIT;\n`, /ended coffer's transaction .*, after its own BEGIN on line 1\)/],
      [`${mask}\\connect\n`, ended],
      [`BEGIN;\n${mask}`, /has a BEGIN of its own on line 1/],
    ];
    for (const [i, [sql, line]] of cases.entries()) {
      const file = f.path(`hiding-${i}.sql`);
      await fsp.writeFile(file, sql);
      // Every other one replaces an existing database: it stays as it was.
      const target = i % 2 === 0 ? replaced : `${f.db}_hid${i}`;
      const r = await restore(target, ['--table', 'customers', '--sanitize', file, ...(target === replaced ? ['--replace'] : [])], fileRepo);
      expect(r.code, `${sql}: ${r.stderr}`).toBe(3);
      expect(errorLine(r.stderr), sql).toMatch(new RegExp(`^--sanitize .*hiding-${i}\\.sql ${line.source}`));
      expect(await databasesOf(target), sql).toEqual(target === replaced ? [replaced] : []);
    }
    expect(await pg.psql('SELECT x FROM marker;', replaced)).toBe('1');
    expect(await relations(replaced)).toEqual(['public.marker:r']);
  });

  it('--sanitize refreshes the populated materialized views after the file (views over views after what they read); an unpopulated one stays so', async () => {
    const source = f.dropAtEnd(`${f.db}_mv`);
    await pg.psql(`CREATE DATABASE ${JSON.stringify(source)};`);
    await pg.psql(
      String.raw`
CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO customers SELECT g, 'person' || g || '@real-customer.com' FROM generate_series(1, 50) g;
CREATE SCHEMA "Re Ports";
-- Names sort against the dependency order: the refresh must follow what each reads.
CREATE MATERIALIZED VIEW "Re Ports".z_emails AS SELECT id, email FROM customers;
CREATE VIEW "Re Ports".plain AS SELECT * FROM "Re Ports".z_emails;
CREATE MATERIALIZED VIEW "Re Ports".a_domains AS SELECT split_part(email, '@', 2) AS domain, count(*) AS n FROM "Re Ports".plain GROUP BY 1;
CREATE UNIQUE INDEX ON "Re Ports".z_emails (email);
CREATE MATERIALIZED VIEW later AS SELECT * FROM customers WITH NO DATA;
`,
      source,
    );
    const repo = f.path('repo-mv');
    await f.backup(repo, source);
    const maskFile = f.path('mask-mv.sql');
    await fsp.writeFile(maskFile, "UPDATE customers SET email = 'user' || id || '@example.invalid';\n");
    const target = f.dropAtEnd(`${f.db}_mvs`);
    const r = await restore(target, ['--sanitize', maskFile], repo);
    expect(r.code, r.stderr).toBe(0);
    expect(await pg.psql(`SELECT count(*) FROM "Re Ports".z_emails WHERE email LIKE '%@real-customer.com';`, target)).toBe('0');
    expect(await pg.psql(`SELECT count(*) FROM "Re Ports".z_emails;`, target)).toBe('50');
    expect(await pg.psql(`SELECT domain || '=' || n FROM "Re Ports".a_domains;`, target)).toBe('example.invalid=50');
    expect(await pg.psql(`SELECT relispopulated FROM pg_class WHERE relname = 'later';`, target)).toBe('f');
    const logged = r.stderr.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; views?: string });
    expect(logged.find((l) => l.msg === 'materialized views refreshed after --sanitize')?.views).toBe('"Re Ports".z_emails,"Re Ports".a_domains');

    // A view that cannot be refreshed after the file fails the restore: the unique index on the
    // emails does not hold once the mask gives everyone the same address.
    const same = f.path('mask-same.sql');
    await fsp.writeFile(same, "UPDATE customers SET email = 'x@example.invalid';\n");
    const bad = await restore(`${f.db}_mvbad`, ['--sanitize', same], repo);
    expect(bad.code, bad.stderr).toBe(3);
    expect(errorLine(bad.stderr)).toMatch(/^--sanitize .*mask-same\.sql ran, but refreshing its materialized views after it failed \(last listed: .*\): ERROR: could not create unique index/);
    expect(await databasesOf(`${f.db}_mvbad`)).toEqual([]);
  });
});

interface Contents {
  backupId: string | null;
  schemas: string[];
  tables: Array<{ schema: string; name: string; dataBytes: number | null }>;
  objects: Record<string, string[]>;
  sizes: boolean;
  storedBytesRead: number;
  read: 'index' | 'whole' | 'head';
  archive: { formatVersion: string; serverVersion: string };
}

describe('show', () => {
  it('--json lists schemas, tables with data sizes, other objects by kind (S3); text (file repository); --toc-only reads the head only (S3); --file', async () => {
    const r = await f.run(['show', '--from', s3Repo, '--backup', manifest.id, '--identity', f.identityFile, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const c = JSON.parse(r.stdout) as Contents;
    expect(c.backupId).toBe(manifest.id);
    expect(c.archive.formatVersion).toBe('1.14');
    expect(c.archive.serverVersion).toBe(manifest.postgres.serverVersion);
    expect(c.schemas).toEqual(['Mixed Case', 'app', 'audit', 'public']);
    expect(c.tables.map((t) => `${t.schema}.${t.name}`).sort()).toEqual(['Mixed Case.Odd "Name"', 'app.customers', 'app.invoices', 'app.orders', 'audit.log', 'audit.readings', 'audit.readings_2025', 'audit.readings_2026', 'audit.readings_2026_rest', 'public.events']);
    const size = (name: string): number => c.tables.find((t) => t.name === name)!.dataBytes!;
    // 3000 order rows against 20 invoices and 7 one-column rows; every table has some bytes.
    expect(size('orders')).toBeGreaterThan(30_000);
    expect(size('orders')).toBeGreaterThan(size('customers'));
    expect(size('customers')).toBeGreaterThan(size('invoices'));
    expect(size('Odd "Name"')).toBeGreaterThan(0);
    expect(c.sizes).toBe(true);
    // Sizes from the archive index: the index and the head were read (here, a small backup, all of its frames).
    expect(c.storedBytesRead).toBeLessThanOrEqual(manifest.index!.size + 16 * 1024 + manifest.dump.size);
    expect(c.objects.VIEW).toEqual(['app.v_orders']);
    expect(c.objects.INDEX).toEqual(['app.orders_customer_idx', 'audit.readings_at_idx', 'audit.readings_2025_at_idx', 'audit.readings_2026_at_idx', 'audit.readings_2026_rest_at_idx']);
    expect(c.objects['FK CONSTRAINT']).toEqual(['app.orders orders_customer_id_fkey']);
    expect(c.objects.TYPE).toEqual(['app.status']);

    const t = await f.run(['show', '--from', fileRepo, '--identity', f.identityFile]);
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/^table +app +orders +\d+(\.\d+)? KiB$/m);
    expect(t.stdout).toMatch(/^schemas: Mixed Case, app, audit, public$/m);
    expect(t.stdout).toMatch(/other objects: .*VIEW 1/);
    // It says what it read: the index and the head, not a whole check.
    expect(t.stdout).toMatch(/^read the archive index and the first \d+(\.\d+)? KiB of \d+(\.\d+)? KiB of the backup \(data sizes from the index\): only that was checked; run coffer verify to check the whole backup$/m);
    expect(t.stdout).not.toMatch(/whole backup \(|checked out whole/);

    // --toc-only on a backup whose table of contents is a small part of it (12 MB of incompressible
    // rows): it stops the download after the head, which is not a failure (nothing retried or warned).
    const big = await f.database({ prefix: 'selbig', fillMB: 12 });
    const bigManifest = await f.backup(f.repo('big'), big);
    const h = await f.run(['show', '--from', f.repo('big'), '--identity', f.identityFile, '--toc-only', '--json']);
    expect(h.code, h.stderr).toBe(0);
    expect(h.stderr.split('\n').filter((l) => /"level":"(warn|error)"/.test(l))).toEqual([]);
    const hc = JSON.parse(h.stdout) as Contents;
    expect(hc.sizes).toBe(false);
    expect(hc.tables).toEqual([{ schema: 'public', name: 'large_fill', dataBytes: null }]);
    expect(hc.storedBytesRead).toBeLessThan(bigManifest.dump.size / 2);
    // With sizes: from the archive index, again without the rows (a whole read gives the same sizes).
    const hs = await f.run(['show', '--from', f.repo('big'), '--identity', f.identityFile, '--json']);
    expect(hs.code, hs.stderr).toBe(0);
    const hsc = JSON.parse(hs.stdout) as Contents;
    expect(hsc.sizes).toBe(true);
    expect(hsc.storedBytesRead).toBeLessThan(bigManifest.dump.size / 4);
    expect(hsc.read).toBe('index');
    expect(hc.read).toBe('head');
    // Damaged late (a byte flipped at 1/2, 2/3 and near the end of a copy in a file repository):
    // show reads only the head, so it cannot tell, and must not claim the backup checked out whole.
    const bigFile = f.path('bigfile');
    await f.backup(bigFile, big);
    const [dumpObject] = (await fsp.readdir(bigFile, { recursive: true })).filter((n) => n.endsWith('.dump.zst.age'));
    const dumpPath = path.join(bigFile, dumpObject!);
    const original = await fsp.readFile(dumpPath);
    for (const at of [Math.floor(original.length / 2), Math.floor((original.length * 2) / 3), original.length - 100]) {
      const damaged = Buffer.from(original);
      damaged[at] = damaged[at]! ^ 0xff;
      await fsp.writeFile(dumpPath, damaged);
      const ds = await f.run(['show', '--from', bigFile, '--identity', f.identityFile]);
      expect(ds.code, ds.stderr).toBe(0);
      expect(ds.stdout).toMatch(/^read the archive index and the first \d+(\.\d+)? (KiB|MiB) of \d+(\.\d+)? MiB of the backup \(data sizes from the index\): only that was checked; run coffer verify to check the whole backup$/m);
      expect(ds.stdout).not.toMatch(/checked out whole/);
    }
    const dv = await f.run(['verify', '--from', bigFile, '--identity', f.identityFile]);
    expect(dv.code, dv.stderr).toBe(5);
    await fsp.writeFile(dumpPath, original);
    const wr = await f.run(['restore', '--from', f.repo('big'), '--identity', f.identityFile, '--output', f.path('big.dump')]);
    expect(wr.code, wr.stderr).toBe(0);
    const scanned = scanArchiveFile(f.path('big.dump'));
    if (!scanned.ok) throw new Error(scanned.reason);
    const walked = dataBlockSizes(scanned.layout);
    expect(hsc.tables[0]!.dataBytes).toBe([...walked.values()][0]);
    expect(hsc.tables[0]!.dataBytes).toBeGreaterThan(24 << 20); // 12 MiB of bytea, as hex

    // --file: any pg_dump -Fc | age file.
    const file = f.path('show.dump.age');
    await execa('bash', ['-c', 'set -o pipefail; "$1/pg_dump" -Fc "$2" | age -r "$3" > "$4"', 'x', pg.binDir, f.db, f.recipient, file], { env: { ...process.env, ...pg.env() } });
    const fl = await f.run(['show', '--file', file, '--identity', f.identityFile, '--json']);
    expect(fl.code, fl.stderr).toBe(0);
    const fc = JSON.parse(fl.stdout) as Contents;
    expect(fc.backupId).toBeNull();
    expect(fc.tables.map((t) => t.name).sort()).toEqual(c.tables.map((t) => t.name).sort());
    expect(fc.tables.find((t) => t.name === 'orders')!.dataBytes).toBeGreaterThan(0);
    // Without an index the whole file is read and checked, and only then is that said.
    expect(fc.read).toBe('whole');
    const ft = await f.run(['show', '--file', file, '--identity', f.identityFile]);
    expect(ft.code, ft.stderr).toBe(0);
    expect(ft.stdout).toMatch(/^read the whole backup \(\d+(\.\d+)? KiB\): data sizes are known only at the end of the archive; it checked out whole$/m);
  });
});

describe('version checks', () => {
  /** A copy of the file repository whose manifest says what `edit` makes it say. */
  async function repoWithManifest(name: string, edit: (m: BackupManifest) => void): Promise<string> {
    const dir = f.path(name);
    await fsp.cp(fileRepo, dir, { recursive: true });
    const dbDir = path.join(dir, f.db);
    const files = (await fsp.readdir(dbDir, { recursive: true })).filter((p) => String(p).endsWith('.manifest.json'));
    expect(files).toHaveLength(1);
    const file = path.join(dbDir, String(files[0]));
    const m = JSON.parse(await fsp.readFile(file, 'utf8')) as BackupManifest;
    edit(m);
    await fsp.writeFile(file, JSON.stringify(m));
    return dir;
  }

  it('a source newer than the target server, or a pg_dump newer than the local pg_restore: refused from the manifest before the download, exit 2, nothing created', async () => {
    const target = `${f.db}_ver`;
    const newerServer = await repoWithManifest('v17', (m) => {
      m.postgres.serverVersion = '17.2';
      m.postgres.serverVersionNum = 170002;
      m.postgres.pgDumpVersion = 'pg_dump (PostgreSQL) 17.2';
    });
    const a = await restore(target, [], newerServer);
    expect(a.code, a.stderr).toBe(2);
    expect(errorLine(a.stderr)).toMatch(/^backup \S+ comes from PostgreSQL 17\.2; the target server runs PostgreSQL 15\.\d+.*which is older/);
    expect(a.stderr).not.toMatch(/backup opened/);

    const newerDump = await repoWithManifest('d16', (m) => {
      m.postgres.pgDumpVersion = 'pg_dump (PostgreSQL) 16.4';
    });
    const b = await restore(target, ['--table', 'orders'], newerDump);
    expect(b.code, b.stderr).toBe(2);
    expect(errorLine(b.stderr)).toMatch(/^backup \S+ \(pg_dump 16\.4\) is archive format 1\.15, which the local pg_restore 15 cannot read \(it reads up to 1\.14\)/);
    expect(b.stderr).not.toMatch(/backup opened/);
    expect(await databasesOf(target)).toEqual([]);
  });

  it('an archive whose header declares a newer format: refused at the head of the stream, exit 2, nothing created', async () => {
    // A real archive with its version bytes set to 1.15 (what pg_dump 16 writes), encrypted with the age CLI.
    const plain = f.path('newer.dump');
    const dump = await execa(path.join(pg.binDir, 'pg_dump'), ['-Fc', '-d', f.db], { env: { ...process.env, ...pg.env() }, encoding: 'buffer' });
    const bytes = Buffer.from(dump.stdout);
    expect(bytes.subarray(0, 8)).toEqual(Buffer.from([0x50, 0x47, 0x44, 0x4d, 0x50, 1, 14, 0]));
    bytes[6] = 15;
    await fsp.writeFile(plain, bytes);
    const file = f.path('newer.dump.age');
    await execa('age', ['-r', f.recipient, '-o', file, plain]);
    const target = `${f.db}_hdr`;
    const r = await f.run(['restore', '--file', file, '--identity', f.identityFile, '--target-db', target]);
    expect(r.code, r.stderr).toBe(2);
    expect(errorLine(r.stderr)).toMatch(/^--file \S+newer\.dump\.age is archive format 1\.15, which the local pg_restore 15 cannot read \(it reads up to 1\.14\) \[pg_restore \(PostgreSQL\) 15\./);
    expect(r.stderr).toMatch(/use pg_restore 16 or newer/);
    expect(r.stderr).not.toMatch(/restoring into a scratch database/);
    expect(await databasesOf(target)).toEqual([]);
  });
});
