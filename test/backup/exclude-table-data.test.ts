/**
 * Issue 12, point 9: `--exclude-table-data` on a partitioned table excludes the data of all its
 * partitions (pg_dump 15 matches the parent only), and excluding the data of a table that a
 * foreign key references is a warning in the log and the manifest, naming the constraint (such
 * a backup cannot be restored), repeated when a restore of it fails.
 */
import { describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { createDatabase, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'exclude' });
const pg = f.pg;


async function database(sql: string): Promise<string> {
  const db = await createDatabase(pg, uniqueDbName('exclude'));
  f.dropAtEnd(db);
  await pg.psql(sql, db);
  return db;
}

function warnings(stderr: string): string[] {
  const out: string[] = [];
  for (const l of stderr.split('\n')) {
    try {
      const rec = JSON.parse(l) as { level?: string; msg?: string };
      if (rec.level === 'warn') out.push(rec.msg ?? '');
    } catch {
      // not a log line
    }
  }
  return out;
}

describe('--exclude-table-data', () => {
  it('on a partitioned table excludes the rows of every partition, at every level', async () => {
    const db = await database(`
CREATE TABLE measurement (id int NOT NULL, at date NOT NULL, v text) PARTITION BY RANGE (at);
CREATE TABLE measurement_2024 PARTITION OF measurement FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY LIST (id);
CREATE TABLE measurement_2024_low PARTITION OF measurement_2024 FOR VALUES IN (1, 2, 3);
CREATE TABLE measurement_2024_rest PARTITION OF measurement_2024 DEFAULT;
CREATE TABLE "Measurement 2025" PARTITION OF measurement FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO measurement SELECT g, '2024-06-01', 'x' FROM generate_series(1, 10) g;
INSERT INTO measurement SELECT g, '2025-06-01', 'y' FROM generate_series(1, 10) g;
CREATE TABLE keep (id int PRIMARY KEY);
INSERT INTO keep SELECT generate_series(1, 7);
`);
    const repo = f.path('partitions');
    const b = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--json', '--exclude-table-data', 'MEASUREMENT']);
    expect(b.code, b.stderr).toBe(0);

    const target = uniqueDbName('exclude_r');
    f.dropAtEnd(target);
    const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target]);
    expect(r.code, r.stderr).toBe(0);
    const counts = await pg.psql(
      `SELECT (SELECT count(*) FROM measurement) || '/' || (SELECT count(*) FROM measurement_2024_low) || '/' || (SELECT count(*) FROM measurement_2024_rest) || '/' || (SELECT count(*) FROM "Measurement 2025") || '/' || (SELECT count(*) FROM keep);`,
      target,
    );
    expect(counts).toBe('0/0/0/0/7');
    // The restore says which tables come back empty (the backup left their rows out on purpose).
    expect(r.stderr).toMatch(/the backup was taken with --exclude-table-data: the rows of these 5 tables are not in it, so they are restored empty: MEASUREMENT, /);
    // The tables are all there.
    expect(await pg.psql(`SELECT count(*) FROM pg_class WHERE relname ILIKE 'measurement%' AND relkind IN ('r', 'p');`, target)).toBe('5');

    const [m] = JSON.parse(b.stdout) as BackupManifest[];
    expect(m!.dumpOptions!.excludeTableData).toEqual(
      expect.arrayContaining(['MEASUREMENT', '"public"."measurement_2024"', '"public"."measurement_2024_low"', '"public"."measurement_2024_rest"', '"public"."Measurement 2025"']),
    );
    expect(m!.warnings).toEqual([]);
    expect(b.stderr).toContain('--exclude-table-data MEASUREMENT matches the partitioned table public.measurement: the data of its 4 partition(s) is excluded too');
  });

  it('of a table that a foreign key references: a warning naming the constraint, in the log and the manifest; a restore that fails on it says why', async () => {
    const db = await database(`
CREATE TABLE customer (id int PRIMARY KEY);
CREATE TABLE invoice (id int PRIMARY KEY, customer_id int REFERENCES customer(id));
CREATE TABLE audit (id int PRIMARY KEY, invoice_id int REFERENCES invoice(id));
INSERT INTO customer VALUES (1), (2);
INSERT INTO invoice VALUES (10, 1), (11, 2);
`);
    const repo = f.path('references');
    const b = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--json', '--exclude-table-data', 'customer', '--exclude-table-data', 'audit']);
    expect(b.code, b.stderr).toBe(0);
    const [m] = JSON.parse(b.stdout) as BackupManifest[];
    const expected = /^--exclude-table-data: the data of public\.customer is excluded, but foreign key invoice_customer_id_fkey of public\.invoice \(whose data is included\) references it: a restore of this backup fails/;
    // One warning: audit's key references invoice, whose data is included.
    expect(m!.warnings).toHaveLength(1);
    expect(m!.warnings![0]).toMatch(expected);
    expect(warnings(b.stderr).filter((w) => expected.test(w))).toHaveLength(1);

    const target = uniqueDbName('exclude_fk');
    f.dropAtEnd(target);
    const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target]);
    expect(r.code).toBe(3);
    expect(warnings(r.stderr).some((w) => w.startsWith('the backup was taken with a warning: --exclude-table-data: the data of public.customer is excluded'))).toBe(true);
    expect(errorLine(r.stderr)).toContain('this backup was taken with --exclude-table-data of a table that a foreign key references, and cannot be restored as it is');
  });

  it('a foreign key to a partitioned table whose data is excluded is reported once, under the name pg_dump restores', async () => {
    const db = await database(`
CREATE TABLE event (id int NOT NULL, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE event_2024 PARTITION OF event FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE event_2025 PARTITION OF event FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE seen (id int, at date, FOREIGN KEY (id, at) REFERENCES event);
`);
    const repo = f.path('partitioned-references');
    const b = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--json', '--exclude-table-data', 'event']);
    expect(b.code, b.stderr).toBe(0);
    const [m] = JSON.parse(b.stdout) as BackupManifest[];
    expect(m!.warnings).toHaveLength(1);
    expect(m!.warnings![0]).toMatch(/^--exclude-table-data: the data of public\.event is excluded, but foreign key seen_id_at_fkey of public\.seen /);
  });
});
