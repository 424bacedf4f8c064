/**
 * Issue 12, point 6: `--no-owner` / `--no-privileges` on plain-SQL (schema-only) restores. The
 * filter in front of psql removes what pg_dump's own --no-owner / --no-privileges leave out
 * (compared on real pg_dump output), and a schema-only backup of objects owned by, and granted
 * to, a role that no longer exists restores with both flags, owned by the restoring user and
 * without grants; without them it fails naming the role, and the hint names only the flags not
 * given yet.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { DatabaseError } from '../../src/errors.js';
import { explainRestoreError } from '../../src/pg/pg-restore.js';
import { PlainSqlFilter } from '../../src/pipeline/sql-filter.js';
import { baseEnv, errorLine, pgEnv, runCoffer, writeIdentityFile } from '../harness/cli.js';
import { childEnv, databaseExists, dropDatabase, pgFromInject, quoteIdent, uniqueDbName } from '../harness/pg.js';

const pgInfo = inject('pg')!;
const pg = pgFromInject(pgInfo);

const FIXTURE = new URL('../fixtures/owners-grants.sql', import.meta.url);

let tmp: string;
let identityFile: string;
let recipient: string;
let role: string;
let db: string;

const run = (args: string[]) => runCoffer(args, { env: baseEnv(pgEnv(pgInfo)) });

async function pgDump(database: string, ...args: string[]): Promise<string> {
  const r = await execa(path.join(pgInfo.binDir, 'pg_dump'), [...args, '-d', database], { env: childEnv(pg), extendEnv: false, maxBuffer: 64 * 1024 * 1024 });
  return String(r.stdout);
}

/** Statements and data only: no comment lines (pg_dump's headers say `Owner: -` with --no-owner), no blank lines, no \restrict keys. */
function statements(sql: string): string {
  return sql
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('--') && !/^\\(un)?restrict\b/.test(l))
    .join('\n');
}

async function filtered(sql: string, opts: { noOwner: boolean; noPrivileges: boolean }, chunk: number): Promise<string> {
  const f = new PlainSqlFilter(opts);
  const out: Buffer[] = [];
  f.on('data', (d: Buffer) => out.push(d));
  const ended = new Promise((r) => f.on('end', r));
  const buf = Buffer.from(sql);
  for (let i = 0; i < buf.length; i += chunk) f.write(buf.subarray(i, i + chunk));
  f.end();
  await ended;
  return Buffer.concat(out).toString('utf8');
}

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-plain-owner-'));
  ({ identityFile, recipient } = await writeIdentityFile(tmp));
  role = uniqueDbName('gone_owner');
  db = uniqueDbName('owners');
  await pg.psql(`CREATE ROLE ${quoteIdent(role)};`);
  await pg.psql(`CREATE DATABASE ${quoteIdent(db)};`);
  await pg.psql((await fsp.readFile(FIXTURE, 'utf8')).replaceAll('ROLE_X', quoteIdent(role)), db);
});

afterAll(async () => {
  await dropDatabase(pg, db).catch(() => undefined);
  await pg.psql(`DROP ROLE IF EXISTS ${quoteIdent(role)};`).catch(() => undefined);
  await fsp.rm(tmp, { recursive: true, force: true });
});

describe('the filter against pg_dump --no-owner / --no-privileges', () => {
  const cases = [
    { flags: ['--no-owner'], opts: { noOwner: true, noPrivileges: false } },
    { flags: ['--no-privileges'], opts: { noOwner: false, noPrivileges: true } },
    { flags: ['--no-owner', '--no-privileges'], opts: { noOwner: true, noPrivileges: true } },
  ];
  it.each(cases)('$flags: the same statements as pg_dump writes with those flags (schema-only and full plain dumps; whole, 1-byte and 7-byte chunks)', async ({ flags, opts }) => {
    for (const kind of [['--schema-only'], []]) {
      const plain = await pgDump(db, ...kind);
      const want = statements(await pgDump(db, ...kind, ...flags));
      expect(statements(plain)).not.toBe(want); // there is something to remove
      for (const chunk of [plain.length, 1, 7]) expect(statements(await filtered(plain, opts, chunk))).toBe(want);
    }
  });
});

describe('restore of a schema-only backup whose owner role is gone', () => {
  it('fails without the flags (the hint names the flags not given), restores with --no-owner --no-privileges: owned by the restoring user, no grants', async () => {
    const repo = path.join(tmp, 'repo');
    const b = await run(['backup', '--to', repo, '--db', db, '--recipient', recipient, '--schema-only', '--json']);
    expect(b.code, b.stderr).toBe(0);
    const source = statements(await pgDump(db, '--schema-only', '--no-owner', '--no-privileges'));
    const comments = await pg.psql("SELECT obj_description('owned.t'::regclass, 'pg_class') || '|' || col_description('owned.t'::regclass, 2);", db);
    // The role goes away (with the database that depended on it): restore time on another server.
    await dropDatabase(pg, db);
    await pg.psql(`DROP ROLE ${quoteIdent(role)};`);

    const restore = (target: string, ...flags: string[]) => run(['restore', '--from', repo, '--db', db, '--kind', 'schema-only', '--identity', identityFile, '--target-db', target, ...flags]);

    const none = await restore(uniqueDbName('owners_r'));
    expect(none.code, none.stderr).toBe(3);
    expect(errorLine(none.stderr)).toContain(`the backup refers to role "${role}", which does not exist on this server`);
    expect(errorLine(none.stderr)).toMatch(/or pass --no-owner --no-privileges\)$/);

    const ownerOnly = await restore(uniqueDbName('owners_r'), '--no-owner');
    expect(ownerOnly.code, ownerOnly.stderr).toBe(3);
    expect(errorLine(ownerOnly.stderr)).toContain(`role "${role}"`);
    expect(errorLine(ownerOnly.stderr)).toMatch(/or pass --no-privileges\)$/);

    const target = uniqueDbName('owners_r');
    const both = await restore(target, '--no-owner', '--no-privileges');
    expect(both.code, both.stderr).toBe(0);
    try {
      expect(both.stderr).toMatch(/plain SQL filtered for --no-owner\/--no-privileges/);
      // Everything but owners and grants is there, as it was: bodies, comments and literals untouched.
      expect(statements(await pgDump(target, '--schema-only', '--no-owner', '--no-privileges'))).toBe(source);
      expect(await pg.psql("SELECT obj_description('owned.t'::regclass, 'pg_class') || '|' || col_description('owned.t'::regclass, 2);", target)).toBe(comments);
      expect(await pg.psql("SELECT prosrc LIKE '%ALTER TABLE x OWNER TO y;%' FROM pg_proc WHERE proname = 'g';", target)).toBe('t');
      // Owned by the restoring user; no grants at all, no default privileges.
      const owners = await pg.psql(
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('owned', 'public') UNION SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'owned' UNION SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'owned';",
        target,
      );
      expect(owners.split('\n')).toEqual([pgInfo.user]);
      expect(await pg.psql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('owned', 'public') AND c.relacl IS NOT NULL;", target)).toBe('0');
      expect(await pg.psql("SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('owned', 'public') AND a.attacl IS NOT NULL;", target)).toBe('0');
      expect(await pg.psql("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'owned' AND p.proacl IS NOT NULL;", target)).toBe('0');
      expect(await pg.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'owned' AND nspacl IS NOT NULL;", target)).toBe('0');
      expect(await pg.psql('SELECT count(*) FROM pg_default_acl;', target)).toBe('0');
    } finally {
      await dropDatabase(pg, target);
    }
    expect(await databaseExists(pg, target)).toBe(false);
  });
});

describe('the missing-role hint', () => {
  it('names only the flags not given; with both given, says what else to do', () => {
    const err = new DatabaseError('psql (restore) exited with code 3: psql:<stdin>:40: ERROR:  role "gone" does not exist', { detail: 'x' });
    const hint = (noOwner: boolean, noPrivileges: boolean): string => (explainRestoreError(err, { noOwner, noPrivileges }) as DatabaseError).hint!;
    expect(hint(false, false)).toMatch(/, or pass --no-owner --no-privileges$/);
    expect(hint(true, false)).toMatch(/, or pass --no-privileges$/);
    expect(hint(false, true)).toMatch(/, or pass --no-owner$/);
    const both = explainRestoreError(err, { noOwner: true, noPrivileges: true }) as DatabaseError;
    expect(both.hint).toBe('restore the roles first (--with-globals, from a backup taken with --globals) or create the role');
    expect(both.message).toMatch(/in a statement that --no-owner and --no-privileges do not remove/);
    expect(both.detail).toBe('x');
    // Any other statement that failed: nothing was restored, what to do, and where the statement is.
    const other = (e: DatabaseError): string | undefined => (explainRestoreError(e, { noOwner: false, noPrivileges: false }) as DatabaseError).hint;
    expect(other(new DatabaseError('pg_restore exited with code 1: pg_restore: error: could not execute query: ERROR:  x', { detail: 'Command was: CREATE x' }))).toBe(
      'nothing was restored; fix the cause on this server (the failed statement is logged as detail) and restore again',
    );
    expect(other(new DatabaseError('pg_restore exited with code 1: pg_restore: error: connection to server failed: FATAL:  x'))).toBe('nothing was restored; fix the cause on this server and restore again');
  });
});
