/**
 * A restore run by a role that may create databases but is not a superuser (what the runbook
 * gives a restore host). The swap's wait for the scratch database's last session asks
 * pg_stat_activity, which hides other users' sessions from such a role, and tries to end
 * autovacuum workers, which such a role may not: the restore, and a --replace of a database
 * the role owns (its sessions ended), must still go through.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useFixture } from '../harness/fixture.js';
import { childEnv, databaseExists, quoteIdent, quoteLiteral, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'least-privilege', db: { fixture: 'vault', prefix: 'leastpriv' } });
const pg = f.pg;
const role = uniqueDbName('coffer_np');
let repo: string;

const other = uniqueDbName('coffer_alice');

beforeAll(async () => {
  // A setting of another role in the database: this role may not apply it (no superuser, no CREATEROLE).
  await pg.psql(`CREATE ROLE ${quoteIdent(other)}; ALTER ROLE ${quoteIdent(other)} IN DATABASE ${quoteIdent(f.db)} SET work_mem = '5MB';`);
  f.dropRolesAtEnd(other);
  repo = f.path('repo');
  const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient]);
  expect(r.code, r.stderr).toBe(0);
  await pg.psql(`CREATE ROLE ${quoteIdent(role)} LOGIN CREATEDB NOSUPERUSER;`);
});

afterAll(async () => {
  // The role's databases first (the fixture would drop them after this).
  const owned = (await pg.psql(`SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = ${quoteLiteral(role)});`)).split('\n').filter(Boolean);
  for (const d of owned) await pg.psql(`DROP DATABASE IF EXISTS ${quoteIdent(d)} WITH (FORCE);`);
  await pg.psql(`DROP ROLE IF EXISTS ${quoteIdent(role)};`);
});

describe('restore by a role with CREATEDB only', () => {
  it('restores, then replaces its own database while a session of it is connected', async () => {
    const target = uniqueDbName('np');
    f.dropAtEnd(target);
    const args = ['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target, '--no-owner', '--no-privileges', '--json'];
    const first = await f.run(args, { PGUSER: role });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toMatch(new RegExp(`a setting of a role was not applied: the restoring user may not change that role's settings.*"role":"${other}"`));
    expect((await pg.psql(`SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = ${quoteLiteral(target)};`)).trim()).toBe(role);
    expect(Number((await pg.psql('SELECT count(*) FROM vault_status;', target)).trim())).toBeGreaterThan(0);

    // A session of the role itself on the target: --replace ends it (a role may end its own).
    const session = spawn(path.join(pg.binDir, 'psql'), ['-X', '-qAt', '-d', target, '-c', 'SELECT pg_sleep(300);'], { env: childEnv(pg, { PGUSER: role }), stdio: 'ignore' });
    const ended = once(session, 'exit');
    const seen = `SELECT count(*) FROM pg_stat_activity WHERE datname = ${quoteLiteral(target)} AND query LIKE 'SELECT pg_sleep%';`;
    for (let i = 0; i < 200 && (await pg.psql(seen)).trim() !== '1'; i++) await new Promise((r) => setTimeout(r, 50));
    const second = await f.run([...args, '--replace'], { PGUSER: role });
    session.kill();
    await ended;
    expect(second.code, second.stderr).toBe(0);
    const aside = (JSON.parse(second.stdout) as { replacedAside: string }).replacedAside;
    f.dropAtEnd(aside);
    expect(await databaseExists(pg, aside)).toBe(true);
    expect(await databaseExists(pg, target)).toBe(true);
  });
});
