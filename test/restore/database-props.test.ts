/**
 * Issue 12, points 1 and 2: a restore recreates the database around the data as it was — its
 * encoding and locale (a LATIN1 or SQL_ASCII source comes back LATIN1 or SQL_ASCII, byte for
 * byte), its owner, ACL, `ALTER DATABASE … SET`, `ALTER ROLE … IN DATABASE … SET`, connection
 * limit and comment — under the target's name; `--no-owner` / `--no-privileges` leave out the
 * matching parts; a server that cannot provide the locale is refused with a clear message.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { ArchiveOffsetScanner } from '../../src/pg/archive-offsets.js';
import { definitionFromArchive, retargetDatabase } from '../../src/pg/database-props.js';
import { execa } from 'execa';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { childEnv, databaseExists, listDatabases, quoteIdent, quoteLiteral, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'dbprops' });
const pg = f.pg;

const suffix = Math.random().toString(16).slice(2, 8);
const owner = `props_owner_${suffix}`;
const reader = `props_reader_${suffix}`;
const tuned = `props_tuned_${suffix}`;
const gone = `props_gone_${suffix}`;

beforeAll(async () => {
  f.dropRolesAtEnd(owner, reader, tuned, gone);
  for (const r of [owner, reader, tuned, gone]) await pg.psql(`CREATE ROLE ${quoteIdent(r)} LOGIN;`);
});

/** Everything the issue lists of a database, as comparable text (the name left out). */
async function properties(db: string): Promise<Record<string, string>> {
  const lit = quoteLiteral(db);
  const row = await pg.psql(
    `SELECT json_build_object(
       'encoding', pg_encoding_to_char(d.encoding), 'collate', d.datcollate, 'ctype', d.datctype,
       'provider', d.datlocprovider, 'icu', coalesce(d.daticulocale, ''),
       'owner', pg_get_userbyid(d.datdba), 'acl', coalesce(d.datacl::text, ''), 'connlimit', d.datconnlimit,
       'comment', coalesce(shobj_description(d.oid, 'pg_database'), ''),
       'settings', coalesce((SELECT string_agg(coalesce(r.rolname, '*') || '=' || array_to_string(s.setconfig, ','), ';' ORDER BY r.rolname NULLS FIRST)
                             FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = d.oid), ''))
     FROM pg_database d WHERE d.datname = ${lit};`,
  );
  return JSON.parse(row) as Record<string, string>;
}

async function backup(repo: string, db: string, ...extra: string[]): Promise<BackupManifest> {
  const r = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--json', ...extra]);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as BackupManifest[])[0]!;
}

async function restore(repo: string, target: string, ...extra: string[]) {
  f.dropAtEnd(target);
  return f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target, ...extra]);
}

describe('database-level properties come back', () => {
  // A name that needs quoting everywhere it appears in pg_dump's statements.
  const source = `Props "db" ${suffix}`;
  const repo = (): string => f.path('props');

  beforeAll(async () => {
    f.dropAtEnd(source);
    const q = quoteIdent(source);
    await pg.psql(`CREATE DATABASE ${q} TEMPLATE template0 LC_COLLATE 'C.utf8' LC_CTYPE 'C.utf8' OWNER ${quoteIdent(owner)} CONNECTION LIMIT 7;`);
    await pg.psql('CREATE TABLE t (x text); INSERT INTO t VALUES (\'b\'), (\'B\'), (\'a\');', source);
    await pg.psql(
      `ALTER DATABASE ${q} SET search_path = public, pg_catalog;
       ALTER DATABASE ${q} SET work_mem = '3MB';
       ALTER ROLE ${quoteIdent(tuned)} IN DATABASE ${q} SET statement_timeout = '41s';
       ALTER ROLE ${quoteIdent(gone)} IN DATABASE ${q} SET lock_timeout = '5s';
       REVOKE CONNECT, TEMPORARY ON DATABASE ${q} FROM PUBLIC;
       GRANT CONNECT ON DATABASE ${q} TO ${quoteIdent(reader)};
       COMMENT ON DATABASE ${q} IS 'the DATABASE ${source.replace(/'/g, "''")} comment; ALTER DATABASE x';`,
    );
    await backup(repo(), source);
  });

  it('the archive scanner finds the database entries wherever the chunks split them', async () => {
    const dump = await execa(path.join(pg.binDir, 'pg_dump'), ['-Fc', '-Z0', '-d', source], { env: childEnv(pg), extendEnv: false, encoding: 'buffer' });
    const archive = Buffer.from(dump.stdout);
    const whole = new ArchiveOffsetScanner();
    whole.push(archive);
    expect(whole.end().ok).toBe(true);
    const entries = whole.databaseEntries();
    expect(entries.map((e) => e.desc).sort()).toEqual(['ACL', 'COMMENT', 'DATABASE', 'DATABASE PROPERTIES', 'ENCODING']);
    const def = definitionFromArchive(entries)!;
    expect(def).toMatchObject({ name: source, owner });
    expect(def.options).toContainEqual({ key: 'LOCALE', value: "'C.utf8'" });
    // Splits: every byte, small primes, and random cuts (seeded by position).
    for (const split of [1, 3, 7, 64, 4093, 'random'] as const) {
      const s = new ArchiveOffsetScanner();
      let i = 0;
      let seed = 12345;
      let tocAt = -1;
      while (i < archive.length) {
        seed = (seed * 1103515245 + 12345) & 0x7fffffff;
        const n = split === 'random' ? 1 + (seed % 200) : split;
        s.push(archive.subarray(i, i + n));
        i = Math.min(i + n, archive.length);
        if (tocAt < 0 && s.tocComplete) tocAt = i;
      }
      expect(s.end().ok).toBe(true);
      expect(s.databaseEntries(), `split ${split}`).toEqual(entries);
      // The table of contents is read before the data (the table's rows) arrives.
      if (split === 1) expect(tocAt).toBeLessThan(archive.length);
      expect(tocAt).toBeGreaterThan(0);
    }
  });

  it('owner, ACL, settings, role-in-database settings, connection limit, comment, locale: all equal after a restore', async () => {
    const target = uniqueDbName('props_r');
    const r = await restore(repo(), target);
    expect(r.code, r.stderr).toBe(0);
    const want = await properties(source);
    const got = await properties(target);
    expect(want.collate).toBe('C.utf8');
    expect(want.acl).toContain(reader);
    expect(got).toEqual(want);
    // The sort order is the source's.
    expect(await pg.psql('SELECT string_agg(x, \'\' ORDER BY x) FROM t;', target)).toBe(await pg.psql('SELECT string_agg(x, \'\' ORDER BY x) FROM t;', source));
  });

  it('--replace gives the new database the backup properties; the old one keeps its own', async () => {
    const target = uniqueDbName('props_rep');
    f.dropAtEnd(target);
    await pg.psql(`CREATE DATABASE ${quoteIdent(target)} CONNECTION LIMIT 3;`);
    const r = await restore(repo(), target, '--replace');
    expect(r.code, r.stderr).toBe(0);
    expect(await properties(target)).toEqual(await properties(source));
    const aside = (await listDatabases(pg)).find((d) => d.startsWith(`${target}__before_`))!;
    f.dropAtEnd(aside);
    expect((await properties(aside)).connlimit).toBe(3);
  });

  it('a role the server does not have: its setting is left out with a warning, the rest applied', async () => {
    await pg.psql(`DROP ROLE ${quoteIdent(gone)};`);
    const target = uniqueDbName('props_gone');
    const r = await restore(repo(), target);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(gone);
    const got = await properties(target);
    expect(got.settings).toContain(`${tuned}=statement_timeout=41s`);
    expect(got.settings).not.toContain('lock_timeout');
    expect(got.owner).toBe(owner);
  });

  it('--no-owner keeps the restoring user as owner; --no-privileges keeps the default ACL; the rest still comes back', async () => {
    const target = uniqueDbName('props_noown');
    const r = await restore(repo(), target, '--no-owner', '--no-privileges');
    expect(r.code, r.stderr).toBe(0);
    const got = await properties(target);
    const want = await properties(source);
    expect(got.owner).toBe(pg.user);
    expect(got.acl).toBe('');
    expect({ ...got, owner: '', acl: '' }).toEqual({ ...want, owner: '', acl: '' });
  });

  it('an owner missing on the server fails the restore with the fix, and leaves no database behind', async () => {
    const other = `props_owner2_${suffix}`;
    const src = uniqueDbName('props_own2');
    f.dropAtEnd(src);
    await pg.psql(`CREATE ROLE ${quoteIdent(other)};`);
    await pg.psql(`CREATE DATABASE ${quoteIdent(src)} OWNER ${quoteIdent(other)};`);
    const repo2 = f.path('owner2');
    await backup(repo2, src);
    await pg.psql(`DROP DATABASE ${quoteIdent(src)}; DROP ROLE ${quoteIdent(other)};`);
    const target = uniqueDbName('props_own2_r');
    const r = await restore(repo2, target);
    expect(r.code).toBe(3);
    expect(errorLine(r.stderr)).toContain(other);
    expect(r.stderr).toMatch(/--no-owner|--with-globals/);
    expect(await databaseExists(pg, target)).toBe(false);
    expect((await listDatabases(pg)).filter((d) => d.startsWith(target))).toEqual([]);
  });
});

describe('encodings other than UTF8 come back as they were', () => {
  /** The rows' bytes and the database comment's bytes, as the database's own sessions see them. */
  async function rawBytes(db: string): Promise<string> {
    return pg.psql(
      "SELECT string_agg(encode(textsend(x), 'hex'), ',' ORDER BY x) || ' / ' || encode(textsend(shobj_description((SELECT oid FROM pg_database WHERE datname = current_database()), 'pg_database')), 'hex') FROM t;",
      db,
    );
  }

  for (const [encoding, insert] of [
    ['SQL_ASCII', "INSERT INTO t VALUES (E'caf\\xe9'), (E'na\\xefve'); DO $$ BEGIN EXECUTE format('COMMENT ON DATABASE %I IS %L', current_database(), E'r\\xe9sum\\xe9'); END $$;"],
    ['LATIN1', "SET client_encoding = 'UTF8'; INSERT INTO t VALUES ('café'), ('naïve'), ('ÆØÅ'); DO $$ BEGIN EXECUTE format('COMMENT ON DATABASE %I IS %L', current_database(), 'résumé'); END $$;"],
  ] as const) {
    it(`${encoding}: full and schema-only backups restore into ${encoding}, bytes identical, twice over`, async () => {
      const src = uniqueDbName(`enc_${encoding.toLowerCase()}`);
      f.dropAtEnd(src);
      await pg.psql(`CREATE DATABASE ${quoteIdent(src)} TEMPLATE template0 ENCODING ${quoteLiteral(encoding)} LOCALE 'C';`);
      await pg.psql(`CREATE TABLE t (x text); ${insert}`, src);
      const bytes = await rawBytes(src);
      expect(bytes).toMatch(/e9.* \/ 72e9/);
      const repo = f.path(`enc-${encoding}`);
      await backup(repo, src);
      const first = uniqueDbName('enc_r1');
      const r1 = await restore(repo, first);
      expect(r1.code, r1.stderr).toBe(0);
      expect((await properties(first)).encoding).toBe(encoding);
      expect(await rawBytes(first)).toBe(bytes);

      // A backup of the copy restores too (it was not UTF8 holding invalid bytes).
      const repo2 = f.path(`enc-${encoding}-2`);
      await backup(repo2, first);
      const second = uniqueDbName('enc_r2');
      const r2 = await restore(repo2, second);
      expect(r2.code, r2.stderr).toBe(0);
      expect(await rawBytes(second)).toBe(bytes);

      // Plain SQL (schema-only) carries no CREATE DATABASE: the manifest's encoding and locale are used.
      const m = await backup(repo, src, '--schema-only');
      expect(m.postgres.locale).toMatchObject({ encoding, collate: 'C', ctype: 'C' });
      const schema = uniqueDbName('enc_s');
      const r3 = await restore(repo, schema, '--kind', 'schema-only');
      expect(r3.code, r3.stderr).toBe(0);
      expect((await properties(schema)).encoding).toBe(encoding);
    });
  }

  it('an ICU database comes back with its ICU locale', async () => {
    const src = uniqueDbName('enc_icu');
    f.dropAtEnd(src);
    await pg.psql(`CREATE DATABASE ${quoteIdent(src)} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'sv-SE' LOCALE 'C.utf8';`);
    await pg.psql("CREATE TABLE t (x text); INSERT INTO t VALUES ('ö'), ('z'), ('a');", src);
    const repo = f.path('icu');
    await backup(repo, src);
    const target = uniqueDbName('enc_icu_r');
    const r = await restore(repo, target);
    expect(r.code, r.stderr).toBe(0);
    const got = await properties(target);
    expect(got).toMatchObject({ provider: 'i', icu: 'sv-SE' });
    // Swedish sorts ö after z.
    expect(await pg.psql("SELECT string_agg(x, '' ORDER BY x) FROM t;", target)).toBe('azö');
  });

  it('a locale the server lacks: refused before any data moves, with the fix; nothing left behind', async () => {
    const src = uniqueDbName('enc_missing');
    f.dropAtEnd(src);
    await pg.psql(`CREATE DATABASE ${quoteIdent(src)};`);
    await pg.psql('CREATE TABLE t (x text);', src);
    const repo = f.path('missing-locale');
    const m = await backup(repo, src, '--schema-only');
    // The manifest is how a plain-SQL backup says how its database was made: say a locale this host lacks.
    const key = path.join(repo, path.dirname(m.dump.key), `${m.id}.manifest.json`);
    const edited = { ...m, postgres: { ...m.postgres, locale: { ...m.postgres.locale!, collate: 'xx_XX.UTF-8', ctype: 'xx_XX.UTF-8' } } };
    await fsp.writeFile(key, JSON.stringify(edited, null, 2));
    const target = uniqueDbName('enc_missing_r');
    const r = await restore(repo, target, '--kind', 'schema-only');
    expect(r.code).toBe(3);
    expect(errorLine(r.stderr)).toMatch(/cannot create the backup's database as it was.*xx_XX\.UTF-8/);
    expect(r.stderr).toMatch(/install that locale/);
    expect((await listDatabases(pg)).filter((d) => d.startsWith(target))).toEqual([]);
  });
});

describe('retargetDatabase', () => {
  it('rewrites the name after DATABASE only outside literals, quoted identifiers, dollar quotes and comments', () => {
    const sql = [
      'ALTER DATABASE vault SET search_path = vault, public;',
      "COMMENT ON DATABASE vault IS 'DATABASE vault stays';",
      'ALTER ROLE bob IN DATABASE vault SET x = 1;',
      'GRANT CONNECT ON DATABASE vault TO vault;',
      '-- DATABASE vault',
      "SELECT $x$DATABASE vault$x$, E'\\'DATABASE vault', \"DATABASE vault\";",
      'ALTER DATABASE vaulty SET a = 1;',
      '/* DATABASE vault /* nested */ DATABASE vault */ ALTER DATABASE\n  vault OWNER TO x;',
    ].join('\n');
    expect(retargetDatabase(sql, 'vault', '"new""one"')).toBe(
      [
        'ALTER DATABASE "new""one" SET search_path = vault, public;',
        "COMMENT ON DATABASE \"new\"\"one\" IS 'DATABASE vault stays';",
        'ALTER ROLE bob IN DATABASE "new""one" SET x = 1;',
        'GRANT CONNECT ON DATABASE "new""one" TO vault;',
        '-- DATABASE vault',
        "SELECT $x$DATABASE vault$x$, E'\\'DATABASE vault', \"DATABASE vault\";",
        'ALTER DATABASE vaulty SET a = 1;',
        '/* DATABASE vault /* nested */ DATABASE vault */ ALTER DATABASE\n  "new""one" OWNER TO x;',
      ].join('\n'),
    );
    expect(retargetDatabase('ALTER DATABASE "Odd ""x""" SET a = 1;', 'Odd "x"', ':v')).toBe('ALTER DATABASE :v SET a = 1;');
  });
});
