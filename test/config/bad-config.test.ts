/**
 * Acceptance (issue 5): a table of bad configurations and flags — from the file, the
 * environment and the command line — each yields its precise one-line message and exit 2,
 * and nothing is written to the repository (a local directory, and an S3 prefix).
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { baseEnv, errorLine, runCoffer, s3Env } from '../harness/cli.js';
import { createTestBucket, listAllKeys, listMultipartUploads, s3ClientFor } from '../harness/rgw.js';
import { generateIdentity } from '../../src/crypto/age.js';

const rgwInfo = inject('rgw')!;

let tmp: string;
let recipient: string;
let s3: S3Client;
let bucket: string;

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-badcfg-'));
  recipient = (await generateIdentity()).recipient;
  s3 = s3ClientFor(rgwInfo, rgwInfo.admin);
  bucket = await createTestBucket(s3);
});

afterAll(async () => {
  s3?.destroy();
  await fsp.rm(tmp, { recursive: true, force: true });
});

interface Case {
  name: string;
  /** coffer.yaml in the working directory (`$REPO`, `$RCPT` and `$DIR` are substituted). */
  file?: string;
  env?: Record<string, string>;
  /** Arguments (same substitutions). Default: backup into $REPO with a valid recipient. */
  args?: string[];
  /** The whole error line must match (commander's own errors: stderr must contain it). */
  message: RegExp;
  commander?: boolean;
}

const BACKUP = ['backup', '--to', '$REPO', '--recipient', '$RCPT'];

const cases: Case[] = [
  {
    name: 'file: unknown key, with a suggestion',
    file: 'repository: $REPO\nrecipients: [$RCPT]\nkepDaily: 14d\n',
    args: ['backup'],
    message: /^config file coffer\.yaml: kepDaily: unknown setting \(did you mean "keepDaily"\?\)/,
  },
  {
    name: 'file: unknown key in a command section, with a suggestion',
    file: 'backup:\n  recipent: $RCPT\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: backup\.recipent: unknown setting for coffer backup \(did you mean "recipient"\?\)/,
  },
  {
    name: 'file: a setting in the section of a command that does not have it',
    file: 'backup:\n  identity: /keys/id.txt\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: backup\.identity: not a setting of coffer backup \(move it to the top level/,
  },
  {
    name: 'file: YAML syntax error, with its line',
    file: 'repository: $REPO\nrecipients: [$RCPT\ncompress: zstd\n',
    args: ['backup'],
    message: /^config file coffer\.yaml: YAML syntax error at line \d+, column \d+: /,
  },
  {
    name: 'file: duplicate key',
    file: 'compress: zstd\ncompress: none\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: YAML syntax error at line 2, column 1: Map keys must be unique/,
  },
  {
    name: 'file: top level is not a mapping',
    file: '- repository: x\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: the top level must be a mapping of settings/,
  },
  {
    name: 'file: wrong type for a list',
    file: 'db:\n  name: vault\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: db: expected a list of strings \(got a mapping\)$/,
  },
  {
    name: 'file: wrong type for a switch',
    file: 'backup:\n  globals: "yes please"\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: backup\.globals: expected true or false \(got "yes please"\)$/,
  },
  {
    name: 'file: a command section that is not a mapping',
    file: 'backup: nightly\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: backup: a command section must be a mapping of settings \(got "nightly"\)$/,
  },
  {
    name: 'file: bad duration (global option, in a command section)',
    file: 'backup:\n  timeout: soon\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: backup\.timeout: invalid duration "soon" \(use e\.g\. 90s, 15m, 26h, 7d\)$/,
  },
  {
    name: 'file: bad URL',
    file: 'notify: hc-ping.com/abc\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: notify: invalid URL "hc-ping\.com\/abc" \(expected http:\/\/ or https:\/\/…\)$/,
  },
  {
    name: 'file: URL with the wrong scheme',
    file: 's3Endpoint: ftp://10.0.0.1:21\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: s3Endpoint: URL must be http:\/\/ or https:\/\/ \(got "ftp:\/\/…"\)$/,
  },
  {
    name: 'file: bad repository',
    file: 'repository: s3://Backups_2024/db\nrecipients: [$RCPT]\n',
    args: ['backup'],
    message: /^config file coffer\.yaml: repository: invalid S3 bucket name "Backups_2024"/,
  },
  {
    name: 'file: bad recipient',
    file: 'recipients: [age1notakey]\n',
    args: ['backup', '--to', '$REPO'],
    message: /^config file coffer\.yaml: recipients: /,
  },
  {
    name: 'file: missing recipients',
    file: 'repository: $REPO\ncompress: zstd:3\n',
    args: ['backup'],
    message: /^no recipients: backups are always encrypted \(pass --recipient/,
  },
  {
    name: 'file: a value outside the declared choices',
    file: 'logFormat: yaml\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: logFormat: must be one of text, json, auto \(got "yaml"\)$/,
  },
  {
    name: 'file: bad retention period',
    file: 'keepMonthly: 12 months\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: keepMonthly: invalid retention period "12 months"/,
  },
  {
    name: 'file: password and password file both set',
    file: 'pgPassword: a-password\npgPasswordFile: /run/secrets/pg\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: pgPassword and pgPasswordFile are both set; keep one$/,
  },
  {
    name: 'file: unreadable secret file',
    file: 'pgPasswordFile: $DIR/no-such-secret\n',
    args: BACKUP,
    message: /^config file coffer\.yaml: pgPasswordFile: cannot read .*no-such-secret \(no such file\)$/,
  },
  {
    name: 'file: S3 access key without its secret',
    file: 's3AccessKeyId: AKIAEXAMPLE\n',
    args: BACKUP,
    message: /^s3AccessKeyId and s3SecretAccessKey must be set together/,
  },
  {
    name: 'flag: --config names a missing file',
    args: ['--config', '$DIR/nope.yaml', ...BACKUP],
    message: /^config file .*nope\.yaml: cannot read it \(no such file\)/,
  },
  {
    name: 'env: COFFER_CONFIG names a directory',
    env: { COFFER_CONFIG: '$DIR' },
    args: BACKUP,
    message: /^config file .*: cannot read it \(is a directory\)/,
  },
  {
    name: 'env: bad duration',
    env: { COFFER_WAIT: 'a while' },
    args: BACKUP,
    message: /^COFFER_WAIT: invalid duration "a while"/,
  },
  {
    name: 'env: bad switch value',
    env: { COFFER_GLOBALS: 'maybe' },
    args: BACKUP,
    message: /^COFFER_GLOBALS: expected true or false \(got "maybe"\)$/,
  },
  {
    name: 'env: bad URL',
    env: { COFFER_WEBHOOK: 'not a url' },
    args: BACKUP,
    message: /^COFFER_WEBHOOK: invalid URL "not a url"/,
  },
  {
    name: 'env: bad recipient in a list',
    env: { COFFER_RECIPIENT: '$RCPT, age1bogus' },
    args: ['backup', '--to', '$REPO'],
    message: /^COFFER_RECIPIENT\[1\]: /,
  },
  {
    name: 'env: unreadable _FILE secret',
    env: { COFFER_PGPASSWORD_FILE: '$DIR/missing-password' },
    args: BACKUP,
    message: /^COFFER_PGPASSWORD_FILE: cannot read .*missing-password \(no such file\)$/,
  },
  {
    name: 'env: bad repository',
    env: { COFFER_REPOSITORY: 'ftp://backups/db' },
    args: ['backup', '--recipient', '$RCPT'],
    message: /^COFFER_REPOSITORY: unsupported repository scheme "ftp:"/,
  },
  {
    name: 'file: a value the command rejects names its origin',
    file: 'backup:\n  compress: brotli\n',
    args: BACKUP,
    message: /^--compress must be zstd\[:1-19\], gzip\[:1-9\] or none \(got "brotli"\) \(value from config file coffer\.yaml: backup\.compress\)$/,
  },
  {
    name: 'env: a value the command rejects names its origin',
    env: { COFFER_TIER: 'hourly' },
    args: BACKUP,
    message: /^--tier must be daily, weekly, monthly or manual \(got "hourly"\) \(value from COFFER_TIER\)$/,
  },
  {
    name: 'flag: bad compression',
    args: [...BACKUP, '--compress', 'brotli'],
    message: /^--compress must be zstd\[:1-19\], gzip\[:1-9\] or none \(got "brotli"\)$/,
  },
  {
    name: 'flag: conflicting dump kinds',
    args: [...BACKUP, '--schema-only', '--data-only'],
    message: /^--schema-only and --data-only cannot be combined$/,
  },
  {
    name: 'flag: unknown option (commander), with a suggestion',
    args: [...BACKUP, '--kep-daily', '3d'],
    message: /^unknown option '--kep-daily' \(Did you mean --keep-daily\?\) \(run coffer --help for usage\)$/,
  },
  {
    name: 'flag: unknown command (commander), as one JSON line with --log-format json',
    args: ['--log-format', 'json', 'bakcup', '--to', '$REPO'],
    message: /^unknown command 'bakcup' \(Did you mean backup\?\) \(run coffer --help for usage\)$/,
  },
  {
    name: 'flag: a value missing (commander), as one JSON line with COFFER_LOG_FORMAT=json',
    env: { COFFER_LOG_FORMAT: 'json' },
    args: [...BACKUP, '--tier'],
    message: /^option '--tier <tier>' argument missing \(run coffer --help for usage\)$/,
  },
  // Text log format too (the crontab mails the log's last line): one line, not commander's two or three.
  ...[
    ['--log-format', 'text', ...BACKUP, '--kep-daily', '3d'],
    ['--log-format', 'text', 'bakcup', '--to', '$REPO'],
    ['--log-format', 'text', ...BACKUP, '--tier'],
  ].map((args) => ({
    name: `flag: a commander error as one text line (${args.slice(2).filter((a) => !a.startsWith('$')).join(' ')})`,
    args,
    message: /^coffer: error: (unknown option '--kep-daily' \(Did you mean --keep-daily\?\)|unknown command 'bakcup' \(Did you mean backup\?\)|option '--tier <tier>' argument missing) \(run coffer --help for usage\)  exit=2$/,
    commander: true,
  })),
];

function subst(s: string, dir: string, repo: string): string {
  return s.replaceAll('$REPO', repo).replaceAll('$RCPT', recipient).replaceAll('$DIR', dir);
}

describe.concurrent('bad configuration: exit 2, one precise line, nothing written', () => {
  for (const [i, c] of cases.entries()) {
    it(c.name, async () => {
      const dir = path.join(tmp, `case-${i}`);
      await fsp.mkdir(dir);
      const repo = path.join(dir, 'repo');
      if (c.file !== undefined) await fsp.writeFile(path.join(dir, 'coffer.yaml'), subst(c.file, dir, repo));
      const env = baseEnv(Object.fromEntries(Object.entries(c.env ?? {}).map(([k, v]) => [k, subst(v, dir, repo)])));
      const r = await runCoffer((c.args ?? BACKUP).map((a) => subst(a, dir, repo)), { env, cwd: dir });
      expect(r.code, r.stderr).toBe(2);
      if (c.commander) {
        expect(r.stderr.trimEnd()).toMatch(c.message);
      } else {
        const line = errorLine(r.stderr);
        expect(line).toMatch(c.message);
        expect(line).not.toContain('\n');
      }
      await expect(fsp.readdir(repo)).rejects.toMatchObject({ code: 'ENOENT' });
    });
  }
});

describe('bad configuration with an S3 repository: nothing reaches the bucket', () => {
  const s3Cases: { name: string; file: string; message: RegExp }[] = [
    { name: 'unknown key', file: 'repository: s3://$BUCKET/bad1\nrecipients: [$RCPT]\nrecipientsFiel: /x\n', message: /recipientsFiel: unknown setting \(did you mean "recipientsFile"\?\)/ },
    { name: 'missing recipients', file: 'repository: s3://$BUCKET/bad2\n', message: /^no recipients: backups are always encrypted/ },
    { name: 'bad duration', file: 'repository: s3://$BUCKET/bad3\nrecipients: [$RCPT]\ntimeout: 5 minutes\n', message: /^config file coffer\.yaml: timeout: invalid duration "5 minutes"/ },
  ];
  it.concurrent.for(s3Cases)('$name', async (c) => {
    const dir = await fsp.mkdtemp(path.join(tmp, 's3-'));
    await fsp.writeFile(path.join(dir, 'coffer.yaml'), c.file.replaceAll('$BUCKET', bucket).replaceAll('$RCPT', recipient));
    const r = await runCoffer(['backup'], { env: baseEnv(s3Env(rgwInfo)), cwd: dir });
    expect(r.code, r.stderr).toBe(2);
    expect(errorLine(r.stderr)).toMatch(c.message);
    const prefix = /s3:\/\/[^/]+\/(\w+)/.exec(c.file)![1]!;
    expect(await listAllKeys(s3, bucket, prefix)).toEqual([]);
    expect(await listMultipartUploads(s3, bucket, prefix)).toEqual([]);
  });
});
