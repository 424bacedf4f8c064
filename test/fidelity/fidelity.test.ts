/**
 * Issue 12, acceptance: the fidelity suite. Real, publicly available PostgreSQL schemas with data
 * (test/fidelity/corpus.ts; origins and licenses in test/fixtures/fidelity/README.md), each with
 * coffer's overlay, go through `coffer backup` and `coffer restore` into a new database; the copy
 * must equal the source in every aspect of test/fidelity/snapshot.ts: the `pg_dump --create
 * --schema-only` text, every table's rows, sequences, large objects and the database-level
 * properties (encoding, locale, owner, ACL, settings, role-in-database settings, connection
 * limit, comment).
 *
 * Each schema reports all its differences at once, per aspect, against {@link PG_DUMP_OWN}: the
 * differences that pg_dump itself cannot carry (none is known so far). Anything else is coffer's
 * to fix.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { baseEnv, pgEnv, runCoffer, s3Env, writeIdentityFile } from '../harness/cli.js';
import { dropDatabase, pgFromInject, quoteIdent } from '../harness/pg.js';
import { createTestBucket, s3ClientFor } from '../harness/rgw.js';
import { CORPUS, ensureCorpusFiles, upstreamSql, type CorpusFiles, type CorpusSchema } from './corpus.js';
import { ASPECTS, differences, psqlUtf8, snapshot, type Differences } from './snapshot.js';

const pgInfo = inject('pg')!;
const rgwInfo = inject('rgw')!;
const pg = pgFromInject(pgInfo);

/**
 * Differences that are pg_dump's own limitations, not coffer's, per schema and aspect, each with
 * its reason; README documents them as pg_dump's. Empty: every aspect compared here is carried
 * by a pg_dump archive. (Checked: replaying `pg_dump --create` of each source under the target's
 * name gives no difference at all for this corpus.)
 */
const PG_DUMP_OWN: Record<string, Partial<Differences>> = {};

/** The differences allowed for `schema`: pg_dump's own, or none. */
function expected(schema?: string): Differences {
  return Object.fromEntries(ASPECTS.map((a) => [a, (schema && PG_DUMP_OWN[schema]?.[a]) || []])) as Differences;
}

const run = randomBytes(5).toString('hex');
/** Cluster-wide roles, unique to this run: objects and the databases are given to them. */
const roles = { owner_role: `fid_${run}_owner`, app_role: `fid_${run}_app`, reader_role: `fid_${run}_reader` };

let tmp: string;
let identityFile: string;
let recipient: string;
let files: CorpusFiles;
let s3: S3Client;
let bucket: string;
const databases: string[] = [];

const env = () => baseEnv({ ...pgEnv(pgInfo), ...s3Env(rgwInfo) });

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-fidelity-'));
  ({ identityFile, recipient } = await writeIdentityFile(tmp));
  s3 = s3ClientFor(rgwInfo, rgwInfo.admin);
  bucket = await createTestBucket(s3);
  files = await ensureCorpusFiles();
  console.log(`fidelity corpus (Debian packages): ${files.versions.join(', ')}`);
  await pg.psql(`CREATE ROLE ${quoteIdent(roles.owner_role)}; CREATE ROLE ${quoteIdent(roles.app_role)} LOGIN; CREATE ROLE ${quoteIdent(roles.reader_role)} LOGIN;`);
});

afterAll(async () => {
  for (const db of databases) await dropDatabase(pg, db);
  for (const role of Object.values(roles)) await pg.psql(`DROP ROLE IF EXISTS ${quoteIdent(role)};`);
  s3?.destroy();
  if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
});

/** Creates the source database of `schema`: upstream SQL, then coffer's overlay. */
async function loadSource(schema: CorpusSchema): Promise<string> {
  const db = `fid_${schema.name}_${run}`;
  databases.push(db);
  await pg.psql(`CREATE DATABASE ${quoteIdent(db)} ${schema.createOptions};`);
  for (const [pkg, file] of schema.files) await psqlUtf8(pg, db, await upstreamSql(files, pkg, file));
  await psqlUtf8(pg, db, await fsp.readFile(schema.overlay), { ...roles, dbname: db });
  return db;
}

/** Where each schema is backed up: the S3 repository (RGW) for one, the file repository for the others. */
function repositoryFor(schema: CorpusSchema): string {
  return schema.name === 'ledgersmb' ? `s3://${bucket}/fidelity` : path.join(tmp, 'repo');
}

describe('fidelity: backup → restore of real schemas gives back the same database', () => {
  it.for(CORPUS.map((s) => [s.name, s] as const))('%s', async ([, schema]) => {
    const source = await loadSource(schema);
    const repo = repositoryFor(schema);
    const b = await runCoffer(['backup', '--to', repo, '--db', source, '--recipient', recipient, '--json'], { env: env() });
    expect(b.code, b.stderr).toBe(0);
    const manifest = (JSON.parse(b.stdout) as BackupManifest[])[0]!;

    const target = `${source}_r`;
    databases.push(target);
    const r = await runCoffer(['restore', '--from', repo, '--db', source, '--backup', manifest.id, '--identity', identityFile, '--target-db', target], { env: env() });
    expect(r.code, r.stderr).toBe(0);

    const [before, after] = await Promise.all([snapshot(pg, source), snapshot(pg, target)]);
    // The comparison sees what it should: the corpus is not trivially small.
    expect(before.tables.size).toBeGreaterThan(10);
    expect(before.largeObjects.size).toBeGreaterThan(0);
    expect(before.sequences.size).toBeGreaterThan(2);
    const found = differences(before, after);
    // The message lists every difference in full (the assertion's own diff may shorten long lines).
    const listing = ASPECTS.flatMap((a) => found[a].map((d) => `${a}: ${d}`)).join('\n');
    expect(found, `${schema.name}: differences between the source and the restored copy:\n${listing}\n`).toEqual(expected(schema.name));
  });
});

describe('the comparison itself', () => {
  it('reports a changed row, sequence, large object, schema and database property, and nothing for an exact copy', async () => {
    const a = `fid_control_${run}`;
    const copy = `${a}_copy`;
    databases.push(a, copy);
    await pg.psql(`CREATE DATABASE ${quoteIdent(a)} TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C';`);
    await psqlUtf8(pg, a, `CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (2, 'ß'), (1, 'café');
      CREATE SEQUENCE s START 5; SELECT lo_from_bytea(950001, '\\x0102');`);
    await pg.psql(`CREATE DATABASE ${quoteIdent(copy)} TEMPLATE ${quoteIdent(a)};`);
    const before = await snapshot(pg, a);
    // Rows are checksummed as UTF8 text, whatever the database's encoding.
    expect(before.tables.get('public.t')).toBe(`2 rows, md5 ${createHash('md5').update('(1,café)\n(2,ß)', 'utf8').digest('hex')}`);
    expect(before.sequences.get('public.s')).toBe('last_value 5, is_called false');
    expect(differences(before, await snapshot(pg, copy))).toEqual(expected());

    await psqlUtf8(pg, copy, `UPDATE t SET v = 'cafe' WHERE id = 1; SELECT nextval('s'); SELECT lo_put(950001, 1, '\\x09');
      ALTER TABLE t ADD COLUMN w int; ALTER DATABASE ${quoteIdent(copy)} SET work_mem = '1MB';`);
    const found = differences(before, await snapshot(pg, copy));
    // In order, nothing filtered but the database's name and the \\restrict keys: the new
    // setting comes with pg_dump's block that reconnects to the database.
    expect(found.schema).toEqual([
      '+ -- Name: <database>; Type: DATABASE PROPERTIES; Schema: -; Owner: postgres',
      '+ --',
      '+ ',
      `+ ALTER DATABASE <database> SET work_mem TO '1MB';`,
      '+ ',
      '+ ',
      '+ \\unrestrict <key>',
      '+ \\connect <database>',
      '+ \\restrict <key>',
      '+ ',
      '+ SET statement_timeout = 0;',
      '+ SET lock_timeout = 0;',
      '+ SET idle_in_transaction_session_timeout = 0;',
      "+ SET client_encoding = 'UTF8';",
      '+ SET standard_conforming_strings = on;',
      "+ SELECT pg_catalog.set_config('search_path', '', false);",
      '+ SET check_function_bodies = false;',
      '+ SET xmloption = content;',
      '+ SET client_min_messages = warning;',
      '+ SET row_security = off;',
      '+ ',
      '+ --',
      '-     v text',
      '+     v text,',
      '+     w integer',
    ]);
    expect(found.tables).toEqual([expect.stringMatching(/^public\.t: 2 rows, md5 [0-9a-f]{32} → 2 rows, md5 [0-9a-f]{32}$/)]);
    expect(found.sequences).toEqual(['public.s: last_value 5, is_called false → last_value 5, is_called true']);
    expect(found.largeObjects).toEqual([expect.stringMatching(/^950001: owner postgres, acl \(default\), comment \(none\), 2 bytes, md5 [0-9a-f]{32} → owner postgres, acl \(default\), comment \(none\), 2 bytes, md5 [0-9a-f]{32}$/)]);
    expect(found.database).toEqual(['settings (ALTER DATABASE SET): (absent) → work_mem=1MB']);
  });
});
