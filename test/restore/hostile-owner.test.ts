/**
 * A database whose owner is not trusted, backed up and restored by a superuser: coffer's own SQL
 * (the backup's probe and lock, the restore's checks) must not call the owner's functions, and
 * the database's timeouts must not end coffer's sessions.
 */
import { describe, expect, it } from 'vitest';
import { startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { dataFingerprint, fillLargeTable, quoteIdent, quoteLiteral, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'hostile-owner' });
const pg = f.pg;

/** A function that makes `role` a superuser when a superuser calls it, then does what `returns` does. */
function trap(role: string, signature: string, returns: string, body: string): string {
  return `CREATE FUNCTION public.${signature} RETURNS ${returns} LANGUAGE plpgsql AS $f$
BEGIN
  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = session_user) THEN EXECUTE 'ALTER ROLE ${quoteIdent(role).replace(/'/g, "''")} SUPERUSER'; END IF;
  ${body}
END $f$;`;
}

describe('a database owned by a role that is not trusted', () => {
  it('backup and restore by a superuser call none of its functions, and its timeouts do not stop them', async () => {
    const role = uniqueDbName('owner');
    await pg.psql(`CREATE ROLE ${quoteIdent(role)} LOGIN;`);
    f.dropRolesAtEnd(role);
    const db = f.dropAtEnd(uniqueDbName('hostile'));
    await pg.psql(`CREATE DATABASE ${quoteIdent(db)} OWNER ${quoteIdent(role)};`);
    await fillLargeTable(pg, db, 6);
    await pg.psql(
      [
        `SET ROLE ${quoteIdent(role)};`,
        'CREATE TABLE public.t (a int); INSERT INTO public.t VALUES (1);',
        // Better matches than pg_catalog's (name, not text), and, with the search_path below,
        // ahead of pg_catalog's exact ones.
        trap(role, 'quote_ident(name)', 'text', 'RETURN pg_catalog.quote_ident($1::text);'),
        trap(role, 'pg_database_size(name)', 'bigint', 'RETURN pg_catalog.pg_database_size($1);'),
        trap(role, 'current_setting(text)', 'text', 'RETURN pg_catalog.current_setting($1);'),
        trap(role, 'pg_try_advisory_lock(integer, integer)', 'boolean', 'RETURN pg_catalog.pg_try_advisory_lock($1, $2);'),
        `ALTER DATABASE ${quoteIdent(db)} SET search_path = public, pg_catalog;`,
        `ALTER DATABASE ${quoteIdent(db)} SET statement_timeout = '1ms';`,
        `ALTER DATABASE ${quoteIdent(db)} SET idle_session_timeout = '1s';`,
        'RESET ROLE;',
      ].join('\n'),
      db,
    );
    const superuser = async (): Promise<string> => (await pg.psql(`SELECT rolsuper FROM pg_roles WHERE rolname = ${quoteLiteral(role)};`)).trim();
    const repo = f.path('repo');

    // The backup's lock session waits idle while the dump runs (slowed to ~3 s): the database's
    // idle_session_timeout (1 s) must not end it, and its lock with it.
    const run = startCoffer(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--compress', 'none', '--max-rate', '2MB/s', '--json'], { env: f.env() });
    const heldAfter2s = `SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND l.granted AND d.datname = ${quoteLiteral(db)};`;
    await new Promise((r) => setTimeout(r, 2000));
    const held = (await pg.psql(heldAfter2s)).trim();
    const backup = await run;
    expect(backup.exitCode, backup.stderr).toBe(0);
    expect(held).toBe('1');
    expect(await superuser()).toBe('f');

    const target = f.dropAtEnd(uniqueDbName('hostile_r'));
    const restore = await f.run(['restore', '--from', repo, '--db', db, '--identity', f.identityFile, '--target-db', target, '--json']);
    expect(restore.code, restore.stderr).toBe(0);
    expect(await superuser()).toBe('f');
    // The database's settings came back with it (coffer's sessions only set their own).
    expect(await pg.psql(`SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = ${quoteLiteral(target)} AND s.setrole = 0;`)).toMatch(/statement_timeout=1ms/);
    for (const d of [db, target]) await pg.psql(`ALTER DATABASE ${quoteIdent(d)} RESET statement_timeout;`);
    expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, db));
  });
});
