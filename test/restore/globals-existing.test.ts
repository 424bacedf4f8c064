/**
 * restore --with-globals onto a server that already has roles: pg_dumpall writes `CREATE ROLE r;`
 * then `ALTER ROLE r WITH … PASSWORD '…';`, and the CREATE of an existing role failed while its
 * ALTER still ran (the log said the role was skipped; its password and LOGIN were the backup's).
 * An existing role is left exactly as it is (attributes, password, settings, memberships with
 * other existing roles) and named in one warning; a missing one, even with a hostile name, is
 * created with its password hash, settings, comment and memberships.
 */
import { describe, expect, it } from 'vitest';
import { useFixture } from '../harness/fixture.js';
import { quoteIdent, quoteLiteral, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'globals-existing', db: { fixture: 'vault', prefix: 'globex' } });
const pg = f.pg;

/** What the server says of a role: LOGIN, password hash, settings, comment (one line). */
async function roleState(role: string): Promise<string> {
  return (
    await pg.psql(
      `SELECT a.rolcanlogin || '|' || coalesce(a.rolpassword, '-') || '|' || coalesce((SELECT array_to_string(setconfig, ';') FROM pg_db_role_setting WHERE setrole = a.oid AND setdatabase = 0), '-') || '|' || coalesce(shobj_description(a.oid, 'pg_authid'), '-') FROM pg_authid a WHERE rolname = ${quoteLiteral(role)};`,
    )
  ).trim();
}

async function isMember(group: string, member: string): Promise<boolean> {
  return (await pg.psql(`SELECT count(*) FROM pg_auth_members WHERE roleid = (SELECT oid FROM pg_roles WHERE rolname = ${quoteLiteral(group)}) AND member = (SELECT oid FROM pg_roles WHERE rolname = ${quoteLiteral(member)});`)).trim() === '1';
}

describe('restore --with-globals onto a server that has roles', () => {
  it('existing roles keep their password, NOLOGIN, settings and memberships; a missing role with a hostile name is created with its password hash, settings and memberships', async () => {
    const tag = uniqueDbName('g').slice(2);
    const keeper = `keeper_${tag}`;
    const other = `other "o'x"; DROP ROLE ✓ -- ${tag}`;
    const hostile = `new "o'ne"; ✓ -- $$ /* ${tag}`;
    f.dropRolesAtEnd(hostile, other, keeper);
    await pg.psql(
      [
        `CREATE ROLE ${quoteIdent(keeper)} LOGIN PASSWORD 'source-pw';`,
        `ALTER ROLE ${quoteIdent(keeper)} SET work_mem = '3MB';`,
        `CREATE ROLE ${quoteIdent(other)} LOGIN PASSWORD 'other-source-pw';`,
        `GRANT ${quoteIdent(keeper)} TO ${quoteIdent(other)};`,
        `CREATE ROLE ${quoteIdent(hostile)} LOGIN PASSWORD 'hostile-pw' CONNECTION LIMIT 4;`,
        `ALTER ROLE ${quoteIdent(hostile)} SET search_path = 'a', "b c";`,
        `COMMENT ON ROLE ${quoteIdent(hostile)} IS 'it''s; new';`,
        `GRANT ${quoteIdent(keeper)} TO ${quoteIdent(hostile)};`,
      ].join('\n'),
    );
    const hostileAtBackup = await roleState(hostile);
    expect(hostileAtBackup).toMatch(/^true\|SCRAM-SHA-256\$.*\|search_path=a, "b c"\|it's; new$/);

    const repo = f.path('repo');
    await f.backup(repo, f.db, ['--globals']);

    // After the backup: the existing roles change; the hostile one is gone.
    await pg.psql(
      [
        `ALTER ROLE ${quoteIdent(keeper)} NOLOGIN PASSWORD 'target-pw';`,
        `ALTER ROLE ${quoteIdent(keeper)} SET work_mem = '5MB';`,
        `ALTER ROLE ${quoteIdent(other)} NOLOGIN PASSWORD 'other-target-pw';`,
        `REVOKE ${quoteIdent(keeper)} FROM ${quoteIdent(other)};`,
        `DROP ROLE ${quoteIdent(hostile)};`,
      ].join('\n'),
    );
    const keeperBefore = await roleState(keeper);
    const otherBefore = await roleState(other);
    expect(keeperBefore).toMatch(/^false\|SCRAM-SHA-256\$.*\|work_mem=5MB\|-$/);
    expect(otherBefore).toMatch(/^false\|SCRAM-SHA-256\$.*\|-\|-$/);

    const target = f.dropAtEnd(uniqueDbName('globex_r'));
    const r = await f.run(['--log-format', 'json', 'restore', '--from', repo, '--identity', f.identityFile, '--target-db', target, '--with-globals']);
    expect(r.code, r.stderr).toBe(0);

    // Existing roles: exactly as they were before the restore.
    expect(await roleState(keeper)).toBe(keeperBefore);
    expect(await roleState(other)).toBe(otherBefore);
    expect(await isMember(keeper, other)).toBe(false);
    // The missing role: as it was at the backup, with its membership.
    expect(await roleState(hostile)).toBe(hostileAtBackup);
    expect((await pg.psql(`SELECT rolconnlimit FROM pg_roles WHERE rolname = ${quoteLiteral(hostile)};`)).trim()).toBe('4');
    expect(await isMember(keeper, hostile)).toBe(true);

    // One warning names the roles kept; nothing failed.
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    const kept = lines.filter((l) => l.level === 'warn' && /globals: roles this server already has are kept as they are/.test(String(l.msg)));
    expect(kept, r.stderr).toHaveLength(1);
    for (const role of [keeper, other, pg.user]) expect(String(kept[0]!.roles)).toContain(JSON.stringify(role));
    expect(String(kept[0]!.roles)).not.toContain(JSON.stringify(hostile));
    expect(String(kept[0]!.membershipsLeftOut)).toContain(JSON.stringify(`${keeper} to ${other}`));
    expect(r.stderr).not.toMatch(/globals: statement (failed|skipped)/);

    // A restore that fails after its globals (here: its smoke check) names the roles it created:
    // roles are the cluster's, so they stay when the scratch database is dropped.
    await pg.psql(`DROP ROLE ${quoteIdent(hostile)};`);
    const failing = f.dropAtEnd(uniqueDbName('globex_f'));
    const bad = await f.run(['--log-format', 'json', 'restore', '--from', repo, '--identity', f.identityFile, '--target-db', failing, '--with-globals', '--smoke', 'SELECT 1/0']);
    expect(bad.code, bad.stderr).not.toBe(0);
    const warned = bad.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.level === 'warn' && /the roles --with-globals created stay on the server/.test(String(l.msg)));
    expect(warned, bad.stderr).toHaveLength(1);
    expect(String(warned[0]!.msg)).toContain(JSON.stringify(hostile));
    expect(String(warned[0]!.msg)).not.toContain(JSON.stringify(keeper));
    expect(await roleState(hostile)).toBe(hostileAtBackup);
  });
});
