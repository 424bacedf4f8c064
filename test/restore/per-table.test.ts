/**
 * Issue 18, item 1: what a restore asks the server after the data does not grow with the number
 * of tables. A restore of 3 tables and one of 400 run psql the same number of times, and send it
 * (nearly) the same SQL; the summary still counts every table, names the largest by their data,
 * with their row counts, and the check still catches a missing table among hundreds.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tableKey } from '../../src/pg/inspect.js';
import { missingTables } from '../../src/pipeline/restore.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { createDatabase, listDatabases, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'per-table' });
const pg = f.pg;
const MANY = 400;
let small: string;
let many: string;

/** A `--psql-command` that counts its calls and keeps the SQL it was given on stdin. */
async function psqlRecorder(dir: string): Promise<{ command: string; calls: () => Promise<number>; sql: () => Promise<string> }> {
  await fsp.mkdir(dir, { recursive: true });
  const command = path.join(dir, 'psql-recorder.sh');
  const calls = path.join(dir, 'calls');
  const sql = path.join(dir, 'sql');
  await fsp.writeFile(command, `#!/bin/bash\nset -o pipefail\necho call >> '${calls}'\ntee -a '${sql}' | '${path.join(pg.binDir, 'psql')}' "$@"\n`, { mode: 0o755 });
  return {
    command,
    calls: async () => (await fsp.readFile(calls, 'utf8')).split('\n').filter(Boolean).length,
    sql: async () => await fsp.readFile(sql, 'latin1'),
  };
}

beforeAll(async () => {
  small = await createDatabase(pg, uniqueDbName('few_tables'));
  many = await createDatabase(pg, uniqueDbName('many_tables'));
  f.dropAtEnd(small);
  f.dropAtEnd(many);
  await pg.psql('CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int); CREATE TABLE c (id int, v text); INSERT INTO c SELECT g, md5(g::text) FROM generate_series(1, 300) g;', small);
  const sql: string[] = [];
  for (let i = 0; i < MANY - 2; i++) sql.push(`CREATE TABLE t${i} (id int PRIMARY KEY, v text); INSERT INTO t${i} SELECT g, md5(g::text) FROM generate_series(1, ${1 + (i % 7)}) g;`);
  // The two largest by their data, though not by their number of rows nor their names' order.
  sql.push('CREATE TABLE "Zebra Wide" (id int, v text); INSERT INTO "Zebra Wide" SELECT g, repeat(md5(g::text), 40) FROM generate_series(1, 900) g;');
  sql.push('CREATE TABLE aardvark (id int, v text); INSERT INTO aardvark SELECT g, md5(g::text) FROM generate_series(1, 2500) g;');
  await pg.psql(sql.join('\n'), many);
  for (const db of [small, many]) {
    const r = await f.run(['backup', '--to', f.path('repo'), '--db', db, '--recipient', f.recipient]);
    expect(r.code, r.stderr).toBe(0);
  }
});

describe('the checks and summary after a restore', () => {
  it('ask the server the same number of times for 3 tables as for 400, and about the same SQL', async () => {
    const seen: Array<{ calls: number; sql: string; summary: { tables: number; largestTables: Array<{ table: string; rows: number }> } }> = [];
    for (const db of [small, many]) {
      const rec = await psqlRecorder(f.path(`rec-${db}`));
      const target = uniqueDbName('per_table_r');
      f.dropAtEnd(target);
      const r = await f.run(['restore', '--from', f.path('repo'), '--db', db, '--identity', f.identityFile, '--target-db', target, '--psql-command', rec.command, '--json']);
      expect(r.code, r.stderr).toBe(0);
      seen.push({ calls: await rec.calls(), sql: await rec.sql(), summary: JSON.parse(r.stdout) });
    }
    const [few, lots] = seen as [(typeof seen)[0], (typeof seen)[0]];
    expect(lots.calls).toBe(few.calls);
    // Not a statement per table: the SQL differs by the largest tables' names (five at most, hex-encoded), nothing more.
    expect(Math.abs(lots.sql.length - few.sql.length)).toBeLessThan(600);
    expect(lots.sql).not.toContain('t123');
    expect(few.summary.tables).toBe(3);
    expect(lots.summary.tables).toBe(MANY);
    expect(lots.summary.largestTables.slice(0, 2)).toEqual([
      { table: 'public."Zebra Wide"', rows: 900 },
      { table: 'public.aardvark', rows: 2500 },
    ]);
    expect(lots.summary.largestTables).toHaveLength(5);
    expect(few.summary.largestTables[0]).toEqual({ table: 'public.c', rows: 300 });
    expect(few.summary.largestTables.map((t) => t.table).sort()).toEqual(['public.a', 'public.b', 'public.c']);
  });

  it('still fail a restore whose archive names a table the database lacks, among thousands, names with spaces, tabs and newlines read whole', () => {
    const have = Array.from({ length: 2000 }, (_, i) => tableKey('public', `t${i}`));
    have.push(tableKey('my schema', 'my table'), tableKey('public', 'with space'), tableKey('public', 'tab\tand\nnewline'));
    const toc = [...have, tableKey('public', 't2000'), tableKey('my', 'schema my table'), tableKey('public', 'tab\tand\nnewline')];
    // "my"."schema my table" is another table than "my schema"."my table": the key keeps them apart.
    expect(missingTables(toc, have)).toEqual([tableKey('public', 't2000'), tableKey('my', 'schema my table')]);
    expect(missingTables([tableKey('public', 'with space')], have)).toEqual([]);
  });

  it('load the scratch database with asynchronous commits, keeping the connection\'s own options, and rename it with a synchronous commit', async () => {
    // A --pg-restore-command that asks the server, through the connection it was given, what the
    // session's settings are, then runs pg_restore. The test clusters commit asynchronously by
    // default: PGOPTIONS turns it on, as on a production server, and sets one more option.
    const dir = f.path('async-commit');
    await fsp.mkdir(dir, { recursive: true });
    const seen = path.join(dir, 'settings');
    const command = path.join(dir, 'pg-restore-probe.sh');
    await fsp.writeFile(
      command,
      `#!/bin/bash\nprev=''\nfor a in "$@"; do [ "$prev" = -d ] && ci="$a"; prev="$a"; done\n[ -n "$ci" ] && '${path.join(pg.binDir, 'psql')}' -X -A -t -d "$ci" -c 'SHOW synchronous_commit' -c 'SHOW work_mem' </dev/null >> '${seen}'\nexec '${path.join(pg.binDir, 'pg_restore')}' "$@"\n`,
      { mode: 0o755 },
    );
    for (const jobs of [[], ['--jobs', '2']]) {
      await fsp.rm(seen, { force: true });
      const rec = await psqlRecorder(f.path(`rec-async-${jobs.length}`));
      const target = uniqueDbName('async_commit_r');
      f.dropAtEnd(target);
      const r = await f.run(['restore', '--from', f.path('repo'), '--db', small, '--identity', f.identityFile, '--target-db', target, '--pg-restore-command', command, '--psql-command', rec.command, ...jobs], { PGOPTIONS: '-c synchronous_commit=on -c work_mem=7MB' });
      expect(r.code, r.stderr).toBe(0);
      expect((await fsp.readFile(seen, 'utf8')).trim().split('\n')).toEqual(['off', '7MB']);
      expect(await pg.psql('SELECT count(*) FROM c', target)).toBe('300');
      expect(await rec.sql()).toMatch(/SET synchronous_commit = on;\s*BEGIN;[^]*RENAME TO[^]*COMMIT;/);
    }
  });
});

describe('the table check against the archive', () => {
  // Names as bytes in the archive's encoding, compared byte for byte with what the server has:
  // a space, a tab or a newline in a name, "my schema"."my table" against "my"."schema my table",
  // and non-ASCII names in a UTF8 and a LATIN1 database.
  const names = [
    ['public', 'sp ace'],
    ['public', 'tab\there'],
    ['public', 'new\nline'],
    ['public', 'café'],
    ['my schema', 'my table'],
    ['my', 'schema my table'],
  ] as const;
  const q = (s: string): string => `"${s.replace(/"/g, '""')}"`;

  for (const encoding of ['UTF8', 'LATIN1']) {
    it(`passes for odd names in a ${encoding} database, and fails, leaving nothing, when pg_restore leaves one table out`, async () => {
      const db = uniqueDbName(`odd_names_${encoding.toLowerCase()}`);
      await pg.psql(`CREATE DATABASE ${db} TEMPLATE template0 ENCODING '${encoding}' LOCALE 'C';`);
      f.dropAtEnd(db);
      await pg.psql(`SET client_encoding = 'UTF8'; CREATE SCHEMA "my schema"; CREATE SCHEMA my; ${names.map(([s, t]) => `CREATE TABLE ${q(s)}.${q(t)} (id int); INSERT INTO ${q(s)}.${q(t)} VALUES (1);`).join(' ')}`, db);
      const repo = f.path(`odd-names-${encoding}`);
      const b = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient]);
      expect(b.code, b.stderr).toBe(0);

      const good = uniqueDbName('odd_names_r');
      f.dropAtEnd(good);
      const r = await f.run(['restore', '--from', repo, '--db', db, '--identity', f.identityFile, '--target-db', good, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const summary = JSON.parse(r.stdout) as { tables: number; checks: { tocTables: number; tocTablesPresent: boolean } };
      expect(summary.checks).toMatchObject({ tocTables: names.length, tocTablesPresent: true });
      expect(summary.tables).toBe(names.length);

      // A pg_restore that exits 0 but leaves one table out (dropped after it ran), three names
      // in turn in each database (the non-ASCII one in both), so each odd name is looked for,
      // not only found.
      for (const i of encoding === 'UTF8' ? [2, 3, 5] : [0, 1, 3]) {
        const [schema, table] = names[i]!;
        const dir = f.path(`odd-names-${encoding}-drop-${i}`);
        await fsp.mkdir(dir, { recursive: true });
        const drop = path.join(dir, 'drop.sql');
        await fsp.writeFile(drop, `SET client_encoding = 'UTF8';\nDROP TABLE ${q(schema)}.${q(table)};\n`);
        const command = path.join(dir, 'pg-restore-drops.sh');
        await fsp.writeFile(
          command,
          `#!/bin/bash\nprev=''\nci=''\nfor a in "$@"; do [ "$prev" = -d ] && ci="$a"; prev="$a"; done\n'${path.join(pg.binDir, 'pg_restore')}' "$@" || exit $?\n[ -n "$ci" ] || exit 0\nexec '${path.join(pg.binDir, 'psql')}' -X -q -v ON_ERROR_STOP=1 -d "$ci" -f '${drop}' </dev/null\n`,
          { mode: 0o755 },
        );
        const target = uniqueDbName('odd_names_bad');
        const bad = await f.run(['restore', '--from', repo, '--db', db, '--identity', f.identityFile, '--target-db', target, '--pg-restore-command', command]);
        expect(bad.code, bad.stderr).toBe(5);
        expect(errorLine(bad.stderr)).toContain(`1 table(s) of the backup are missing after the restore, e.g. ${JSON.stringify(`${schema}.${table}`)}`);
        const left = (await listDatabases(pg)).filter((d) => d === target || d.startsWith(`${target}__restoring_`));
        expect(left).toEqual([]);
      }
    });
  }
});
