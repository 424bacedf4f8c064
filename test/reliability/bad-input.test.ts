/**
 * The bad-input corpus: malformed repository URLs, recipients, identity files, backup ids,
 * manifests in a repository, hostile database names and malformed options. Every error case
 * gives one clear line with its documented exit code and changes nothing (the bucket listing and
 * the databases are compared before and after); the hostile names that are valid really work.
 */
import * as fsp from 'node:fs/promises';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorLine, runCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { createDatabase, dataFingerprint, databaseExists, listDatabases, quoteIdent } from '../harness/pg.js';
import { listAllKeys } from '../harness/rgw.js';
import { backupKeys } from '../../src/catalog/layout.js';
import { encodeManifest, type BackupManifest } from '../../src/catalog/manifest.js';
import { record, writeResults } from './matrix.js';

const f = useFixture({ name: 'corpus', s3: true });
const pg = f.pg;

let real: BackupManifest;
const suffix = Math.random().toString(16).slice(2, 8);
/** A database that SQL injection through a name would drop. */
const sentinel = `bv_${suffix}`;
/** A source database with quotes, spaces, unicode and SQL metacharacters in its name. */
const source = `Ünï "q" 'x'; DROP DATABASE ${sentinel}; --`;
/** The target name. */
const hostileTarget = `x"; DROP DATABASE ${sentinel}; --`;
const repo = (): string => f.repo('corpus');
const BAD_IDS = { missingField: '20200101T000000Z-0000000a', wrongVersion: '20200101T000000Z-0000000b', notJson: '20200101T000000Z-0000000c', missingObject: '20200101T000000Z-0000000d' };

interface Case {
  name: string;
  group: string;
  args: () => string[];
  code: number;
  msg: RegExp;
  env?: () => Record<string, string>;
  /** Strings that must not appear anywhere in the output (secrets). */
  never?: () => string[];
}

let secretIdentity = '';
const file = (name: string): string => f.path(name);

beforeAll(async () => {
  await createDatabase(pg, f.dropAtEnd(sentinel), 'empty');
  await createDatabase(pg, f.dropAtEnd(source), 'vault');
  real = await f.backup(repo(), source);

  // Identity files of every kind.
  const id = await fsp.readFile(f.identityFile, 'utf8');
  secretIdentity = id.split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-'))!;
  await fsp.writeFile(file('crlf.txt'), id.replace(/\n/g, '\r\n'), { mode: 0o600 });
  await fsp.writeFile(file('open.txt'), id, { mode: 0o644 });
  await fsp.chmod(file('open.txt'), 0o644);
  await fsp.writeFile(file('truncated.txt'), `${secretIdentity.slice(0, 40)}\n`, { mode: 0o600 });
  await fsp.writeFile(file('public.txt'), `${f.recipient}\n`, { mode: 0o600 });
  await fsp.writeFile(file('empty.txt'), '', { mode: 0o600 });
  await fsp.writeFile(file('ssh.txt'), '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n', { mode: 0o600 });
  await fsp.writeFile(file('encrypted.txt'), '-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IHNjcnlwdA==\n-----END AGE ENCRYPTED FILE-----\n', { mode: 0o600 });
  await fsp.writeFile(file('binary.txt'), Buffer.from([0, 1, 2, 3, 255, 254]), { mode: 0o600 });
  await fsp.writeFile(file('recipients-empty.txt'), '# nobody\n', { mode: 0o600 });
  await fsp.writeFile(file('recipients-bad.txt'), `${f.recipient}\nage1thisisnotvalid\n`, { mode: 0o600 });

  // Bad manifests beside the real backup (older ids, so `latest` is still the real one).
  const put = (id: string, body: Buffer | string): Promise<unknown> =>
    f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: `corpus/${backupKeys(source, real.tier, id, 'custom+zstd').manifest}`, Body: body }));
  const variant = (id: string): BackupManifest => ({ ...real, id, dump: { ...real.dump, key: backupKeys(source, real.tier, id, 'custom+zstd').dump } });
  const missingField = variant(BAD_IDS.missingField) as Partial<BackupManifest>;
  delete missingField.dump;
  await put(BAD_IDS.missingField, Buffer.from(JSON.stringify(missingField)));
  await put(BAD_IDS.wrongVersion, Buffer.from(JSON.stringify({ ...variant(BAD_IDS.wrongVersion), formatVersion: 2 })));
  await put(BAD_IDS.notJson, '{"format": "coffer-backup-manifest", ');
  await put(BAD_IDS.missingObject, encodeManifest(variant(BAD_IDS.missingObject)));
});

afterAll(() => writeResults('bad-input'));

const restore = (...extra: string[]): string[] => ['restore', '--from', repo(), '--identity', f.identityFile, '--target-db', 'corpus_never', ...extra];
const backup = (...extra: string[]): string[] => ['backup', '--to', repo(), '--db', source, '--recipient', f.recipient, ...extra];
const withIdentity = (name: string): string[] => ['restore', '--from', repo(), '--identity', file(name), '--target-db', 'corpus_never'];

const cases: Case[] = [
  // Repository locations.
  { group: 'repository URL', name: 'empty', args: () => ['list', '--from', ''], code: 2, msg: /repository location is empty/ },
  { group: 'repository URL', name: 's3:// without a bucket', args: () => ['list', '--from', 's3://'], code: 2, msg: /invalid S3 bucket name/ },
  { group: 'repository URL', name: 'upper-case bucket', args: () => ['list', '--from', 's3://MyBackups/x'], code: 2, msg: /invalid S3 bucket name/ },
  { group: 'repository URL', name: 'two-letter bucket', args: () => ['list', '--from', 's3://ab/x'], code: 2, msg: /invalid S3 bucket name/ },
  { group: 'repository URL', name: 'bucket with ".."', args: () => ['list', '--from', 's3://bad..bucket/x'], code: 2, msg: /invalid S3 bucket name/ },
  { group: 'repository URL', name: 'prefix with ".."', args: () => ['list', '--from', `s3://${f.bucket}/a/../b`], code: 2, msg: /invalid S3 prefix/ },
  { group: 'repository URL', name: 'prefix with "//"', args: () => ['list', '--from', `s3://${f.bucket}/a//b`], code: 2, msg: /invalid S3 prefix/ },
  { group: 'repository URL', name: 'unsupported scheme', args: () => ['list', '--from', 'ftp://host/backups'], code: 2, msg: /unsupported repository scheme "ftp:"/ },
  { group: 'repository URL', name: 'file URL with a host', args: () => ['list', '--from', 'file://server/backups'], code: 2, msg: /invalid file URL/ },
  { group: 'repository URL', name: 'missing bucket', args: () => ['list', '--from', `s3://no-such-bucket-${suffix}/x`], code: 4, msg: /bucket does not exist/ },
  // A local repository that is not there (a typo, a volume not mounted) is no empty one, for every reading command.
  ...[['list'], ['list', '--json'], ['status'], ['status', '--cluster', 'main'], ['report'], ['prune', '--dry-run', '--keep-daily', '7d']].map(
    (cmd): Case => ({ group: 'repository URL', name: `missing directory: ${cmd.join(' ')}`, args: () => [...cmd.slice(0, 1), '--from', f.path(`no-such-dir-${suffix}`), ...cmd.slice(1)], code: 4, msg: /the repository directory .*no-such-dir-.* does not exist/ }),
  ),
  {
    group: 'repository URL',
    name: 'endpoint URL with credentials',
    args: () => ['list', '--from', repo(), '--s3-endpoint', 'http://user:hunter2secret@127.0.0.1:9'],
    code: 2,
    msg: /must not contain credentials/,
    never: () => ['hunter2secret'],
  },
  // Recipients.
  { group: 'recipient', name: 'not a recipient', args: () => ['backup', '--to', repo(), '--db', source, '--recipient', 'age1notarecipient'], code: 2, msg: /recipient/ },
  {
    group: 'recipient',
    name: 'a secret key given as recipient',
    args: () => ['backup', '--to', repo(), '--db', source, '--recipient', secretIdentity],
    code: 2,
    msg: /recipient/,
    never: () => [secretIdentity, secretIdentity.slice(16, 40)],
  },
  { group: 'recipient', name: 'recipients file missing', args: () => ['backup', '--to', repo(), '--db', source, '--recipients-file', file('nope.txt')], code: 2, msg: /nope\.txt/ },
  { group: 'recipient', name: 'recipients file without recipients', args: () => ['backup', '--to', repo(), '--db', source, '--recipients-file', file('recipients-empty.txt')], code: 2, msg: /recipient/ },
  { group: 'recipient', name: 'recipients file with a bad line', args: () => ['backup', '--to', repo(), '--db', source, '--recipients-file', file('recipients-bad.txt')], code: 2, msg: /line 2/ },
  // Identity files.
  { group: 'identity file', name: 'missing', args: () => withIdentity('nope.txt'), code: 2, msg: /nope\.txt/ },
  { group: 'identity file', name: 'a public key instead', args: () => withIdentity('public.txt'), code: 2, msg: /identity file .* line 1/ },
  { group: 'identity file', name: 'truncated', args: () => withIdentity('truncated.txt'), code: 2, msg: /identity file .* line 1/, never: () => [secretIdentity.slice(16, 40)] },
  { group: 'identity file', name: 'empty', args: () => withIdentity('empty.txt'), code: 2, msg: /contains no identities/ },
  { group: 'identity file', name: 'passphrase-encrypted', args: () => withIdentity('encrypted.txt'), code: 2, msg: /itself encrypted with age; decrypt it first/ },
  { group: 'identity file', name: 'an ssh private key', args: () => withIdentity('ssh.txt'), code: 2, msg: /ssh or pem private key/ },
  { group: 'identity file', name: 'binary', args: () => withIdentity('binary.txt'), code: 2, msg: /not a text file/ },
  { group: 'identity file', name: 'mode 0644', args: () => withIdentity('open.txt'), code: 2, msg: /accessible by other users .*chmod 600/, never: () => [secretIdentity] },
  // Backup ids.
  { group: 'backup id', name: 'path traversal', args: () => restore('--backup', '../../etc/passwd'), code: 2, msg: /backup/ },
  { group: 'backup id', name: 'not an id', args: () => restore('--backup', '2020'), code: 2, msg: /backup/ },
  { group: 'backup id', name: 'well-formed, absent', args: () => restore('--backup', '20190101T000000Z-deadbeef'), code: 4, msg: /no completed backup with id 20190101T000000Z-deadbeef/ },
  // Manifests in the repository.
  { group: 'manifest', name: 'missing field: restore', args: () => restore('--backup', BAD_IDS.missingField), code: 5, msg: /manifest/ },
  { group: 'manifest', name: 'wrong version: restore', args: () => restore('--backup', BAD_IDS.wrongVersion), code: 5, msg: /manifest/ },
  { group: 'manifest', name: 'not JSON: restore', args: () => restore('--backup', BAD_IDS.notJson), code: 5, msg: /manifest/ },
  { group: 'manifest', name: 'not JSON: verify', args: () => ['verify', '--from', repo(), '--identity', f.identityFile, '--backup', BAD_IDS.notJson], code: 5, msg: /manifest/ },
  { group: 'manifest', name: 'pointing at a missing object: restore', args: () => restore('--backup', BAD_IDS.missingObject), code: 4, msg: /the dump object of backup \S+ is missing \(deleted or expired\?\)/ },
  { group: 'manifest', name: 'pointing at a missing object: verify', args: () => ['verify', '--from', repo(), '--identity', f.identityFile, '--backup', BAD_IDS.missingObject], code: 4, msg: /the dump object of backup \S+ is missing \(deleted or expired\?\)/ },
  // Names.
  { group: 'name', name: 'hostile --db that does not exist', args: () => ['backup', '--to', repo(), '--db', `nope${hostileTarget}`, '--recipient', f.recipient], code: 3, msg: /does not exist/ },
  { group: 'name', name: 'empty --target-db', args: () => restore().slice(0, -2).concat(['--target-db', '']), code: 2, msg: /--target-db/ },
  { group: 'name', name: '--target-db over 63 bytes', args: () => restore().slice(0, -2).concat(['--target-db', 'é'.repeat(32)]), code: 2, msg: /longer than 63 bytes/ },
  { group: 'name', name: '--maintenance-db that does not exist', args: () => restore('--maintenance-db', 'corpus_no_such_maintenance'), code: 3, msg: /database "corpus_no_such_maintenance" does not exist.*pass --maintenance-db with one that exists/ },
  { group: 'name', name: '--target-db the maintenance database', args: () => restore().slice(0, -2).concat(['--target-db', 'postgres', '--replace']), code: 2, msg: /--target-db "postgres" is the maintenance database.*--maintenance-db/ },
  { group: 'name', name: 'existing --target-db (the sentinel)', args: () => restore().slice(0, -2).concat(['--target-db', sentinel]), code: 2, msg: /already exists; refusing to restore over it/ },
  // Options.
  { group: 'option', name: '--compress zstd:99', args: () => backup('--compress', 'zstd:99'), code: 2, msg: /zstd level/ },
  { group: 'option', name: '--compress lz4', args: () => backup('--compress', 'lz4'), code: 2, msg: /--compress must be/ },
  { group: 'option', name: '--jobs 0', args: () => restore('--jobs', '0'), code: 2, msg: /--jobs must be a whole number/ },
  { group: 'option', name: '--tier hourly', args: () => backup('--tier', 'hourly'), code: 2, msg: /--tier must be/ },
  { group: 'option', name: '--timeout 5x', args: () => ['--timeout', '5x', 'list', '--from', repo()], code: 2, msg: /--timeout: invalid duration/ },
  { group: 'option', name: '--s3-timeout never', args: () => ['list', '--from', repo(), '--s3-timeout', 'never'], code: 2, msg: /--s3-timeout: invalid duration/ },
  { group: 'option', name: '--log-format xml', args: () => ['--log-format', 'xml', 'list', '--from', repo()], code: 2, msg: /--log-format.*(must be|Allowed choices are) text, json/ },
];

async function snapshot(): Promise<{ keys: string[]; dbs: string[] }> {
  const mine = new Set([sentinel, source, hostileTarget, 'corpus_never']);
  return {
    keys: (await listAllKeys(f.s3, f.bucket)).sort(),
    dbs: (await listDatabases(pg)).filter((d) => mine.has(d) || d.startsWith('corpus_never') || d.startsWith(hostileTarget)),
  };
}

async function runPool<T>(items: T[], n: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

describe('the bad-input corpus', () => {
  it(`${cases.length} bad inputs: one clear line, the documented exit code, nothing changed`, async () => {
    expect(cases.length).toBeGreaterThanOrEqual(30);
    const before = await snapshot();
    const failures: string[] = [];
    await runPool(cases, 4, async (c) => {
      const r = await runCoffer(c.args(), { env: c.env?.() ?? f.env(), timeoutMs: 60_000 });
      const line = errorLine(r.stderr) || r.stderr.trim().split('\n')[0] || '';
      const problems: string[] = [];
      if (r.code !== c.code) problems.push(`exit ${r.code}, expected ${c.code}`);
      if (!c.msg.test(line)) problems.push(`message ${JSON.stringify(line)} does not match ${c.msg}`);
      if (/unexpected error/.test(line)) problems.push('reported as unexpected');
      for (const s of c.never?.() ?? []) if (`${r.stdout}${r.stderr}`.includes(s)) problems.push('a secret appears in the output');
      if (problems.length > 0) failures.push(`${c.group} / ${c.name}: ${problems.join('; ')} | stderr: ${r.stderr.slice(-400)}`);
    });
    expect(failures).toEqual([]);
    expect(await snapshot()).toEqual(before);
    const groups = [...new Set(cases.map((c) => c.group))];
    for (const g of groups) {
      const mine = cases.filter((c) => c.group === g);
      const codes = [...new Set(mine.map((c) => c.code))].sort().join('/');
      record({
        id: `bad-${String(groups.indexOf(g) + 1).padStart(2, '0')}`,
        area: 'bad input',
        fault: `${g}: ${mine.map((c) => c.name).join('; ')}`,
        injected: `${mine.length} command lines (table-driven)`,
        outcome: `each: one-line error, exit ${codes}, never "unexpected"; no secret echoed; bucket listing and databases unchanged`,
        dataLost: 'none',
      });
    }
  });

  it('list skips the invalid manifests with a warning and still shows the real backup', async () => {
    const r = await f.run(['list', '--from', repo(), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const ids = (JSON.parse(r.stdout) as Array<{ id: string }>).map((x) => x.id);
    // The manifest of a missing object is itself valid: listed (restore and verify reject it, above).
    expect(ids).toEqual([real.id, BAD_IDS.missingObject]);
    expect(r.stderr.match(/skipping an unreadable manifest/g)?.length).toBe(3);
    record({
      id: 'bad-90',
      area: 'bad input',
      fault: 'invalid manifests in the repository (missing field, wrong version, not JSON)',
      injected: 'manifest objects written beside a real backup',
      outcome: 'list exits 0, warns once per invalid manifest and skips it; restore/verify of them exit 5; a valid manifest whose object is missing is listed but restore/verify exit 4 "no such object"',
      dataLost: 'none',
    });
  });

  it('hostile names are quoted everywhere: a backup of a database named with quotes, unicode and SQL restores into exactly the target name', async () => {
    const r = await f.run(['restore', '--from', repo(), '--db', source, '--identity', file('crlf.txt'), '--target-db', hostileTarget]);
    expect(r.code, r.stderr).toBe(0);
    expect(await databaseExists(pg, hostileTarget)).toBe(true);
    expect(await databaseExists(pg, sentinel)).toBe(true);
    expect(await dataFingerprint(pg, hostileTarget)).toEqual(await dataFingerprint(pg, source));
    expect((await listDatabases(pg)).filter((d) => d.includes('__restoring_') && d.startsWith('x"'))).toEqual([]);
    await pg.psql(`DROP DATABASE ${quoteIdent(hostileTarget)};`);
    record({
      id: 'bad-91',
      area: 'bad input',
      fault: 'hostile database names; an identity file with CRLF line ends',
      injected: `source ${JSON.stringify(source.replace(sentinel, 'bv_…'))}, target ${JSON.stringify(hostileTarget.replace(sentinel, 'bv_…'))}, identity file converted to CRLF`,
      outcome: 'backup and restore succeed; exactly the target name is created with identical data; the sentinel database still exists; the CRLF identity works',
      dataLost: 'none',
    });
  });
});
