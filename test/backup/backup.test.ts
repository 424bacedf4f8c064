import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { execa } from 'execa';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { createDatabase, dropDatabase, fillLargeTable } from '../harness/pg.js';
import { listAllKeys, listMultipartUploads } from '../harness/rgw.js';
import { baseEnv, errorLine, runCoffer, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { encodeManifest, decodeManifest, type BackupManifest } from '../../src/catalog/manifest.js';
import { backupKeys, compactTimestamp } from '../../src/catalog/layout.js';

const f = useFixture({ name: 'backup-test', s3: true, db: 'varied' });
const pg = f.pg;

async function s3Bytes(key: string): Promise<Buffer> {
  const out = await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: key }));
  return Buffer.from(await out.Body!.transformToByteArray());
}

/** age CLI → zstd → file, then pg_restore --list: the standard tools read the stored object. */
async function restoreListWithStandardTools(file: string, compressed: boolean): Promise<string> {
  const script = `set -o pipefail; age -d -i "$1" "$2" ${compressed ? '| zstd -d -q' : ''} > "$2.archive" && "$3/pg_restore" --list "$2.archive"`;
  const r = await execa('bash', ['-c', script, 'x', f.identityFile, file, pg.binDir], { reject: false });
  expect(r.exitCode, String(r.stderr)).toBe(0);
  return String(r.stdout);
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

describe('backup of a varied database', () => {
  it('to RGW: a standard age file, readable by pg_restore, with a matching manifest', async () => {
    const prefix = 'varied';
    const r = await f.run(['backup', '--to', f.repo(prefix), '--db', f.db, '--recipient', f.recipient, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const [m] = JSON.parse(r.stdout) as BackupManifest[];
    expect(m!.database).toBe(f.db);
    const keys = await listAllKeys(f.s3, f.bucket, `${prefix}/`);
    // The dump, its archive index (encrypted like it) and the manifest.
    expect(m!.index?.key).toBe(m!.dump.key.replace(/\.dump\.zst\.age$/, '.index.json.age'));
    expect(keys.sort()).toEqual([`${prefix}/${m!.dump.key}`, `${prefix}/${m!.index!.key}`, `${prefix}/${m!.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json')}`].sort());

    const stored = decodeManifest(await s3Bytes(`${prefix}/${m!.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json')}`), 'manifest');
    expect(stored).toEqual(m);
    const obj = await s3Bytes(`${prefix}/${m!.dump.key}`);
    expect(obj.length).toBe(m!.dump.size);
    expect(sha256(obj)).toBe(m!.dump.sha256);
    expect(obj.subarray(0, 22).toString()).toBe('age-encryption.org/v1\n');

    const file = f.path('varied.dump.zst.age');
    await fsp.writeFile(file, obj);
    const toc = await restoreListWithStandardTools(file, true);
    expect(toc).toContain('TABLE DATA');
    expect(toc).toContain('MATERIALIZED VIEW');
    expect(toc).toContain('BLOB');
    // pg_dump's output size (counted by dd between pg_dump and zstd): exactly the decompressed archive.
    expect(m!.dump.dumpBytes).toBe(fs.statSync(`${file}.archive`).size);
    expect(m!.encryption.recipients).toEqual([f.recipient]);
    expect(m!.postgres.serverVersionNum).toBeGreaterThanOrEqual(150000);
    expect(m!.manualRestore).toContain('zstd -d');
  });

  it('to a local repository: files 0600 in 0700 directories, no temp files left', async () => {
    const repo = f.path('repo-local');
    for (const compress of ['zstd:3', 'gzip:1', 'none']) {
      const r = await f.run(['backup', '--to', `file://${repo}`, '--db', f.db, '--recipient', f.recipient, '--compress', compress, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const [m] = JSON.parse(r.stdout) as BackupManifest[];
      const file = path.join(repo, m!.dump.key);
      const bytes = await fsp.readFile(file);
      expect(sha256(bytes)).toBe(m!.dump.sha256);
      expect(bytes.length).toBe(m!.dump.size);
      expect(fs.statSync(file).mode & 0o777).toBe(0o600);
      expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
      const toc = await restoreListWithStandardTools(file, compress.startsWith('zstd'));
      expect(toc).toContain('TABLE DATA');
      expect(m!.dump.dumpBytes).toBe(fs.statSync(`${file}.archive`).size);
      expect(m!.compression.kind).toBe(compress === 'none' ? 'none' : compress.startsWith('gzip') ? 'pgdump-gzip' : 'zstd');
    }
    const all = execaSyncFind(repo);
    expect(all.filter((f) => f.includes('.coffer-tmp-'))).toEqual([]);
    const list = await f.run(['list', '--from', repo, '--json']);
    expect(list.code, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as unknown[]).length).toBe(3);
  });
});

function execaSyncFind(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(p);
    }
  };
  walk(dir);
  return out;
}

describe('list', () => {
  it('shows every completed backup across more than 1,000 keys, newest first', async () => {
    const prefix = 'many';
    const db = await createDatabase(pg, undefined, 'vault');
    // 1,100 synthetic manifests (older than the real backup), uploaded in parallel.
    const base = Date.UTC(2025, 0, 1);
    const synthetic: string[] = [];
    const jobs: Array<() => Promise<unknown>> = [];
    for (let i = 0; i < 1100; i++) {
      const started = new Date(base + i * 3_600_000);
      const id = `${compactTimestamp(started)}-${i.toString(16).padStart(8, '0')}`;
      const keys = backupKeys(db, 'daily', id, 'custom+zstd');
      const m: BackupManifest = syntheticManifest(id, db, keys.dump, started);
      synthetic.push(id);
      jobs.push(() => f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: `${prefix}/${keys.manifest}`, Body: encodeManifest(m) })));
    }
    await runPool(jobs, 24);
    const r = await f.run(['backup', '--to', f.repo(prefix), '--db', db, '--recipient', f.recipient, '--label', 'pre-extend-expiry', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const [real] = JSON.parse(r.stdout) as BackupManifest[];
    expect(real!.tier).toBe('manual');
    expect(real!.label).toBe('pre-extend-expiry');

    const list = await f.run(['list', '--from', f.repo(prefix), '--db', db, '--json']);
    expect(list.code, list.stderr).toBe(0);
    const rows = JSON.parse(list.stdout) as Array<{ id: string; label: string | null }>;
    expect(rows.length).toBe(1101);
    expect(rows[0]!.id).toBe(real!.id);
    expect(rows[0]!.label).toBe('pre-extend-expiry');
    expect(new Set(rows.map((x) => x.id))).toEqual(new Set([...synthetic, real!.id]));
    const ids = rows.map((x) => x.id);
    expect(ids).toEqual([...ids].sort().reverse());

    const text = await f.run(['list', '--from', f.repo(prefix)]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout.split('\n')[1]).toContain(real!.id);
    expect(text.stdout).toContain('pre-extend-expiry');
    await dropDatabase(pg, db);
  });
});

function syntheticManifest(id: string, db: string, dumpKey: string, started: Date): BackupManifest {
  return {
    format: 'coffer-backup-manifest',
    formatVersion: 1,
    id,
    database: db,
    tier: 'daily',
    label: null,
    kind: 'custom',
    cofferVersion: '0.0.0',
    host: 'synthetic',
    postgres: { serverVersion: '15', serverVersionNum: 150000, pgDumpVersion: 'pg_dump 15', pgDumpCommand: ['pg_dump'], databaseSizeBytes: 1 },
    compression: { kind: 'zstd', level: 1 },
    encryption: { format: 'age-v1', recipients: [f.recipient] },
    dump: { key: dumpKey, size: 1, sha256: '0'.repeat(64), dumpBytes: 1 },
    globals: null,
    startedAt: started.toISOString(),
    finishedAt: started.toISOString(),
    durationMs: 0,
    manualRestore: '',
  };
}

async function runPool(jobs: Array<() => Promise<unknown>>, n: number): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < jobs.length) await jobs[next++]!();
    }),
  );
}

describe('a failed backup leaves nothing that looks like a backup', () => {
  it('pg_dump killed mid-stream: non-zero exit, no manifest, no multipart upload left', async () => {
    const db = await createDatabase(pg, undefined, 'empty');
    await fillLargeTable(pg, db, 160);
    const prefix = 'killed';
    const child = startCoffer(['backup', '--to', f.repo(prefix), '--db', db, '--recipient', f.recipient, '--compress', 'none', '--part-size', '5MiB'], { env: f.env() });
    // Wait until parts are being uploaded, then kill pg_dump by PID.
    const deadline = Date.now() + 60_000;
    let uploads: Array<{ key: string; uploadId: string }> = [];
    while (Date.now() < deadline) {
      uploads = await listMultipartUploads(f.s3, f.bucket, `${prefix}/`);
      if (uploads.length > 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(uploads.length).toBe(1);
    const pids = await pgDumpPids(db);
    expect(pids.length).toBe(1);
    process.kill(pids[0]!, 'SIGKILL');
    const r = await child;
    expect(r.exitCode).toBe(3);
    expect(errorLine(String(r.stderr))).toMatch(/pg_dump was killed by SIGKILL/);
    expect(await listAllKeys(f.s3, f.bucket, `${prefix}/`)).toEqual([]);
    expect(await listMultipartUploads(f.s3, f.bucket, `${prefix}/`)).toEqual([]);
    const list = await f.run(['list', '--from', f.repo(prefix), '--json']);
    expect(JSON.parse(list.stdout)).toEqual([]);
    await dropDatabase(pg, db);
  });
});

/** PIDs of pg_dump processes dumping `db` (from /proc, matching the conninfo argument). */
async function pgDumpPids(db: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = (await fsp.readFile(`/proc/${name}/cmdline`, 'utf8')).split('\0');
      if (argv[0]?.endsWith('pg_dump') && argv.some((a) => a.includes(db))) pids.push(Number(name));
    } catch {
      // gone
    }
  }
  return pids;
}

describe('clear one-line errors, non-zero exits, nothing left behind', () => {
  it('wrong password, unknown database, unreachable endpoint, missing bucket, bad recipient', async () => {
    const role = `pwtest_${Date.now()}`;
    await pg.psql(`CREATE ROLE ${role} LOGIN PASSWORD 'right-secret'`);
    const prefix = 'errors';
    const cases: Array<{ name: string; args: string[]; env: Record<string, string>; code: number; msg: RegExp }> = [
      {
        name: 'wrong password',
        args: ['--db', f.db],
        env: f.env({ PGHOST: '127.0.0.1', PGUSER: role, PGPASSWORD: 'wrong-secret' }),
        code: 3,
        msg: /password authentication failed.*check PGPASSWORD/,
      },
      { name: 'unknown database', args: ['--db', 'no_such_db_here'], env: f.env(), code: 3, msg: /database "no_such_db_here" does not exist/ },
      {
        name: 'unreachable S3 endpoint',
        args: ['--db', f.db],
        env: f.env({ AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:9' }),
        code: 4,
        msg: /cannot reach the S3 endpoint/,
      },
      { name: 'missing bucket', args: ['--db', f.db, '--to', `s3://no-such-bucket-${Date.now()}/x`], env: f.env(), code: 4, msg: /bucket does not exist/ },
      { name: 'malformed recipient', args: ['--db', f.db, '--recipient', 'age1notarecipient'], env: f.env(), code: 2, msg: /recipient/ },
    ];
    for (const c of cases) {
      const key = c.args.includes('--recipient') ? [] : ['--recipient', f.recipient];
      const args = ['backup', '--to', f.repo(prefix), ...key, ...c.args];
      const r = await runCoffer(args, { env: c.env, timeoutMs: 90_000 });
      expect(r.code, `${c.name}: ${r.stderr}`).toBe(c.code);
      const line = errorLine(r.stderr);
      expect(line, c.name).toMatch(c.msg);
      expect(line.includes('\n'), c.name).toBe(false);
      expect(r.stderr).not.toContain('right-secret');
      expect(r.stderr).not.toContain('wrong-secret');
    }
    expect(await listAllKeys(f.s3, f.bucket, `${prefix}/`)).toEqual([]);
    expect(await listMultipartUploads(f.s3, f.bucket, `${prefix}/`)).toEqual([]);
    await pg.psql(`DROP ROLE ${role}`);
  });

  it('zstd or dd not installed: exit 2 naming the tool and what to do, nothing stored', async () => {
    // PATH without zstd (only dd), and PATH with neither; pg_dump and psql come from COFFER_PG_BIN.
    const onlyDd = f.path('path-only-dd');
    await fsp.mkdir(onlyDd, { recursive: true });
    await fsp.symlink(execaSyncWhich('dd'), path.join(onlyDd, 'dd'));
    const empty = f.path('path-empty');
    await fsp.mkdir(empty, { recursive: true });
    const prefix = 'missing-tools';
    for (const [dir, tool] of [
      [onlyDd, /^zstd: zstd not found on PATH.*install zstd/],
      [empty, /^dd \(counting the dump\): dd not found on PATH.*install coreutils/],
    ] as const) {
      const r = await f.run(['backup', '--to', f.repo(prefix), '--db', f.db, '--recipient', f.recipient], { PATH: dir });
      expect(r.code, r.stderr).toBe(2);
      expect(errorLine(r.stderr)).toMatch(tool);
    }
    // A PostgreSQL client program missing (from PATH, or a command given that does not exist): exit 2 as well, naming what to install.
    for (const flag of ['--pg-dump-command', '--psql-command']) {
      const r = await f.run(['backup', '--to', f.repo(prefix), '--db', f.db, '--recipient', f.recipient, flag, `/nonexistent/${flag.slice(2, -8).replace('-', '_')}`]);
      expect(r.code, r.stderr).toBe(2);
      expect(errorLine(r.stderr)).toMatch(/\/nonexistent\/(pg_dump|psql) not found.*install the PostgreSQL client/);
    }
    // Without zstd, --compress none still works.
    const ok = await f.run(['backup', '--to', f.repo(prefix), '--db', f.db, '--recipient', f.recipient, '--compress', 'none'], { PATH: empty });
    expect(ok.code, ok.stderr).toBe(0);
    expect((await listAllKeys(f.s3, f.bucket, `${prefix}/`)).filter((k) => k.endsWith('.manifest.json'))).toHaveLength(1);
    expect(await listMultipartUploads(f.s3, f.bucket, `${prefix}/`)).toEqual([]);
  });
});

function execaSyncWhich(cmd: string): string {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir, cmd);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`${cmd} not found on PATH`);
}

describe('keygen', () => {
  it('writes a 0600 identity usable by age -d, prints a recipient usable by age -r, never overwrites', async () => {
    const out = f.path('keys', 'new-identity.txt');
    const r = await runCoffer(['keygen', '--out', out], { env: baseEnv() });
    expect(r.code, r.stderr).toBe(0);
    const rcpt = r.stdout.trim();
    expect(rcpt).toMatch(/^age1[02-9ac-hj-np-z]{58}$/);
    expect(fs.statSync(out).mode & 0o777).toBe(0o600);
    const text = await fsp.readFile(out, 'utf8');
    expect(text).toMatch(/^# created: \d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\n# public key: age1\w+\nAGE-SECRET-KEY-1[0-9A-Z]+\n$/);
    expect(text).toContain(`# public key: ${rcpt}\n`);
    // Binary output: execa strips a final newline byte unless told not to (1 run in 256 failed).
    const enc = await execa('age', ['-r', rcpt], { input: 'hello coffer', encoding: 'buffer', stripFinalNewline: false });
    const dec = await execa('age', ['-d', '-i', out], { input: enc.stdout as Uint8Array });
    expect(String(dec.stdout)).toBe('hello coffer');
    const again = await runCoffer(['keygen', '--out', out], { env: baseEnv() });
    expect(again.code).toBe(2);
    expect(errorLine(again.stderr)).toMatch(/already exists/);
    expect(await fsp.readFile(out, 'utf8')).toBe(text);
    // Without --out, stdout that is not a terminal gets the identity.
    const piped = await runCoffer(['keygen'], { env: baseEnv() });
    expect(piped.code).toBe(0);
    expect(piped.stdout).toMatch(/^# created: .*\n# public key: age1.*\nAGE-SECRET-KEY-1/);
  });
});
