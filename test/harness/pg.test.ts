import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { VAULT_SAMPLE_STATUS_ROWS } from '../../src/demo/vault-sample.js';
import { DatabaseError } from '../../src/errors.js';
import { processRunning } from '../../src/demo/cluster-cleanup.js';
import { runPsql, startThrowawayCluster, type ThrowawayCluster } from '../../src/demo/throwaway-cluster.js';
import {
  childEnv,
  createDatabase,
  databaseExists,
  dataFingerprint,
  dropDatabase,
  fillLargeTable,
  listDatabases,
  pgFromInject,
  schemaDump,
  type PgLike,
} from './pg.js';

const pg = pgFromInject(inject('pg'));
const created: Array<[PgLike, string]> = [];

async function make(target: PgLike, fixture: 'varied' | 'vault' | 'empty'): Promise<string> {
  const name = await createDatabase(target, undefined, fixture);
  created.push([target, name]);
  return name;
}

/** pg_dump -Fc of src (on `from`) piped into pg_restore into dst (on `to`). */
async function dumpRestore(from: PgLike, src: string, to: PgLike, dst: string): Promise<void> {
  await execa(join(from.binDir, 'pg_dump'), ['-Fc', '-d', src], { env: childEnv(from), extendEnv: false }).pipe(
    join(to.binDir, 'pg_restore'),
    ['--exit-on-error', '-d', dst],
    { env: childEnv(to), extendEnv: false },
  );
}

afterAll(async () => {
  for (const [target, name] of created.splice(0)) await dropDatabase(target, name).catch(() => undefined);
});

describe('throwaway cluster from the global setup', () => {
  it('runs psql as superuser and reports failures as one-line DatabaseErrors', async () => {
    expect(await pg.psql('SELECT current_user, current_setting($$fsync$$);')).toBe('postgres|off');
    const err = await pg.psql('SELECT 1;\nSELECT * FROM no_such_table;').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DatabaseError);
    expect((err as Error).message).toMatch(/no_such_table.*does not exist/);
    expect((err as Error).message).not.toContain('\n');
  });

  it('creates, lists and drops databases', async () => {
    const name = await make(pg, 'empty');
    expect(name).toMatch(/^t_[0-9a-f]{12}$/);
    expect(await databaseExists(pg, name)).toBe(true);
    expect(await listDatabases(pg)).toContain(name);
    const odd = await createDatabase(pg, 'odd "name" é');
    created.push([pg, odd]);
    expect(await databaseExists(pg, odd)).toBe(true);
    await dropDatabase(pg, name);
    await dropDatabase(pg, odd);
    expect(await databaseExists(pg, name)).toBe(false);
    expect(await listDatabases(pg)).not.toContain(odd);
    await dropDatabase(pg, name); // idempotent
  });

  it('loads the vault sample (smoke query)', async () => {
    const db = await make(pg, 'vault');
    expect(Number(await pg.psql('SELECT COUNT(*) FROM vault_status;', db))).toBe(VAULT_SAMPLE_STATUS_ROWS);
    const size = Number(await pg.psql('SELECT pg_database_size(current_database());', db));
    expect(size).toBeLessThan(20 * 1024 * 1024);
  });

  it('loads the varied fixture with everything it promises', async () => {
    const db = await make(pg, 'varied');
    const fp = await dataFingerprint(pg, db);
    expect(fp['app.customers']?.rows).toBe(5000);
    expect(fp['"données"."Clients Étrangers"']?.rows).toBe(1000);
    expect(fp['"données"."my ""quoted"" table"']?.rows).toBe(50);
    expect(fp['"고객"."고객정보"']?.rows).toBe(500);
    expect(fp['"Mixed Case 🙂"."🙂 Emoji Table"']?.rows).toBe(300);
    expect(fp['app.events']?.rows).toBe(20000);
    expect(fp['app.events_2024q4_click']?.rows).toBeGreaterThan(0);
    expect(fp['app.events_default']?.rows).toBeGreaterThan(0);
    expect(fp['app.customer_totals']?.rows).toBeGreaterThan(0);
    expect(fp['app.empty_table']).toEqual({ rows: 0, md5: 'd41d8cd98f00b204e9800998ecf8427e' });
    expect(fp['large_object:910001']?.rows).toBe(256 * 1024);
    expect(fp['large_object:910003']?.rows).toBe(0);
    expect(fp['sequence:app.ticket_seq']?.rows).toBe(123456);
    expect(fp['sequence:app.untouched_seq']?.md5).toBe('last_value=null');
    const bytes = Number(await pg.psql('SELECT sum(length(data)) FROM app.blobs;', db));
    expect(bytes).toBeGreaterThan(1_000_000);
  });

  it('schemaDump and dataFingerprint survive pg_dump -Fc | pg_restore, and notice changes', async () => {
    for (const fixture of ['varied', 'vault'] as const) {
      const src = await make(pg, fixture);
      const dst = await make(pg, 'empty');
      await dumpRestore(pg, src, pg, dst);
      const [schemaA, schemaB] = await Promise.all([schemaDump(pg, src), schemaDump(pg, dst)]);
      expect(schemaA).not.toMatch(/^\\(un)?restrict/m);
      expect(schemaA.length).toBeGreaterThan(1000);
      expect(schemaB).toBe(schemaA);
      const [fpA, fpB] = await Promise.all([dataFingerprint(pg, src), dataFingerprint(pg, dst)]);
      expect(Object.keys(fpA).length).toBeGreaterThan(3);
      expect(fpB).toEqual(fpA);
      if (fixture === 'varied') {
        // sensitivity: one changed character, one changed sequence, one added column
        await pg.psql(`UPDATE app.texts SET t = t || 'x' WHERE id = 3; SELECT nextval('app.ticket_seq');`, dst);
        const fpC = await dataFingerprint(pg, dst);
        expect(fpC['app.texts']?.md5).not.toBe(fpA['app.texts']?.md5);
        expect(fpC['sequence:app.ticket_seq']?.rows).toBe(123456 + 7);
        await pg.psql('ALTER TABLE app.empty_table ADD COLUMN extra int;', dst);
        expect(await schemaDump(pg, dst)).not.toBe(schemaA);
      }
    }
  });

  it('fixture databases copied from the per-cluster template equal a direct load', async () => {
    for (const fixture of ['varied', 'vault'] as const) {
      const copied = await make(pg, fixture);
      const direct = await createDatabase(pg, undefined, fixture, { template: false });
      created.push([pg, direct]);
      expect(await schemaDump(pg, direct)).toBe(await schemaDump(pg, copied));
      expect(await dataFingerprint(pg, direct)).toEqual(await dataFingerprint(pg, copied));
    }
    expect((await listDatabases(pg)).filter((d) => d.startsWith('coffer_fixture'))).toEqual([]);
  });

  it('fillLargeTable adds incompressible, repeatable data', async () => {
    const a = await make(pg, 'empty');
    const b = await make(pg, 'empty');
    await Promise.all([fillLargeTable(pg, a, 2), fillLargeTable(pg, b, 2)]);
    const bytes = Number(await pg.psql('SELECT sum(length(payload)) FROM large_fill;', a));
    expect(bytes).toBe(2 * 1024 * 1024);
    expect(await dataFingerprint(pg, b)).toEqual(await dataFingerprint(pg, a));
    const hex = await pg.psql('SELECT encode(payload, $$hex$$) FROM large_fill WHERE id = 3;', a);
    const raw = Buffer.from(hex, 'hex');
    expect(raw.length).toBe(256 * 1024);
    expect(gzipSync(raw).length).toBeGreaterThan(raw.length * 0.99);
    await fillLargeTable(pg, a, 0.25); // appends distinct rows
    expect(await pg.psql('SELECT count(*), count(DISTINCT md5(payload)) FROM large_fill;', a)).toBe('9|9');
  });
});

describe('a second throwaway cluster ("fresh host")', () => {
  let second: ThrowawayCluster | undefined;
  beforeAll(async () => {
    const t0 = Date.now();
    second = await startThrowawayCluster({});
    console.log(`second throwaway cluster started in ${Date.now() - t0} ms`);
  });
  afterAll(async () => {
    await second?.stop();
  });

  it('is independent, restores a dump from the first cluster identically, and stops cleanly', async () => {
    const c = second!;
    expect(c.port).not.toBe(pg.port);
    expect(c.host).not.toBe(pg.host);
    expect(Object.keys(c.env()).sort()).toEqual(['PGHOST', 'PGPORT', 'PGUSER']);

    const src = await make(pg, 'varied');
    const dst = await createDatabase(c, 'restored', 'empty');
    await dumpRestore(pg, src, c, dst);
    expect(await schemaDump(c, dst)).toBe(await schemaDump(pg, src));
    expect(await dataFingerprint(c, dst)).toEqual(await dataFingerprint(pg, src));

    // TCP on 127.0.0.1 with scram-sha-256 passwords
    await c.psql(`CREATE ROLE tcp_user LOGIN PASSWORD 'secret-pw';`);
    const tcp = { PGHOST: '127.0.0.1', PGPORT: String(c.port), PGUSER: 'tcp_user' };
    expect(await runPsql(c.binDir, { ...tcp, PGPASSWORD: 'secret-pw' }, 'SELECT current_user;')).toBe('tcp_user');
    await expect(runPsql(c.binDir, { ...tcp, PGPASSWORD: 'wrong' }, 'SELECT 1;')).rejects.toThrow(/password authentication failed/);

    const pid = Number(readFileSync(join(c.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    expect(pid).toBeGreaterThan(0);
    expect(processRunning(pid)).toBe(true);
    await c.stop();
    expect(processRunning(pid)).toBe(false);
    expect(existsSync(c.dataDir)).toBe(false);
    expect(existsSync(c.host)).toBe(false);
    await c.stop(); // idempotent
    await expect(c.psql('SELECT 1;')).rejects.toBeInstanceOf(DatabaseError);
  });
});
