import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { execa } from 'execa';
import { PutBucketPolicyCommand, PutObjectCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { beforeAll, describe, expect, it } from 'vitest';
import { childEnv, createDatabase, dropDatabase, databaseExists, listDatabases, schemaDump, dataFingerprint, fillLargeTable, quoteIdent, quoteLiteral, uniqueDbName } from '../harness/pg.js';
import { createTestBucket } from '../harness/rgw.js';
import { baseEnv, drillNames, errorLine, runCoffer, s3Env } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { generateIdentity } from '../../src/crypto/age.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { startThrowawayCluster } from '../../src/demo/throwaway-cluster.js';

const f = useFixture({ name: 'restore-test', s3: true, db: 'varied' });
const pg = f.pg;
const rgwInfo = f.rgw!;
let manifest: BackupManifest;
const repoUrl = (): string => f.repo('r');

beforeAll(async () => {
  manifest = await f.backup(repoUrl(), f.db);
});

/** Scratch databases of restores into targets starting with `prefix` (other test files run restores concurrently). */
async function scratchLeft(prefix: string): Promise<string[]> {
  return (await listDatabases(pg)).filter((d) => d.startsWith(prefix) && d.includes('__restoring_'));
}

/** pg_restore processes still running on a scratch database of `target` (their command lines name it). */
async function pgRestoresOf(target: string): Promise<string[]> {
  const found: string[] = [];
  for (const pid of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const argv = await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8').then((t) => t.split('\0'), () => []);
    if (path.basename(argv[0] ?? '') === 'pg_restore' && argv.some((a) => a.includes(`${target}__restoring_`))) found.push(`${pid}: ${argv.join(' ')}`);
  }
  return found;
}

async function expectSameDatabase(a: string, b: string): Promise<void> {
  expect(await schemaDump(pg, b)).toEqual(await schemaDump(pg, a));
  expect(await dataFingerprint(pg, b)).toEqual(await dataFingerprint(pg, a));
}

describe('restore round trip', () => {
  it('streamed restore equals the source: schema and per-table data', async () => {
    const target = `${f.db}_restored`;
    const r = await f.run(['restore', '--from', repoUrl(), '--identity', f.identityFile, '--target-db', target, '--smoke', 'SELECT count(*) FROM pg_class', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as { target: string; checks: { tocTables: number; smoke: Array<{ output: string }> }; tables: number };
    expect(summary.target).toBe(target);
    expect(summary.checks.tocTables).toBeGreaterThan(5);
    expect(Number(summary.checks.smoke[0]!.output)).toBeGreaterThan(100);
    await expectSameDatabase(f.db, target);
    expect(await scratchLeft(f.db)).toEqual([]);
    await dropDatabase(pg, target);
  });

  it('--jobs 2 restores the same content and removes its spool', async () => {
    const target = `${f.db}_jobs`;
    const spoolDir = f.path('spool');
    await fsp.mkdir(spoolDir);
    const r = await f.run(['restore', '--from', repoUrl(), '--identity', f.identityFile, '--target-db', target, '--jobs', '2', '--spool-dir', spoolDir]);
    expect(r.code, r.stderr).toBe(0);
    await expectSameDatabase(f.db, target);
    expect(await fsp.readdir(spoolDir)).toEqual([]);
    // A --jobs restore that fails AFTER its spool was written (and restored from) removes the
    // spool too: the failure is a smoke query, after pg_restore --jobs read the spooled archive.
    const bad = await runCoffer(['restore', '--from', repoUrl(), '--identity', f.identityFile, '--target-db', `${target}_2`, '--jobs', '2', '--spool-dir', spoolDir, '--smoke', 'SELECT 1/0'], {
      env: f.env(),
    });
    expect(bad.code, bad.stderr).toBe(3);
    expect(bad.stderr).toMatch(/archive spooled/);
    expect(bad.stderr).toMatch(/pg_restore --jobs=2 finished/);
    expect(errorLine(bad.stderr)).toMatch(/^smoke check failed: SELECT 1\/0/);
    expect(await fsp.readdir(spoolDir)).toEqual([]);
    expect(await scratchLeft(f.db)).toEqual([]);
    await dropDatabase(pg, target);
  });

  it('a file encrypted by the age CLI (pg_dump -Fc | age -r) restores with --file', async () => {
    const file = f.path('by-age-cli.dump.age');
    await execa('bash', ['-c', 'set -o pipefail; "$1/pg_dump" -Fc "$2" | age -r "$3" > "$4"', 'x', pg.binDir, f.db, f.recipient, file], { env: { ...process.env, ...pg.env() } });
    const target = `${f.db}_agecli`;
    const r = await f.run(['restore', '--file', file, '--identity', f.identityFile, '--target-db', target]);
    expect(r.code, r.stderr).toBe(0);
    await expectSameDatabase(f.db, target);
    await dropDatabase(pg, target);
  });

  it('--output writes the decrypted archive, which pg_restore reads', async () => {
    const out = f.path('archive.dump');
    const r = await f.run(['restore', '--from', repoUrl(), '--identity', f.identityFile, '--output', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.statSync(out).mode & 0o777).toBe(0o600);
    const list = await execa(path.join(pg.binDir, 'pg_restore'), ['--list', out]);
    expect(String(list.stdout)).toContain('TABLE DATA');
  });

  it('--file --output writes every byte of a plain payload shorter than the read-ahead (512 bytes), compressed or not', async () => {
    // Such a payload ended inside the format check's read-ahead, and was written as an empty file.
    for (const n of [1, 100, 511, 512, 513, 5000]) {
      for (const zstd of [true, false]) {
        const plain = f.path(`short-${n}-${zstd}.sql`);
        await fsp.writeFile(plain, Buffer.alloc(n, 'select 1;\n'));
        const file = `${plain}.age`;
        await execa('bash', ['-c', `set -o pipefail; ${zstd ? 'zstd -q -c "$1"' : 'cat "$1"'} | age -r "$2" > "$3"`, 'x', plain, f.recipient, file]);
        const out = f.path(`short-${n}-${zstd}.out`);
        const r = await f.run(['restore', '--file', file, '--identity', f.identityFile, '--output', out]);
        expect(r.code, r.stderr).toBe(0);
        expect((await fsp.readFile(out)).equals(await fsp.readFile(plain)), `${n} bytes, zstd ${zstd}`).toBe(true);
      }
    }
  });
});

describe('a failed restore changes nothing', () => {
  it('wrong identity: clear error, exit 5, no database created', async () => {
    const other = await generateIdentity();
    const otherFile = f.path('wrong.txt');
    await fsp.writeFile(otherFile, other.fileText, { mode: 0o600 });
    const r = await f.run(['restore', '--from', repoUrl(), '--identity', otherFile, '--target-db', 'never_created']);
    expect(r.code).toBe(5);
    expect(errorLine(r.stderr)).toMatch(/no identity matches/);
    expect((await listDatabases(pg)).filter((d) => d.startsWith('never_created'))).toEqual([]);
  });

  it('one flipped byte in the middle, and a truncated object: failure, nothing under the target, scratch dropped', async () => {
    // A backup large enough to span many age chunks, so pg_restore is already running when the bad
    // byte arrives: 8 MB of rows is a ~16 MB object (250-odd 64 KiB chunks), the flip ~8 MB in,
    // far beyond what the pipes between coffer and pg_restore hold (24 MB only made it slower).
    const big = await createDatabase(pg, undefined, 'varied');
    await fillLargeTable(pg, big, 8);
    const r = await f.run(['backup', '--to', f.repo('tamper'), '--db', big, '--recipient', f.recipient, '--compress', 'none', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const m = (JSON.parse(r.stdout) as BackupManifest[])[0]!;
    const original = Buffer.from(await (await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: `tamper/${m.dump.key}` }))).Body!.transformToByteArray());
    for (const variant of ['flip', 'truncate'] as const) {
      const bytes = Buffer.from(original);
      let data: Buffer;
      if (variant === 'flip') {
        bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
        data = bytes;
      } else data = bytes.subarray(0, Math.floor(bytes.length * 0.7));
      const file = f.path(`${variant}.age`);
      await fsp.writeFile(file, data);
      const target = `${big}_${variant}`;
      const res = await f.run(['restore', '--file', file, '--identity', f.identityFile, '--target-db', target]);
      expect(res.code, `${variant}: ${res.stderr}`).toBe(5);
      expect(errorLine(res.stderr)).toMatch(/authentication failed|truncated/);
      expect(res.stderr).toContain('scratch database dropped');
      expect(await databaseExists(pg, target)).toBe(false);
      expect(await scratchLeft(big)).toEqual([]);
      // In the repository: the object replaced in place (as an attacker or bit rot would).
      await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: `tamper/${m.dump.key}`, Body: data }));
      const viaRepo = await f.run(['restore', '--from', f.repo('tamper'), '--identity', f.identityFile, '--target-db', target]);
      expect(viaRepo.code, viaRepo.stderr).toBe(5);
      expect(await databaseExists(pg, target)).toBe(false);
      expect(await scratchLeft(big)).toEqual([]);
      const verify = await f.run(['verify', '--from', f.repo('tamper'), '--identity', f.identityFile]);
      expect(verify.code).toBe(5);
    }
    await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: `tamper/${m.dump.key}`, Body: original }));
    const good = await f.run(['verify', '--from', f.repo('tamper'), '--identity', f.identityFile]);
    expect(good.code, good.stderr).toBe(0);
    await dropDatabase(pg, big);
  });

  it('an existing target is refused without --replace; with --replace it is kept aside', async () => {
    const target = await createDatabase(pg, undefined, 'vault');
    const fpBefore = await dataFingerprint(pg, target);
    const refused = await f.run(['restore', '--from', repoUrl(), '--identity', f.identityFile, '--target-db', target]);
    expect(refused.code).toBe(2);
    expect(errorLine(refused.stderr)).toMatch(/already exists.*--replace/);
    expect(await dataFingerprint(pg, target)).toEqual(fpBefore);

    const replaced = await f.run(['restore', '--from', repoUrl(), '--identity', f.identityFile, '--target-db', target, '--replace', '--json']);
    expect(replaced.code, replaced.stderr).toBe(0);
    const aside = (JSON.parse(replaced.stdout) as { replacedAside: string }).replacedAside;
    expect(aside).toMatch(new RegExp(`^${target}__before_\\d{8}T\\d{6}Z$`));
    expect(await dataFingerprint(pg, aside)).toEqual(fpBefore);
    await expectSameDatabase(f.db, target);
    await dropDatabase(pg, aside);
    await dropDatabase(pg, target);
  });

  it('--replace when <target>__before_<time> is taken already (a replace in the same second): kept aside under a name of its own, not failed after the restore', async () => {
    const target = await createDatabase(pg, undefined, 'vault');
    const fpBefore = await dataFingerprint(pg, target);
    const stamp = (d: Date): string => d.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
    const taken = Array.from({ length: 20 }, (_, i) => `${target}__before_${stamp(new Date(Date.now() + i * 1000))}`);
    for (const d of taken) await pg.psql(`CREATE DATABASE ${quoteIdent(d)};`);
    try {
      const r = await f.run(['restore', '--from', repoUrl(), '--identity', f.identityFile, '--target-db', target, '--replace', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const aside = (JSON.parse(r.stdout) as { replacedAside: string }).replacedAside;
      expect(aside).toMatch(new RegExp(`^${target}__before_\\d{8}T\\d{6}Z_[0-9a-f]{6}$`));
      expect(await dataFingerprint(pg, aside)).toEqual(fpBefore);
      await expectSameDatabase(f.db, target);
      await dropDatabase(pg, aside);
    } finally {
      for (const d of [...taken, target]) await dropDatabase(pg, d);
    }
  });

  it('a maintenance database without PL/pgSQL: a restore, and a --replace that ends a session of the target, still rename', async () => {
    // The waits around the rename are PL/pgSQL blocks; an administrator may have dropped the
    // language from the maintenance database. The rename used to fail there, after all the work.
    const maintenance = await createDatabase(pg);
    await pg.psql('DROP EXTENSION plpgsql;', maintenance);
    const target = uniqueDbName('noplpgsql');
    const args = ['restore', '--from', repoUrl(), '--identity', f.identityFile, '--target-db', target, '--maintenance-db', maintenance, '--json'];
    const first = await f.run(args);
    expect(first.code, first.stderr).toBe(0);
    await expectSameDatabase(f.db, target);
    const fpBefore = await dataFingerprint(pg, target);

    const session = spawn(path.join(pg.binDir, 'psql'), ['-X', '-qAt', '-d', target, '-c', 'SELECT pg_sleep(300);'], { env: childEnv(pg), stdio: 'ignore' });
    const ended = once(session, 'exit');
    const seen = `SELECT count(*) FROM pg_stat_activity WHERE datname = ${quoteLiteral(target)} AND query LIKE 'SELECT pg_sleep%';`;
    for (let i = 0; i < 200 && (await pg.psql(seen)).trim() !== '1'; i++) await new Promise((r) => setTimeout(r, 50));
    expect((await pg.psql(seen)).trim()).toBe('1');
    const second = await f.run([...args, '--replace']);
    session.kill();
    await ended;
    expect(second.code, second.stderr).toBe(0);
    const aside = (JSON.parse(second.stdout) as { replacedAside: string }).replacedAside;
    expect(await dataFingerprint(pg, aside)).toEqual(fpBefore);
    await expectSameDatabase(f.db, target);
    expect(await scratchLeft(target)).toEqual([]);
    for (const d of [aside, target, maintenance]) await dropDatabase(pg, d);
  });

  it('a restore stopped before its data (target exists, wrong identity) leaves no pg_restore behind', async () => {
    // A whole restore of a custom-format backup starts pg_restore before the survey and the
    // opening of the backup are done: a refusal or a failure then must end it.
    const target = await createDatabase(pg, undefined, 'vault');
    const refused = await f.run(['restore', '--from', repoUrl(), '--identity', f.identityFile, '--target-db', target]);
    expect(refused.code, refused.stderr).toBe(2);
    expect(await pgRestoresOf(target)).toEqual([]);
    const other = f.path('other-identity.txt');
    await fsp.writeFile(other, (await generateIdentity()).fileText, { mode: 0o600 });
    const fresh = `${target}_new`;
    const wrongKey = await f.run(['restore', '--from', repoUrl(), '--identity', other, '--target-db', fresh]);
    expect(wrongKey.code, wrongKey.stderr).toBe(5);
    expect(errorLine(wrongKey.stderr)).toMatch(/identit/i);
    expect(await pgRestoresOf(fresh)).toEqual([]);
    expect(await databaseExists(pg, fresh)).toBe(false);
    expect(await scratchLeft(fresh)).toEqual([]);
    await dropDatabase(pg, target);
  });

  it('a failing smoke check fails the restore and leaves nothing', async () => {
    const target = `${f.db}_smoke`;
    const r = await f.run(['restore', '--from', repoUrl(), '--identity', f.identityFile, '--target-db', target, '--smoke', 'SELECT COUNT(*) FROM no_such_table']);
    expect(r.code).toBe(3);
    expect(errorLine(r.stderr)).toMatch(/smoke check failed.*no_such_table/);
    expect(await databaseExists(pg, target)).toBe(false);
    expect(await scratchLeft(f.db)).toEqual([]);
  });
});

describe('verify and drill', () => {
  it("the summary's largest tables read back whole: a name with a newline and a tab, in a LATIN1 database", async () => {
    const db = f.dropAtEnd(uniqueDbName('latin_names'));
    await pg.psql(`CREATE DATABASE ${quoteIdent(db)} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;`);
    await pg.psql(`SET client_encoding = 'UTF8'; CREATE TABLE public."new\nline\tcafé" (id int); INSERT INTO public."new\nline\tcafé" SELECT generate_series(1, 5);`, db);
    const repo = f.path('latin-names');
    await f.backup(repo, db);
    const target = f.dropAtEnd(uniqueDbName('latin_names_r'));
    const r = await f.run(['restore', '--from', repo, '--db', db, '--identity', f.identityFile, '--target-db', target, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { largestTables: unknown }).largestTables).toEqual([{ table: 'public."new\nline\tcafé"', rows: 5 }]);
  });

  it('a file repository that is not there (an unmounted directory) is named as such, not taken for one without backups (exit 4)', async () => {
    const missing = f.path('not-mounted', 'backups');
    for (const args of [['restore', '--target-db', uniqueDbName('nowhere')], ['verify'], ['drill']]) {
      const r = await f.run([args[0]!, '--from', missing, '--identity', f.identityFile, ...args.slice(1)]);
      expect(r.code, r.stderr).toBe(4);
      expect(errorLine(r.stderr)).toBe(`the repository directory ${missing} does not exist (check the repository path (--from, --to, COFFER_REPOSITORY), and that the volume it is on is mounted)`);
    }
  });

  it('a drill against a server it cannot reach: one error line, the cause (no false "could not drop")', async () => {
    const d = await f.run(['drill', '--from', repoUrl(), '--identity', f.identityFile], { PGHOST: '127.0.0.1', PGPORT: '1' });
    expect(d.code, d.stderr).toBe(3);
    const errors = d.stderr.split('\n').filter((l) => l.includes('"level":"error"'));
    expect(errors.length, d.stderr).toBe(1);
    expect(errors[0]).toMatch(/could not connect|Connection refused|check PGHOST/);
  });

  it('a drill names the databases killed drills left (they have names of their own each time)', async () => {
    const left = ['coffer_drill_0badc0de__restoring_0badf00d', 'coffer_drill_0badc0de'];
    for (const d of left) await pg.psql(`CREATE DATABASE ${d};`);
    try {
      const d = await f.run(['drill', '--from', repoUrl(), '--identity', f.identityFile]);
      expect(d.code, d.stderr).toBe(0);
      for (const name of left) expect(d.stderr).toContain(`a database of an earlier drill is still there (that drill was killed before it could drop it); once no drill runs, drop it: DROP DATABASE \\"${name}\\" WITH (FORCE);`);
    } finally {
      for (const d of left) await dropDatabase(pg, d);
    }
  });

  it('verify passes on a good backup; drill restores, checks, records and drops', async () => {
    const v = await f.run(['verify', '--from', repoUrl(), '--identity', f.identityFile, '--backup', 'all', '--json']);
    expect(v.code, v.stderr).toBe(0);
    const results = JSON.parse(v.stdout) as Array<{ tocEntries: number; tables: number }>;
    expect(results.length).toBe(1);
    expect(results[0]!.tables).toBeGreaterThan(5);

    const resultFile = f.path('drill.json');
    // Other test files share the cluster (and run drills too): look only at what this drill made.
    const drillLeft = async (stderr: string): Promise<string[]> => {
      const names = drillNames(stderr);
      expect(names.length, stderr).toBe(1);
      return (await listDatabases(pg)).filter((d) => names.some((n) => d.startsWith(n)));
    };
    const d = await f.run(['drill', '--from', repoUrl(), '--identity', f.identityFile, '--smoke', 'SELECT 1', '--result-file', resultFile]);
    expect(d.code, d.stderr).toBe(0);
    const rec = JSON.parse(await fsp.readFile(resultFile, 'utf8')) as { ok: boolean; tables: number; rows: unknown[]; backupId: string };
    expect(rec.ok).toBe(true);
    expect(rec.backupId).toBe(manifest.id);
    expect(rec.tables).toBeGreaterThan(5);
    expect(rec.rows.length).toBeGreaterThan(0);
    expect(await drillLeft(d.stderr)).toEqual([]);

    const bad = await f.run(['drill', '--from', repoUrl(), '--identity', f.identityFile, '--smoke', 'SELECT * FROM missing_table']);
    expect(bad.code).toBe(3);
    expect((JSON.parse(bad.stdout) as { ok: boolean }).ok).toBe(false);
    expect(await drillLeft(bad.stderr)).toEqual([]);
  });
});

describe('disaster recovery on a fresh host', () => {
  it('a second cluster, only the identity and a read-only S3 user: restore latest + smoke query', async () => {
    const vault = await createDatabase(pg, undefined, 'vault');
    const drBucket = await createTestBucket(f.s3);
    const b = await f.run(['backup', '--to', `s3://${drBucket}/prod`, '--db', vault, '--recipient', f.recipient]);
    expect(b.code, b.stderr).toBe(0);
    // The reader may only list and get: a bucket policy for RGW user "reader".
    await f.s3.send(
      new PutBucketPolicyCommand({
        Bucket: drBucket,
        Policy: JSON.stringify({
          Version: '2012-10-17',
          Statement: [
            { Effect: 'Allow', Principal: { AWS: ['arn:aws:iam:::user/reader'] }, Action: ['s3:ListBucket'], Resource: [`arn:aws:s3:::${drBucket}`] },
            { Effect: 'Allow', Principal: { AWS: ['arn:aws:iam:::user/reader'] }, Action: ['s3:GetObject'], Resource: [`arn:aws:s3:::${drBucket}/*`] },
          ],
        }),
      }),
    );
    const fresh = await startThrowawayCluster({});
    try {
      const drEnv = baseEnv({ ...fresh.env(), COFFER_PG_BIN: fresh.binDir, ...s3Env(rgwInfo, 'reader') });
      const r = await runCoffer(
        ['restore', '--from', `s3://${drBucket}/prod`, '--backup', 'latest', '--identity', f.identityFile, '--target-db', 'vault', '--smoke', 'SELECT COUNT(*) FROM vault_status;', '--json'],
        { env: drEnv },
      );
      expect(r.code, r.stderr).toBe(0);
      const s = JSON.parse(r.stdout) as { checks: { smoke: Array<{ output: string }> } };
      expect(Number(s.checks.smoke[0]!.output)).toBeGreaterThan(0);
      expect((await fresh.psql('SELECT COUNT(*) FROM vault_status;', 'vault')).trim()).toBe(s.checks.smoke[0]!.output);
      // The reader cannot write into the repository.
      const w = await runCoffer(['backup', '--to', `s3://${drBucket}/prod`, '--db', 'vault', '--recipient', f.recipient], { env: drEnv });
      expect(w.code).toBe(4);
    } finally {
      await fresh.stop();
      await dropDatabase(pg, vault);
    }
  });
});
