/**
 * Acceptance (issue 5): during a backup, no process's command line (/proc/<pid>/cmdline)
 * holds the database password or the S3 secret key; neither does any log line, the manifest
 * or `coffer config show`. Both secrets come from files named in coffer.yaml (the Kubernetes
 * Secret pattern), so the run only succeeds if they were really used: the role authenticates
 * with scram-sha-256 over TCP, and no AWS_* credentials are in the environment.
 */
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDatabase, dropDatabase, pgFromInject, quoteIdent, quoteLiteral } from '../harness/pg.js';
import { createTestBucket, listAllKeys, s3ClientFor } from '../harness/rgw.js';
import { baseEnv, runCoffer, startCoffer } from '../harness/cli.js';
import { generateIdentity } from '../../src/crypto/age.js';

const rgwInfo = inject('rgw')!;
const pgInfo = inject('pg')!;
const pg = pgFromInject(pgInfo);

const role = `leak_${randomBytes(4).toString('hex')}`;
const password = `pw-${randomBytes(16).toString('hex')}`;
const s3Secret = rgwInfo.admin.secretAccessKey;

let tmp: string;
let db: string;
let s3: S3Client;
let bucket: string;

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-secrets-'));
  s3 = s3ClientFor(rgwInfo, rgwInfo.admin);
  bucket = await createTestBucket(s3);
  db = await createDatabase(pg, undefined, 'varied');
  await pg.psql(`CREATE ROLE ${quoteIdent(role)} LOGIN SUPERUSER PASSWORD ${quoteLiteral(password)};`);

  const recipient = (await generateIdentity()).recipient;
  await fsp.mkdir(path.join(tmp, 'secrets'), { mode: 0o700 });
  await fsp.writeFile(path.join(tmp, 'secrets', 'pgpassword'), `${password}\n`, { mode: 0o600 });
  await fsp.writeFile(path.join(tmp, 'secrets', 's3-secret'), `${s3Secret}\n`, { mode: 0o600 });
  // pg_dump through a wrapper that records its environment and holds the dump open for a
  // moment, so the scan below sees the running pg_dump.
  const wrapper = path.join(tmp, 'pg_dump-slow');
  await fsp.writeFile(
    wrapper,
    [
      '#!/bin/sh',
      `case " $* " in *" --version "*) ;; *) env > "${tmp}/wrapper-env"; sleep 2 ;; esac`,
      `exec "${pgInfo.binDir}/pg_dump" "$@"`,
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  await fsp.writeFile(
    path.join(tmp, 'coffer.yaml'),
    [
      `repository: s3://${bucket}/leak`,
      `s3Endpoint: ${rgwInfo.endpoint}`,
      `s3Region: ${rgwInfo.region}`,
      `s3AccessKeyId: ${rgwInfo.admin.accessKeyId}`,
      's3SecretAccessKeyFile: secrets/s3-secret',
      `dbname: "host=127.0.0.1 port=${pgInfo.port} user=${role}"`,
      'pgPasswordFile: secrets/pgpassword',
      `pgBin: ${pgInfo.binDir}`,
      `recipients: [${recipient}]`,
      'backup:',
      `  db: [${db}]`,
      `  pgDumpCommand: ${wrapper}`,
      `  lockDir: ${tmp}/locks`,
      '',
    ].join('\n'),
  );
});

afterAll(async () => {
  s3?.destroy();
  await dropDatabase(pg, db).catch(() => undefined);
  await pg.psql(`DROP ROLE IF EXISTS ${quoteIdent(role)};`).catch(() => undefined);
  await fsp.rm(tmp, { recursive: true, force: true });
});

/** Every process's command line, NUL separators as spaces (processes may vanish meanwhile). */
async function allCommandLines(): Promise<string[]> {
  const out: string[] = [];
  for (const pid of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const b = await fsp.readFile(`/proc/${pid}/cmdline`);
      if (b.length > 0) out.push(b.toString('utf8').replace(/\0/g, ' '));
    } catch {
      // gone
    }
  }
  return out;
}

describe('secrets never leak', () => {
  it('not in any command line, log line, the manifest or config show, yet both were used', async () => {
    // A clean environment: no PG* password, no AWS credentials; only what coffer.yaml says.
    const env = baseEnv({ COFFER_LOG_FORMAT: 'json' });
    const run = startCoffer(['backup'], { env, cwd: tmp });
    const seen = new Set<string>();
    let done = false;
    void run.finally(() => {
      done = true;
    });
    while (!done) {
      for (const line of await allCommandLines()) seen.add(line);
      await new Promise((r) => setTimeout(r, 20));
    }
    const r = await run;
    const stderr = String(r.stderr);
    expect(r.exitCode, stderr).toBe(0);

    // The scan really watched the dump: pg_dump's command line, with its connection string.
    const dumps = [...seen].filter((l) => l.includes('pg_dump') && l.includes(`user='${role}'`));
    expect(dumps.length, [...seen].filter((l) => l.includes('pg_dump')).join('\n')).toBeGreaterThan(0);
    for (const line of seen) {
      expect(line).not.toContain(password);
      expect(line).not.toContain(s3Secret);
    }

    // The password reached pg_dump through its environment; the S3 secret did not.
    const childEnv = await fsp.readFile(path.join(tmp, 'wrapper-env'), 'utf8');
    expect(childEnv).toContain(`PGPASSWORD=${password}`);
    expect(childEnv).not.toContain(s3Secret);

    // Logs.
    expect(stderr.length).toBeGreaterThan(0);
    expect(stderr).not.toContain(password);
    expect(stderr).not.toContain(s3Secret);

    // Every object written, the manifest included.
    const keys = await listAllKeys(s3, bucket, 'leak/');
    expect(keys.some((k) => k.endsWith('.manifest.json'))).toBe(true);
    for (const key of keys) {
      const o = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      const body = Buffer.from(await o.Body!.transformToByteArray());
      expect(body.includes(password), key).toBe(false);
      expect(body.includes(s3Secret), key).toBe(false);
    }

    // config show, text and JSON: the secrets are there, as ***.
    for (const args of [['config', 'show'], ['config', 'show', '--json']]) {
      const shown = await runCoffer(args, { env, cwd: tmp });
      expect(shown.code, shown.stderr).toBe(0);
      expect(shown.stdout).not.toContain(password);
      expect(shown.stdout).not.toContain(s3Secret);
      expect(shown.stderr).not.toContain(password);
      if (args.includes('--json')) {
        const backup = (JSON.parse(shown.stdout) as { commands: Record<string, Record<string, { value: unknown; source: string }>> }).commands.backup!;
        expect(backup.pgPassword).toEqual({ value: '***', source: 'config file coffer.yaml: pgPasswordFile' });
        expect(backup.s3SecretAccessKey).toEqual({ value: '***', source: 'config file coffer.yaml: s3SecretAccessKeyFile' });
      } else {
        expect(shown.stdout).toMatch(/^ {2}pgPassword +\*\*\* +\(config file coffer\.yaml: pgPasswordFile\)$/m);
        expect(shown.stdout).toMatch(/^ {2}s3SecretAccessKey +\*\*\* +\(config file coffer\.yaml: s3SecretAccessKeyFile\)$/m);
      }
    }
  });

  it('a password inside --dbname stays out of the logs and config show, even when the run fails', async () => {
    // Wrong database name: libpq's error is logged; the password in the URI must not be.
    const uri = `postgresql://${role}:${password}@127.0.0.1:${pgInfo.port}/no_such_db_${randomBytes(3).toString('hex')}`;
    const env = baseEnv({ COFFER_DBNAME: uri, COFFER_PG_BIN: pgInfo.binDir, COFFER_LOG_FORMAT: 'text' });
    const recipient = (await generateIdentity()).recipient;
    // A working directory without coffer.yaml (its `backup: db:` would name the database).
    const cwd = await fsp.mkdtemp(path.join(tmp, 'nocfg-'));
    const r = await runCoffer(['backup', '--to', path.join(cwd, 'repo'), '--recipient', recipient, '--lock-dir', path.join(cwd, 'locks')], { env, cwd });
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/no_such_db/);
    expect(r.stderr).not.toContain(password);
    const shown = await runCoffer(['config', 'show'], { env, cwd });
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toContain(`postgresql://${role}:***@127.0.0.1`);
    expect(shown.stdout).not.toContain(password);
  });
});
