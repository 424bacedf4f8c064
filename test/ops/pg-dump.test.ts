/**
 * Issue 5, item 9: pg_dump in the real world — version check through a wrapper, a wrapper used
 * for the dump and recorded in the manifest, schema-only/data-only round trips, excluded table
 * data, several databases per run (one failing), --all-databases, and --globals into a fresh
 * cluster.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { startThrowawayCluster, type ThrowawayCluster } from '../../src/demo/throwaway-cluster.js';
import { baseEnv, errorLine, runCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { createDatabase, dataFingerprint, dropDatabase, quoteIdent, schemaDump, uniqueDbName } from '../harness/pg.js';
import { writeDumpWrapper } from './helpers.js';

const f = useFixture({ name: 'pgdump-test', db: 'vault' });
const pg = f.pg;

function backupArgs(repo: string, ...more: string[]): string[] {
  return ['backup', '--to', repo, '--recipient', f.recipient, '--lock-dir', f.path('locks'), '--json', ...more];
}

function manifests(stdout: string): BackupManifest[] {
  return JSON.parse(stdout) as BackupManifest[];
}

async function listed(repo: string, e = f.env()): Promise<Array<{ database: string; kind: string }>> {
  const r = await runCoffer(['list', '--from', repo, '--json'], { env: e });
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Array<{ database: string; kind: string }>;
}

describe('pg_dump wrappers', () => {
  it('a pg_dump older than the server fails with both versions and the fix (exit 3), writing nothing', async () => {
    const repo = f.path('repo-old');
    const w = await writeDumpWrapper(f.path('w-old'), pg.binDir, { version: 'pg_dump (PostgreSQL) 13.0' });
    const r = await runCoffer(backupArgs(repo, '--db', f.db, '--pg-dump-command', w.command), { env: f.env() });
    expect(r.code, r.stderr).toBe(3);
    const line = errorLine(r.stderr);
    expect(line).toMatch(/^pg_dump 13 is older than the server \(PostgreSQL 15\.\d+.*\); pg_dump must be at least as new as the server \[pg_dump \(PostgreSQL\) 13\.0\]/);
    expect(line).toContain('--pg-bin /usr/lib/postgresql/15/bin');
    expect(line).toContain('--pg-dump-command');
    expect(fs.existsSync(w.calls)).toBe(false);
    expect(fs.existsSync(repo) ? await listed(repo) : []).toEqual([]);
    // Nothing stored at all, not only no manifest: no object, no temporary file.
    expect(fs.existsSync(repo) ? (await fsp.readdir(repo, { recursive: true })).filter((f) => fs.statSync(path.join(repo, String(f))).isFile()) : []).toEqual([]);
  });

  it('--pg-dump-command runs the dump through the wrapper and is recorded in the manifest', async () => {
    const repo = f.path('repo-wrapper');
    const w = await writeDumpWrapper(f.path('w-ok'), pg.binDir);
    const r = await runCoffer(backupArgs(repo, '--db', f.db, '--pg-dump-command', w.command), { env: f.env() });
    expect(r.code, r.stderr).toBe(0);
    const [m] = manifests(r.stdout);
    expect(m!.postgres.pgDumpCommand).toEqual([w.command]);
    const calls = (await fsp.readFile(w.calls, 'utf8')).trim().split('\n');
    expect(calls).toHaveLength(1);
    expect(calls[0]).toContain('--format=custom');
    expect(calls[0]).toContain(`dbname='${f.db}'`);
  });
});

describe('dump variants round trip through restore', () => {
  it('--schema-only restores with coffer restore; --data-only loads into it with --output + psql', async () => {
    const repo = f.path('repo-variants');
    const s = await runCoffer(backupArgs(repo, '--db', f.db, '--schema-only'), { env: f.env() });
    expect(s.code, s.stderr).toBe(0);
    const d = await runCoffer(backupArgs(repo, '--db', f.db, '--data-only'), { env: f.env() });
    expect(d.code, d.stderr).toBe(0);
    const [schemaM] = manifests(s.stdout);
    const [dataM] = manifests(d.stdout);
    expect(schemaM!.kind).toBe('schema-only');
    expect(dataM!.kind).toBe('data-only');
    expect(dataM!.manualRestore).toContain('psql -v ON_ERROR_STOP=1');

    const target = uniqueDbName('variants');
    f.dropAtEnd(target);
    const rs = await f.run(['restore', '--from', repo, '--db', f.db, '--backup', schemaM!.id, '--identity', f.identityFile, '--target-db', target]);
    expect(rs.code, rs.stderr).toBe(0);
    expect(await schemaDump(pg, target)).toBe(await schemaDump(pg, f.db));
    expect(Object.values(await dataFingerprint(pg, target)).every((t) => t.rows === 0)).toBe(true);

    // A data-only backup cannot make a database by itself: refused up front, with the way to do it.
    const other = uniqueDbName('dataonly');
    const refused = await f.run(['restore', '--from', repo, '--db', f.db, '--backup', dataM!.id, '--identity', f.identityFile, '--target-db', other]);
    expect(refused.code).toBe(2);
    expect(errorLine(refused.stderr)).toContain('is data-only');
    expect(errorLine(refused.stderr)).toContain('--into-existing DB');

    const sqlFile = f.path('data.sql');
    const out = await f.run(['restore', '--from', repo, '--db', f.db, '--backup', dataM!.id, '--identity', f.identityFile, '--output', sqlFile]);
    expect(out.code, out.stderr).toBe(0);
    const load = await execa(path.join(pg.binDir, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-1', '-d', target, '-f', sqlFile], {
      env: { ...process.env, ...pg.env() },
      reject: false,
    });
    expect(load.exitCode, String(load.stderr)).toBe(0);
    expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, f.db));
  });

  it('--exclude-table-data keeps the table but not its rows', async () => {
    const db = await createDatabase(pg);
    f.dropAtEnd(db);
    await pg.psql('CREATE TABLE keep_me (id int PRIMARY KEY); CREATE TABLE audit_log (id int, note text); INSERT INTO keep_me SELECT generate_series(1, 50); INSERT INTO audit_log SELECT g, $$x$$ FROM generate_series(1, 70) g;', db);
    const repo = f.path('repo-exclude');
    const r = await runCoffer(backupArgs(repo, '--db', db, '--exclude-table-data', 'audit_*'), { env: f.env() });
    expect(r.code, r.stderr).toBe(0);
    const target = uniqueDbName('excluded');
    f.dropAtEnd(target);
    const rs = await f.run(['restore', '--from', repo, '--db', db, '--identity', f.identityFile, '--target-db', target]);
    expect(rs.code, rs.stderr).toBe(0);
    expect(await pg.psql('SELECT (SELECT count(*) FROM keep_me) || $$/$$ || (SELECT count(*) FROM audit_log);', target)).toBe('50/0');
  });
});

describe('several databases per run', () => {
  it('--db a --db missing --db b: each its own backup, the failure does not stop the others, exit non-zero', async () => {
    const [a, b] = await Promise.all([createDatabase(pg, undefined, 'vault'), createDatabase(pg, undefined, 'vault')]);
    for (const d of [a!, b!]) f.dropAtEnd(d);
    const missing = uniqueDbName('missing');
    const repo = f.path('repo-multi');
    const r = await runCoffer(backupArgs(repo, '--db', a!, '--db', missing, '--db', b!), { env: f.env() });
    expect(r.code).toBe(3);
    expect(errorLine(r.stderr)).toContain(`1 of 3 database backups failed: "${missing}"`);
    expect(manifests(r.stdout).map((m) => m.database)).toEqual([a, b]);
    expect((await listed(repo)).map((e) => e.database).sort()).toEqual([a, b].sort());
  });

  it('--parallel 2: two dumps at once, each with its own lock and manifest; a failure does not stop the others', async () => {
    const dbs = await Promise.all([1, 2, 3].map(() => createDatabase(pg, undefined, 'vault')));
    for (const d of dbs) f.dropAtEnd(d);
    const [a, b, c] = dbs as [string, string, string];
    const missing = uniqueDbName('missing');
    // A pg_dump that waits until a second dump has started: with one database at a time it
    // would wait in vain (and fail after 30 s); with two at once, both go on.
    const dir = f.path('w-parallel');
    await fsp.mkdir(dir, { recursive: true });
    const wrapper = path.join(dir, 'pg_dump-barrier.sh');
    await fsp.writeFile(
      wrapper,
      `#!/bin/bash
if [ "$1" = "--version" ]; then exec '${path.join(pg.binDir, 'pg_dump')}' --version; fi
touch '${dir}/started.'$$
for i in $(seq 300); do [ "$(ls '${dir}' | grep -c '^started\.')" -ge 2 ] && exec '${path.join(pg.binDir, 'pg_dump')}' "$@"; sleep 0.1; done
echo "no second dump started within 30 s" >&2; exit 1
`,
      { mode: 0o755 },
    );
    const repo = f.path('repo-parallel');
    const locks = f.path('locks-parallel');
    const r = await runCoffer(['backup', '--to', repo, '--recipient', f.recipient, '--lock-dir', locks, '--json', '--parallel', '2', '--pg-dump-command', wrapper, '--db', a, '--db', missing, '--db', b, '--db', c], { env: f.env() });
    expect(r.code, r.stderr).toBe(3);
    expect(errorLine(r.stderr)).toContain(`1 of 4 database backups failed: "${missing}"`);
    // Reported in the order named, whatever order they finished in.
    expect(manifests(r.stdout).map((m) => m.database)).toEqual([a, b, c]);
    const entries = await listed(repo);
    expect(entries.map((e) => e.database).sort()).toEqual([a, b, c].sort());
    for (const d of [a, b, c]) {
      const target = uniqueDbName('par_r');
      f.dropAtEnd(target);
      const restored = await runCoffer(['restore', '--from', repo, '--db', d, '--identity', f.identityFile, '--target-db', target], { env: f.env() });
      expect(restored.code, restored.stderr).toBe(0);
      expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, d));
    }
    // Every lock taken (and the one taken ahead for the next database) was released.
    expect((await fsp.readdir(locks)).filter((n) => !n.startsWith('.'))).toEqual([]);
  });
});

describe('on a second cluster', () => {
  let fresh: ThrowawayCluster;
  beforeAll(async () => {
    fresh = await startThrowawayCluster({ binDir: pg.binDir });
  });
  afterAll(async () => {
    await fresh?.stop();
  });
  const freshEnv = (): Record<string, string> => baseEnv({ ...fresh.env(), COFFER_PG_BIN: pg.binDir });

  it('--all-databases: every connectable non-template database; postgres only when it holds user objects', async () => {
    await fresh.psql('CREATE DATABASE app_one; CREATE DATABASE "App Two"; CREATE DATABASE closed; ALTER DATABASE closed WITH ALLOW_CONNECTIONS false;');
    const repo = f.path('repo-all');
    const r1 = await runCoffer(backupArgs(repo, '--all-databases'), { env: freshEnv() });
    expect(r1.code, r1.stderr).toBe(0);
    expect(manifests(r1.stdout).map((m) => m.database)).toEqual(['App Two', 'app_one']);

    // Not only tables: anything of the user's in postgres makes it worth a backup.
    const kinds: Array<[string, string, string]> = [
      ['a large object', "SELECT lo_from_bytea(0, 'the only copy');", 'SELECT lo_unlink(oid) FROM pg_largeobject_metadata;'],
      ['a function', 'CREATE FUNCTION public.answer() RETURNS int LANGUAGE sql AS $$ SELECT 42 $$;', 'DROP FUNCTION public.answer();'],
      ['a schema', 'CREATE SCHEMA ops;', 'DROP SCHEMA ops;'],
      ['an enum type', "CREATE TYPE public.mood AS ENUM ('ok', 'not ok');", 'DROP TYPE public.mood;'],
    ];
    for (const [what, create, drop] of kinds) {
      await fresh.psql(create, 'postgres');
      const r = await runCoffer(backupArgs(repo, '--all-databases'), { env: freshEnv() });
      await fresh.psql(drop, 'postgres');
      expect(r.code, r.stderr).toBe(0);
      expect(manifests(r.stdout).map((m) => m.database), what).toEqual(['App Two', 'app_one', 'postgres']);
    }

    await fresh.psql('CREATE TABLE settings (k text PRIMARY KEY, v text);', 'postgres');
    const r2 = await runCoffer(backupArgs(repo, '--all-databases'), { env: freshEnv() });
    expect(r2.code, r2.stderr).toBe(0);
    expect(manifests(r2.stdout).map((m) => m.database)).toEqual(['App Two', 'app_one', 'postgres']);

    const both = await runCoffer(backupArgs(repo, '--all-databases', '--db', 'app_one'), { env: freshEnv() });
    expect(both.code).toBe(2);
  });

  it('--globals, restored --with-globals into a fresh cluster, recreates the roles', async () => {
    const role = uniqueDbName('coffer_role');
    const db = uniqueDbName('owned');
    await pg.psql(`CREATE ROLE ${quoteIdent(role)} LOGIN CONNECTION LIMIT 7;`);
    try {
      await pg.psql(`CREATE DATABASE ${quoteIdent(db)} OWNER ${quoteIdent(role)};`);
      f.dropAtEnd(db);
      await pg.psql(`SET ROLE ${quoteIdent(role)}; CREATE TABLE ledger (id int PRIMARY KEY, amount numeric); INSERT INTO ledger VALUES (1, 10.5), (2, 20);`, db);
      const repo = f.path('repo-globals');
      const b = await runCoffer(backupArgs(repo, '--db', db, '--globals'), { env: f.env() });
      expect(b.code, b.stderr).toBe(0);
      expect(manifests(b.stdout)[0]!.globals).not.toBeNull();

      // Without the roles the restore into the fresh cluster fails, naming the role.
      const without = await runCoffer(['restore', '--from', repo, '--db', db, '--identity', f.identityFile, '--target-db', 'no_globals'], { env: freshEnv() });
      expect(without.code).toBe(3);
      expect(errorLine(without.stderr)).toContain(`role "${role}"`);

      const r = await runCoffer(['restore', '--from', repo, '--db', db, '--identity', f.identityFile, '--target-db', 'restored', '--with-globals'], { env: freshEnv() });
      expect(r.code, r.stderr).toBe(0);
      expect(await fresh.psql(`SELECT rolcanlogin || '/' || rolconnlimit FROM pg_roles WHERE rolname = '${role}';`)).toBe('true/7');
      expect(await fresh.psql(`SELECT tableowner FROM pg_tables WHERE tablename = 'ledger';`, 'restored')).toBe(role);
      expect(await fresh.psql('SELECT sum(amount) FROM ledger;', 'restored')).toBe('30.5');
    } finally {
      await dropDatabase(pg, db).catch(() => undefined);
      await pg.psql(`DROP ROLE IF EXISTS ${quoteIdent(role)};`).catch(() => undefined);
    }
  });
});
