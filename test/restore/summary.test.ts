/**
 * Issue 12, point 10: the restore summary counts the same tables as the archive check (and says
 * which), a plain-SQL restore says it has no table of contents to check instead of `0/0`, the
 * "holds backups of N databases" hint lists N names that read as N, and `status` columns align.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeDbSegment } from '../../src/catalog/layout.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { createDatabase, dropDatabase, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'summary', db: { fixture: 'varied', prefix: 'summary' } });
const pg = f.pg;

describe('restore summary', () => {
  let tables: number;
  it('tables and the archive check count the same tables (partitioned parents included)', async () => {
    const repo = f.path('repo');
    for (const extra of [[], ['--schema-only']]) {
      const b = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, ...extra]);
      expect(b.code, b.stderr).toBe(0);
    }
    const partitioned = Number(await pg.psql("SELECT count(*) FROM pg_class WHERE relkind = 'p';", f.db));
    expect(partitioned).toBeGreaterThan(0);
    tables = Number(await pg.psql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%';", f.db));

    const full = uniqueDbName('summary_r');
    const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', full]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.split('\n')[1]).toBe(`tables: ${tables} (ordinary and partitioned); all ${tables} tables of the archive present`);
    await dropDatabase(pg, full);

    const json = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', full, '--json']);
    expect(json.code, json.stderr).toBe(0);
    const s = JSON.parse(json.stdout) as { tables: number; checks: { tocTables: number | null; tocTablesPresent: boolean | null }; largestTables: Array<{ table: string }> };
    expect(s.tables).toBe(tables);
    expect(s.checks).toMatchObject({ tocTables: tables, tocTablesPresent: true });
    await dropDatabase(pg, full);
  });

  it('a plain-SQL (schema-only) restore says it has no table of contents to check, not 0/0', async () => {
    const repo = f.path('repo'); // the backups of the test above
    const schema = uniqueDbName('summary_s');
    const p = await f.run(['restore', '--from', repo, '--kind', 'schema-only', '--identity', f.identityFile, '--target-db', schema]);
    expect(p.code, p.stderr).toBe(0);
    expect(p.stdout).not.toContain('0/0');
    expect(p.stdout.split('\n')[1]).toBe(`tables: ${tables} (ordinary and partitioned); plain-SQL archive: no table of contents to check them against`);
    await dropDatabase(pg, schema);
    const pj = await f.run(['restore', '--from', repo, '--kind', 'schema-only', '--identity', f.identityFile, '--target-db', schema, '--json']);
    expect(pj.code, pj.stderr).toBe(0);
    expect((JSON.parse(pj.stdout) as { checks: unknown }).checks).toMatchObject({ tocTables: null, tocTablesPresent: null });
    await dropDatabase(pg, schema);
  });
});

describe('"the repository holds backups of N databases"', () => {
  it('lists N names that read as N, whatever they contain', async () => {
    const repo = f.path('names');
    const names = ['a', 'b, c', ' ', 'd'];
    for (const [i, name] of names.entries()) {
      const dir = path.join(repo, encodeDbSegment(name), 'daily');
      await fsp.mkdir(dir, { recursive: true });
      await fsp.writeFile(path.join(dir, `20261101T000000Z-0000000${i}.manifest.json`), '{}');
    }
    const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', uniqueDbName('never')]);
    expect(r.code).toBe(2);
    const line = errorLine(r.stderr);
    expect(line).toContain('the repository holds backups of 4 databases; say which with --db');
    const listed = /\(databases: (.*)\)$/.exec(line)![1]!;
    expect(JSON.parse(`[${listed}]`)).toEqual([...names].sort());
  });
});

describe('status', () => {
  it('aligns its columns', async () => {
    const repo = f.path('status');
    const short = await createDatabase(pg, uniqueDbName('s'));
    const long = await createDatabase(pg, uniqueDbName('a_much_longer_database_name'));
    try {
      for (const d of [short, long]) expect((await f.run(['backup', '--to', repo, '--db', d, '--recipient', f.recipient])).code).toBe(0);
      const st = await f.run(['status', '--from', repo, '--db', short, '--db', long, '--db', 'x']);
      expect(st.code).toBe(7); // x has no backup
      const lines = st.stdout.trimEnd().split('\n');
      expect(lines).toHaveLength(3);
      const at = (re: RegExp): number[] => lines.slice(0, 2).map((l) => l.search(re));
      // Database, id, tier, age, size and restore time each start at the same column in every row.
      for (const re of [/(?<=\s)(s|a_much)_/, /\d{8}T\d{6}Z-/, /\smanual|\sdaily|\smonthly|\sweekly/, /\d+s old/, /(?<=\s)(\d+ B|[\d.]+ KiB) /, /restore time unknown \(no drill\)$/]) {
        const cols = at(re);
        expect(cols[0], `${re} in\n${st.stdout}`).toBeGreaterThan(0);
        expect(cols[0], `${re} in\n${st.stdout}`).toBe(cols[1]);
      }
      expect(lines[2]).toMatch(/^STALE +x +no completed backup$/);
      expect(lines[2]!.indexOf('x ')).toBe(lines[0]!.search(/(?<=\s)(s|a_much)_/));
    } finally {
      await dropDatabase(pg, short);
      await dropDatabase(pg, long);
    }
  });
});
