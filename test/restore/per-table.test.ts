/**
 * Issue 18, item 1: what a restore asks the server after the data does not grow with the number
 * of tables. A restore of 3 tables and one of 400 run psql the same number of times, and send it
 * (nearly) the same SQL; the summary still counts every table, names the largest by their data,
 * with their row counts, and the check still catches a missing table among hundreds.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { tableKey } from '../../src/pg/inspect.js';
import { missingTables } from '../../src/pipeline/restore.js';
import { errorLine, signalIfRunning } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { childEnv, createDatabase, listDatabases, uniqueDbName } from '../harness/pg.js';

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

  it('start pg_restore while the scratch database is created: it reads the table of contents, and connects once the database exists', async () => {
    // A --psql-command that holds CREATE DATABASE back and notes when it sent it; a --pg-restore-command that notes when it started.
    // pg_restore reads a table of contents in milliseconds: had it been given it whole, it would
    // have connected before the database existed, and failed.
    const dir = f.path('toc-gate');
    await fsp.mkdir(dir, { recursive: true });
    const stamp = (name: string): string => path.join(dir, name);
    for (const [db, delay] of [[small, '0'], [many, '0'], [small, '0.4'], [many, '1.5']] as const) {
      await fsp.rm(stamp('restore-started'), { force: true });
      await fsp.rm(stamp('create-sent'), { force: true });
      const psqlCmd = path.join(dir, `slow-create-${delay}.sh`);
      await fsp.writeFile(
        psqlCmd,
        `#!/bin/bash\nexec '${path.join(pg.binDir, 'psql')}' "$@" < <(while IFS= read -r line || [ -n "$line" ]; do\n  case "$line" in *'CREATE DATABASE'*) sleep ${delay}; date +%s%N > '${stamp('create-sent')}';; esac\n  printf '%s\\n' "$line"\ndone)\n`,
        { mode: 0o755 },
      );
      const restoreCmd = path.join(dir, 'pg-restore-stamp.sh');
      await fsp.writeFile(restoreCmd, `#!/bin/bash\n[ "$1" = --version ] || date +%s%N > '${stamp('restore-started')}'\nexec '${path.join(pg.binDir, 'pg_restore')}' "$@"\n`, { mode: 0o755 });
      const target = uniqueDbName('toc_gate_r');
      f.dropAtEnd(target);
      const r = await f.run(['restore', '--from', f.path('repo'), '--db', db, '--identity', f.identityFile, '--target-db', target, '--psql-command', psqlCmd, '--pg-restore-command', restoreCmd, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).tables, `${db} ${delay}`).toBe(db === many ? MANY : 3);
      const started = BigInt((await fsp.readFile(stamp('restore-started'), 'utf8')).trim());
      const sent = BigInt((await fsp.readFile(stamp('create-sent'), 'utf8')).trim());
      // With a delay, CREATE DATABASE is sent well after coffer started pg_restore. Without one,
      // the two wrappers' stamps race (coffer starts psql first): only the outcome is checked.
      if (delay !== '0') expect(started < sent, `${db} ${delay}: pg_restore started before CREATE DATABASE was sent`).toBe(true);
      expect(await pg.psql("SELECT count(*) FROM pg_class WHERE relname = 'aardvark'", target)).toBe(db === many ? '1' : '0');
    }
  });

  it('fail as the creation of the scratch database failed, with pg_restore waiting for it (at swept points): nothing left, no process left', { timeout: 300_000 }, async () => {
    const dir = f.path('toc-gate-fail');
    await fsp.mkdir(dir, { recursive: true });
    // CREATE DATABASE replaced by a failing statement, after pg_restore started and read the
    // table of contents (or while it still reads it: no delay, the small archive).
    for (const [db, delay] of [[many, '0.5'], [many, '0'], [small, '0'], [many, '0.05']] as const) {
      const psqlCmd = path.join(dir, `failing-create-${delay}.sh`);
      await fsp.writeFile(
        psqlCmd,
        `#!/bin/bash\nexec '${path.join(pg.binDir, 'psql')}' "$@" < <(while IFS= read -r line || [ -n "$line" ]; do\n  case "$line" in *'CREATE DATABASE'*) sleep ${delay}; line='SELECT 1/0;';; esac\n  printf '%s\\n' "$line"\ndone)\n`,
        { mode: 0o755 },
      );
      const target = uniqueDbName('toc_gate_fail');
      f.dropAtEnd(target);
      const r = await f.run(['restore', '--from', f.path('repo'), '--db', db, '--identity', f.identityFile, '--target-db', target, '--psql-command', psqlCmd]);
      const what = `${db === many ? 'many' : 'small'}, ${delay} s: ${r.stderr.slice(-800)}`;
      expect(r.code, what).toBe(3);
      expect(errorLine(r.stderr), what).toMatch(/^create database "toc_gate_fail[^"]*__restoring_[0-9a-f]{8}".*division by zero/);
      expect((await listDatabases(pg)).filter((d) => d.startsWith(target)), what).toEqual([]);
      const ps = await execa('ps', ['-eo', 'args'], { reject: false });
      expect(ps.stdout, what).not.toContain(`${target}__restoring_`);
    }
    // A wrapper that pipes into psql (`filter | psql`): the filter reads on after psql stopped at
    // the error, so the wrapper ends only with its input. Each statement has a psql of its own
    // (and its input ended), not a session kept open: the run does not wait for ever.
    const piped = path.join(dir, 'piped-failing-create.sh');
    await fsp.writeFile(piped, `#!/bin/bash\nsed -u 's/CREATE DATABASE.*/SELECT 1\\/0;/' | '${path.join(pg.binDir, 'psql')}' "$@"\n`, { mode: 0o755 });
    {
      const target = uniqueDbName('toc_gate_fail');
      f.dropAtEnd(target);
      const r = await f.run(['--timeout', '2m', 'restore', '--from', f.path('repo'), '--db', many, '--identity', f.identityFile, '--target-db', target, '--psql-command', piped]);
      const what = `piped wrapper: ${r.stderr.slice(-800)}`;
      expect(r.code, what).toBe(3);
      expect(errorLine(r.stderr), what).toMatch(/^create database "toc_gate_fail[^"]*__restoring_[0-9a-f]{8}".*division by zero/);
      expect((await listDatabases(pg)).filter((d) => d.startsWith(target)), what).toEqual([]);
      const ps = await execa('ps', ['-eo', 'args'], { reject: false });
      expect(ps.stdout, what).not.toContain(`${target}__restoring_`);
    }
  });

  it('stopped by SIGTERM while pg_restore waits for the scratch database (before CREATE DATABASE is sent, while it runs, just after): exit 143, nothing left, no process left', { timeout: 300_000 }, async () => {
    const dir = f.path('toc-gate-stop');
    await fsp.mkdir(dir, { recursive: true });
    const seen = path.join(dir, 'create-seen');
    // The filter notes when the CREATE DATABASE line reaches it, holds it 0.4 s, then passes it on.
    const psqlCmd = path.join(dir, 'slow-create.sh');
    await fsp.writeFile(
      psqlCmd,
      `#!/bin/bash\nexec '${path.join(pg.binDir, 'psql')}' "$@" < <(while IFS= read -r line || [ -n "$line" ]; do\n  case "$line" in *'CREATE DATABASE'*) touch '${seen}'; sleep 0.4;; esac\n  printf '%s\\n' "$line"\ndone)\n`,
      { mode: 0o755 },
    );
    const { startCoffer } = await import('../harness/cli.js');
    // Milliseconds after the line was seen: held back; about to be sent; CREATE under way; done or nearly.
    for (const after of [0, 350, 430, 520, 700]) {
      await fsp.rm(seen, { force: true });
      const target = uniqueDbName('toc_gate_stop');
      f.dropAtEnd(target);
      const child = startCoffer(['restore', '--from', f.path('repo'), '--db', many, '--identity', f.identityFile, '--target-db', target, '--psql-command', psqlCmd], { env: f.env(), forceKillAfterMs: 60_000 });
      const until = Date.now() + 60_000;
      while (!(await fsp.stat(seen).catch(() => undefined)) && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
      expect(await fsp.stat(seen).catch(() => undefined), 'CREATE DATABASE reached the filter').toBeDefined();
      await new Promise((r) => setTimeout(r, after));
      signalIfRunning(child.pid!, 'SIGTERM');
      const r = await child;
      const what = `SIGTERM ${after} ms after CREATE DATABASE reached the filter: ${String(r.stderr).slice(-800)}`;
      if (r.exitCode === 0) {
        // Only when the stop came after the rename (not at these points with 400 tables): a complete restore.
        expect(await pg.psql("SELECT count(*) FROM pg_class WHERE relname = 'aardvark'", target), what).toBe('1');
      } else {
        expect(r.exitCode, what).toBe(143);
        expect(errorLine(String(r.stderr)), what).toMatch(/stopped by SIGTERM/);
        expect((await listDatabases(pg)).filter((d) => d.startsWith(target)), what).toEqual([]);
      }
      expect((await listDatabases(pg)).filter((d) => d.startsWith(`${target}__restoring_`)), what).toEqual([]);
      const ps = await execa('ps', ['-eo', 'args'], { reject: false });
      expect(ps.stdout, what).not.toContain(`${target}__restoring_`);
    }
  });

  it('stopped by SIGTERM at swept points around CREATE DATABASE in the shared psql session (no wrapper): exit 143, no scratch database left, ever', { timeout: 300_000 }, async () => {
    const { startCoffer } = await import('../harness/cli.js');
    // Every 30 ms from "backup opened" on: before the creation, while the server runs it (the
    // session lets it finish, then the run drops it), and after it.
    let during = 0;
    for (let i = 0; i < 12; i++) {
      const target = uniqueDbName('stop_create');
      f.dropAtEnd(target);
      const child = startCoffer(['restore', '--from', f.path('repo'), '--db', small, '--identity', f.identityFile, '--target-db', target], { env: f.env(), forceKillAfterMs: 60_000 });
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr += String(d)));
      const until = Date.now() + 60_000;
      while (!stderr.includes('backup opened') && Date.now() < until) await new Promise((r) => setTimeout(r, 2));
      expect(stderr).toContain('backup opened');
      await new Promise((r) => setTimeout(r, i * 30));
      signalIfRunning(child.pid!, 'SIGTERM');
      const r = await child;
      const what = `SIGTERM ${i * 30} ms after "backup opened": ${stderr.slice(-1000)}`;
      const stopAt = stderr.indexOf('received SIGTERM');
      const createdAt = stderr.indexOf('restoring into a scratch database');
      if (stopAt >= 0 && createdAt > stopAt) during++;
      if (r.exitCode === 0) expect(await pg.psql('SELECT count(*) FROM c', target), what).toBe('300');
      else {
        expect(r.exitCode, what).toBe(143);
        expect((await listDatabases(pg)).filter((d) => d.startsWith(target)), what).toEqual([]);
      }
      expect((await listDatabases(pg)).filter((d) => d.startsWith(`${target}__restoring_`)), what).toEqual([]);
    }
    console.log(`stops that came while CREATE DATABASE ran: ${during} of 12`);
  });

  it('count the rows of the summary in the archive (no scan of the restored tables); the server counts them after --sanitize, or when the archive\'s data is compressed', async () => {
    // No scan after the restore: a table without an index that was counted would show a
    // sequential scan (the statistics of the scratch database's sessions are written before the
    // rename, which waits for those sessions to end). After --sanitize, the server counts.
    const seqScans = (db: string): Promise<string> => pg.psql(`SELECT string_agg(relname || '=' || seq_scan, ',' ORDER BY relname) FROM pg_stat_user_tables WHERE relname IN ('aardvark', 'Zebra Wide')`, db);
    const plain = uniqueDbName('rows_plain');
    f.dropAtEnd(plain);
    const p = await f.run(['restore', '--from', f.path('repo'), '--db', many, '--identity', f.identityFile, '--target-db', plain, '--json']);
    expect(p.code, p.stderr).toBe(0);
    expect((JSON.parse(p.stdout) as { largestTables: Array<{ table: string; rows: number }> }).largestTables.slice(0, 2)).toEqual([
      { table: 'public."Zebra Wide"', rows: 900 },
      { table: 'public.aardvark', rows: 2500 },
    ]);
    expect(await seqScans(plain)).toBe('Zebra Wide=0,aardvark=0');
    const mask = f.path('delete-some.sql');
    await fsp.writeFile(mask, 'DELETE FROM aardvark WHERE id <= 100;\n');
    const sanitized = uniqueDbName('rows_sanitized');
    f.dropAtEnd(sanitized);
    const r = await f.run(['restore', '--from', f.path('repo'), '--db', many, '--identity', f.identityFile, '--target-db', sanitized, '--sanitize', mask, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { largestTables: Array<{ table: string; rows: number }> }).largestTables.slice(0, 2)).toEqual([
      { table: 'public."Zebra Wide"', rows: 900 },
      { table: 'public.aardvark', rows: 2400 },
    ]);
    expect(await seqScans(sanitized)).toMatch(/^Zebra Wide=[1-9]\d*,aardvark=[1-9]\d*$/);
    // pg_dump's own compression (gzip inside the archive): the server counts.
    const dump = f.path('gzip-inside.dump');
    const file = `${dump}.age`;
    await execa(path.join(pg.binDir, 'pg_dump'), ['-Fc', '-Z6', '-d', many, '-f', dump], { env: childEnv(pg), extendEnv: false });
    await execa('age', ['-r', f.recipient, '-o', file, dump]);
    const fromFile = uniqueDbName('rows_gzip');
    f.dropAtEnd(fromFile);
    const g = await f.run(['restore', '--file', file, '--identity', f.identityFile, '--target-db', fromFile, '--json']);
    expect(g.code, g.stderr).toBe(0);
    // Ranked by their compressed data, so in another order.
    expect((JSON.parse(g.stdout) as { largestTables: Array<{ table: string; rows: number }> }).largestTables).toEqual(
      expect.arrayContaining([
        { table: 'public."Zebra Wide"', rows: 900 },
        { table: 'public.aardvark', rows: 2500 },
      ]),
    );
  });

  it('load the scratch database with asynchronous commits, keeping the connection\'s own options, and rename it with a synchronous commit', async () => {
    // A --pg-restore-command that asks the server, through the connection it was given, what the
    // session's settings are, then runs pg_restore. The test clusters commit asynchronously by
    // default: PGOPTIONS turns it on, as on a production server, and sets one more option.
    // pg_restore starts while the scratch database is being created (it reads the table of
    // contents first): the probe waits until it can connect.
    const dir = f.path('async-commit');
    await fsp.mkdir(dir, { recursive: true });
    const seen = path.join(dir, 'settings');
    const command = path.join(dir, 'pg-restore-probe.sh');
    await fsp.writeFile(
      command,
      `#!/bin/bash\nprev=''\nfor a in "$@"; do [ "$prev" = -d ] && ci="$a"; prev="$a"; done\n[ -n "$ci" ] && for i in $(seq 100); do '${path.join(pg.binDir, 'psql')}' -X -A -t -d "$ci" -c 'SHOW synchronous_commit' -c 'SHOW work_mem' </dev/null > '${seen}.try' 2>/dev/null && break; sleep 0.1; done\n[ -n "$ci" ] && cat '${seen}.try' >> '${seen}'\nexec '${path.join(pg.binDir, 'pg_restore')}' "$@"\n`,
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
