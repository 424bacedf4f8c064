/**
 * Issue 12, point 4 and 5: the kind of a backup in the catalog. `latest` means the newest FULL
 * backup unless `--kind` says otherwise; `drill` and `status` consider full backups only; tiers
 * are chosen among backups of the same kind; `list` shows the kind.
 */
import * as fsp from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { dataFingerprint, dropDatabase, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'kinds', db: { fixture: 'vault', prefix: 'kinds' } });
const pg = f.pg;

const backup = (repo: string, ...extra: string[]): Promise<BackupManifest> => f.backup(repo, f.db, extra);

describe('kinds of backup in the catalog', () => {
  it('tiers are chosen among backups of the same kind', async () => {
    const repo = f.path('tiers');
    expect((await backup(repo, '--schema-only')).tier).toBe('monthly');
    // The first full backup of the month is monthly, though a schema-only one came first.
    expect((await backup(repo)).tier).toBe('monthly');
    expect((await backup(repo)).tier).toBe('daily');
    expect((await backup(repo, '--data-only')).tier).toBe('daily');
  });

  it('latest is the newest full backup: restore and drill after a newer schema-only backup restore the data; --kind picks another kind', async () => {
    const repo = f.path('latest');
    const full = await backup(repo);
    const schemaOnly = await backup(repo, '--schema-only');
    await backup(repo, '--data-only');

    const target = uniqueDbName('kinds_r');
    const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target, '--smoke', 'SELECT COUNT(*) FROM vault_status;']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(full.id);
    expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, f.db));
    await dropDatabase(pg, target);

    const d = await f.run(['drill', '--from', repo, '--identity', f.identityFile]);
    expect(d.code, d.stderr).toBe(0);
    const drill = JSON.parse(d.stdout) as { ok: boolean; backupId: string; rows: Array<{ rows: number }> };
    expect(drill.backupId).toBe(full.id);
    expect(drill.rows.some((x) => x.rows > 0)).toBe(true);

    const s = await f.run(['restore', '--from', repo, '--kind', 'schema-only', '--identity', f.identityFile, '--target-db', `${target}_s`]);
    expect(s.code, s.stderr).toBe(0);
    expect(s.stderr).toContain(schemaOnly.id);
    expect((await pg.psql('SELECT count(*) FROM vault_status', `${target}_s`)).trim()).toBe('0');
    await dropDatabase(pg, `${target}_s`);

    const dataOnly = await f.run(['restore', '--from', repo, '--kind', 'data-only', '--identity', f.identityFile, '--target-db', `${target}_d`]);
    expect(dataOnly.code).toBe(2);
    expect(errorLine(dataOnly.stderr)).toMatch(/is data-only/);

    const bad = await f.run(['restore', '--from', repo, '--kind', 'everything', '--identity', f.identityFile, '--target-db', `${target}_x`]);
    expect(bad.code).toBe(2);
    expect(errorLine(bad.stderr)).toMatch(/--kind "everything": expected full, schema-only or data-only/);
  });

  it('a schema-only backup (plain SQL: nothing for the checks to ask) restores with --sanitize and --smoke', async () => {
    // The checks' psql, connected to the scratch database ahead of time, had nothing to run: it
    // stayed connected until the end, and RENAME failed ("being accessed by other users").
    const repo = f.path('sanitize-plain');
    const schemaOnly = await backup(repo, '--schema-only');
    const mask = f.path('sanitize-plain.sql');
    await fsp.writeFile(mask, "COMMENT ON TABLE vault_status IS 'sanitized';\n");
    const target = uniqueDbName('kinds_san');
    f.dropAtEnd(target);
    const r = await f.run(['restore', '--from', repo, '--kind', 'schema-only', '--identity', f.identityFile, '--target-db', target, '--sanitize', mask, '--smoke', 'SELECT COUNT(*) FROM vault_status;', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(schemaOnly.id);
    expect(JSON.parse(r.stdout).checks.sanitized).toBe(mask);
    expect((await pg.psql("SELECT obj_description('vault_status'::regclass, 'pg_class')", target)).trim()).toBe('sanitized');
    expect((await pg.psql(`SELECT count(*) FROM pg_database WHERE datname LIKE '${target}__restoring_%'`)).trim()).toBe('0');

    // A target name that would end a $coffer$ dollar quote, with a quote in it: restored, then replaced (its sessions ended, renamed aside).
    const odd = `${target}_$coffer$'x`;
    f.dropAtEnd(odd);
    for (const extra of [[], ['--replace']]) {
      const o = await f.run(['restore', '--from', repo, '--kind', 'schema-only', '--identity', f.identityFile, '--target-db', odd, ...extra]);
      expect(o.code, o.stderr).toBe(0);
    }
    const names = (await pg.psql(`SELECT datname FROM pg_database WHERE datname LIKE '${target}\\_$coffer$%' ORDER BY 1`)).trim().split('\n');
    expect(names[0]).toBe(odd);
    expect(names).toHaveLength(2);
    f.dropAtEnd(names[1]!);
  });

  it('with only schema-only backups, latest finds no full backup and says how to choose one', async () => {
    const repo = f.path('schema-only');
    await backup(repo, '--schema-only');
    const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', uniqueDbName('kinds_none')]);
    expect(r.code).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/^no completed full backup in /);
    expect(r.stderr).toMatch(/there are 1 backup\(s\) of other kinds: choose one with --backup ID, or --kind schema-only\|data-only/);
    const d = await f.run(['drill', '--from', repo, '--identity', f.identityFile]);
    expect(d.code).toBe(4);
    expect(JSON.parse(d.stdout)).toMatchObject({ ok: false });
  });

  it('list shows the kind; status counts full backups only', async () => {
    const repo = f.path('status');
    await backup(repo);
    await new Promise((r) => setTimeout(r, 2500));
    await backup(repo, '--schema-only');
    const l = await f.run(['list', '--from', repo]);
    expect(l.code, l.stderr).toBe(0);
    const lines = l.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^ID\s+TIME \(UTC\)\s+DATABASE\s+KIND\s+TIER/);
    expect(lines[1]).toMatch(/\sschema-only\s/);
    expect(lines[2]).toMatch(/\sfull\s/);
    // The schema-only backup is fresh, the full one is not: stale.
    const st = await f.run(['status', '--from', repo, '--max-age', '2s', '--json']);
    expect(st.code, st.stderr).toBe(7);
    const fresh = await f.run(['status', '--from', repo, '--max-age', '1h', '--json']);
    expect(fresh.code, fresh.stderr).toBe(0);
    const [row] = JSON.parse(fresh.stdout) as Array<{ id: string }>;
    const full = (JSON.parse((await f.run(['list', '--from', repo, '--json'])).stdout) as Array<{ id: string; kind: string }>).find((x) => x.kind === 'custom')!;
    expect(row!.id).toBe(full.id);
  });
});

describe('globals as superuser (issue 12, point 3)', () => {
  it('role passwords are stored and come back with --with-globals', async () => {
    const role = uniqueDbName('pw_role');
    await pg.psql(`CREATE ROLE ${role} LOGIN PASSWORD 'correct horse battery';`);
    const before = (await pg.psql(`SELECT rolpassword FROM pg_authid WHERE rolname = '${role}'`)).trim();
    expect(before).toMatch(/^SCRAM-SHA-256\$/);
    const repo = f.path('globals');
    await backup(repo, '--globals');
    await pg.psql(`DROP ROLE ${role};`);
    const target = uniqueDbName('globals_r');
    const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target, '--with-globals']);
    expect(r.code, r.stderr).toBe(0);
    try {
      expect((await pg.psql(`SELECT rolpassword FROM pg_authid WHERE rolname = '${role}'`)).trim()).toBe(before);
    } finally {
      await dropDatabase(pg, target);
      await pg.psql(`DROP ROLE IF EXISTS ${role};`);
    }
  });
});
