/**
 * Issue 12, point 8: the data-only procedure on a real schema — a foreign-key cycle, materialized
 * views (one reading the other), a large object, a sequence. pg_dump's warnings reach the log
 * and the manifest; `backup --data-only --disable-triggers` plus `restore --into-existing DB`
 * load the data into a database restored from a schema-only backup, in one transaction (also
 * across pg_dump's own BEGIN/COMMIT around large objects), materialized views refreshed in
 * dependency order.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { createDatabase, dataFingerprint, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'dataonly' });
const pg = f.pg;

let src: string;

/** Two tables referencing each other (not deferrable), materialized views whose name order is not their dependency order, a large object, a sequence. */
const SCHEMA = `
CREATE TABLE a (id int PRIMARY KEY, b_id int);
CREATE TABLE b (id int PRIMARY KEY, a_id int NOT NULL REFERENCES a(id));
ALTER TABLE a ADD CONSTRAINT a_b_fk FOREIGN KEY (b_id) REFERENCES b(id);
CREATE TABLE note (id serial PRIMARY KEY, body text);
INSERT INTO a SELECT g, NULL FROM generate_series(1, 20) g;
INSERT INTO b SELECT g, g FROM generate_series(1, 20) g;
UPDATE a SET b_id = id;
INSERT INTO note (body) SELECT 'note ' || g FROM generate_series(1, 5) g;
CREATE MATERIALIZED VIEW mv_z_pairs AS SELECT a.id AS a_id, b.id AS b_id FROM a JOIN b ON b.a_id = a.id;
CREATE VIEW v_pairs AS SELECT * FROM mv_z_pairs WHERE a_id > 5;
CREATE MATERIALIZED VIEW mv_a_total AS SELECT count(*) AS n, sum(a_id) AS s FROM v_pairs;
SELECT lo_from_bytea(0, convert_to(repeat('large object ', 5000), 'UTF8'));
`;

interface LogRecord {
  level: string;
  msg: string;
}

function logRecords(stderr: string): LogRecord[] {
  const out: LogRecord[] = [];
  for (const l of stderr.split('\n')) {
    try {
      out.push(JSON.parse(l) as LogRecord);
    } catch {
      // not a log line
    }
  }
  return out;
}

async function backup(repo: string, ...extra: string[]): Promise<{ manifest: BackupManifest; stderr: string }> {
  const r = await f.run(['backup', '--to', repo, '--db', src, '--recipient', f.recipient, '--json', ...extra]);
  expect(r.code, r.stderr).toBe(0);
  return { manifest: (JSON.parse(r.stdout) as BackupManifest[])[0]!, stderr: r.stderr };
}

async function restoreSchema(repo: string, id: string): Promise<string> {
  const target = uniqueDbName('dataonly_t');
  f.dropAtEnd(target);
  const r = await f.run(['restore', '--from', repo, '--backup', id, '--identity', f.identityFile, '--target-db', target]);
  expect(r.code, r.stderr).toBe(0);
  return target;
}

async function contents(db: string): Promise<string> {
  return pg.psql('SELECT (SELECT count(*) FROM a) || $$/$$ || (SELECT count(*) FROM b) || $$/$$ || (SELECT count(*) FROM pg_largeobject_metadata);', db);
}

beforeAll(async () => {
  src = await createDatabase(pg, uniqueDbName('dataonly_src'));
  f.dropAtEnd(src);
  await pg.psql(SCHEMA, src);
});

const CYCLE_WARNING = /^pg_dump: warning: there are circular foreign-key constraints among these tables: (a, b|b, a) \(hint: You might not be able to restore the dump without using --disable-triggers/;

describe('data-only backups of a schema with a foreign-key cycle, materialized views and a large object', () => {
  it('schema-only + data-only --disable-triggers, restore --into-existing: rows, materialized views, the large object and sequences equal the source', async () => {
    const repo = f.path('roundtrip');
    const schema = await backup(repo, '--schema-only');
    const data = await backup(repo, '--data-only', '--disable-triggers');
    expect(data.manifest.dumpOptions).toEqual({ disableTriggers: true, excludeTableData: [] });
    // pg_dump warns about the cycle with --disable-triggers too: recorded all the same.
    expect(data.manifest.warnings!.some((w) => CYCLE_WARNING.test(w))).toBe(true);

    const target = await restoreSchema(repo, schema.manifest.id);
    expect(await contents(target)).toBe('0/0/0');
    // latest with --into-existing: the newest data-only backup.
    const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--into-existing', target]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(data.manifest.id);
    expect(r.stdout).toContain('in one transaction');
    expect(r.stdout).toMatch(/materialized views refreshed: 2 \(public\.mv_z_pairs, public\.mv_a_total\)/);
    // Materialized views populated, large object and sequence as in the source.
    expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, src));
    expect(await pg.psql('SELECT n || $$/$$ || s FROM mv_a_total;', target)).toBe('15/195');
  });

  it('without --disable-triggers: the warning is in the log and the manifest; the load fails with the fix and loads nothing', async () => {
    const repo = f.path('no-disable');
    const schema = await backup(repo, '--schema-only');
    const data = await backup(repo, '--data-only');
    const warned = logRecords(data.stderr).filter((l) => l.level === 'warn' && CYCLE_WARNING.test(l.msg));
    expect(warned).toHaveLength(1);
    expect((data.manifest.warnings ?? []).filter((w) => CYCLE_WARNING.test(w))).toHaveLength(1);
    expect(data.manifest.dumpOptions).toEqual({ disableTriggers: false, excludeTableData: [] });
    // A full backup has no such warning, and says so.
    expect((await backup(repo)).manifest.warnings).toEqual([]);

    const target = await restoreSchema(repo, schema.manifest.id);
    const r = await f.run(['restore', '--from', repo, '--backup', data.manifest.id, '--identity', f.identityFile, '--into-existing', target]);
    expect(r.code).toBe(3);
    const line = errorLine(r.stderr);
    expect(line).toMatch(/^loading data-only backup \S+ into "[^"]+" failed: insert or update on table "[ab]" violates foreign key constraint/);
    expect(line).toContain('nothing was loaded');
    expect(line).toContain('take the data-only backup with --disable-triggers');
    expect(await contents(target)).toBe('0/0/0');
  });

  it('the load is one transaction across pg_dump\'s BEGIN/COMMIT around large objects: a failure at the end leaves the database as it was', async () => {
    const repo = f.path('atomic');
    const schema = await backup(repo, '--schema-only');
    const data = await backup(repo, '--data-only', '--disable-triggers');
    const target = await restoreSchema(repo, schema.manifest.id);
    // A materialized view of the target that cannot be refreshed once a holds 20 rows: the
    // refreshes come last, after the large objects' data.
    await pg.psql('CREATE MATERIALIZED VIEW zz_fails AS SELECT 1 / (count(*) - 20) AS x FROM public.a WITH NO DATA;', target);
    const r = await f.run(['restore', '--from', repo, '--backup', data.manifest.id, '--identity', f.identityFile, '--into-existing', target]);
    expect(r.code).toBe(3);
    expect(errorLine(r.stderr)).toMatch(/failed: division by zero; nothing was loaded/);
    expect(await contents(target)).toBe('0/0/0');
  });

  it('a backup found damaged at its last bytes, after rows went to psql, loads nothing', async () => {
    const db = await createDatabase(pg, uniqueDbName('dataonly_big'));
    f.dropAtEnd(db);
    // Several age chunks (64 KiB) of incompressible rows, so that rows reach psql before the end.
    await pg.psql("CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) FROM generate_series(1, 20000) g;", db);
    const repo = f.path('damaged');
    const r1 = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--json', '--schema-only']);
    expect(r1.code, r1.stderr).toBe(0);
    const r2 = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--json', '--data-only']);
    expect(r2.code, r2.stderr).toBe(0);
    const schema = (JSON.parse(r1.stdout) as BackupManifest[])[0]!;
    const data = (JSON.parse(r2.stdout) as BackupManifest[])[0]!;
    expect(data.dump.size).toBeGreaterThan(4 * 65536);
    const target = await restoreSchema(repo, schema.id);
    // One byte of the last age chunk: only the end of the stream can tell.
    const file = path.join(repo, data.dump.key);
    const bytes = await fsp.readFile(file);
    bytes[bytes.length - 40]! ^= 0x01;
    await fsp.writeFile(file, bytes);
    const r = await f.run(['restore', '--from', repo, '--backup', data.id, '--identity', f.identityFile, '--into-existing', target]);
    expect(r.code, r.stderr).toBe(5);
    expect(await pg.psql('SELECT count(*) FROM big;', target)).toBe('0');
  });

  it('usage: a data-only backup is refused by --target-db with the way to load it; --into-existing needs an existing database and a data-only backup; --disable-triggers needs --data-only', async () => {
    const repo = f.path('usage');
    const full = await backup(repo);
    const data = await backup(repo, '--data-only', '--disable-triggers');
    const refused = await f.run(['restore', '--from', repo, '--backup', data.manifest.id, '--identity', f.identityFile, '--target-db', uniqueDbName('x')]);
    expect(refused.code).toBe(2);
    expect(errorLine(refused.stderr)).toMatch(/is data-only: .* coffer restore --backup \S+ --into-existing DB/);

    const missing = uniqueDbName('missing');
    const noDb = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--into-existing', missing]);
    expect(noDb.code).toBe(2);
    expect(errorLine(noDb.stderr)).toContain(`database "${missing}" does not exist; --into-existing loads a data-only backup into a database that already has the schema`);

    const notData = await f.run(['restore', '--from', repo, '--backup', full.manifest.id, '--identity', f.identityFile, '--into-existing', src]);
    expect(notData.code).toBe(2);
    expect(errorLine(notData.stderr)).toMatch(/is a full backup: --into-existing loads data-only backups/);

    const both = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--into-existing', src, '--target-db', 'x']);
    expect(both.code).toBe(2);
    expect(errorLine(both.stderr)).toMatch(/--into-existing cannot be combined with --target-db/);

    const dt = await f.run(['backup', '--to', repo, '--db', src, '--recipient', f.recipient, '--disable-triggers']);
    expect(dt.code).toBe(2);
    expect(errorLine(dt.stderr)).toMatch(/--disable-triggers applies to --data-only backups only/);
  });
});
