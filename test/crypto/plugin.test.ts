/**
 * age plugin identities (`AGE-PLUGIN-<NAME>-1…`) in restores, against a real plugin process: the
 * test plugin age-plugin-coffertest (test/fixtures/age-plugin, put on PATH here) speaks both of
 * age's state machines, so Debian's age 1.1.1 CLI encrypts to it (`age -r age1coffertest1…`,
 * recipient-v1) and decrypts with it (identity-v1), and coffer's own plugin client
 * (src/crypto/plugin.ts) unwraps the same headers.
 *
 * Proves: a pg_dump archive encrypted by the age CLI to the plugin restores into PostgreSQL
 * with the plugin identity (data compared); `age -d` and coffer agree byte for byte; coffer backs
 * up to the plugin recipient (recipient-v1, labels) and both coffer and `age -d` read it; the plugin's `msg` is logged; a PIN is asked on a terminal with echo off (under
 * `script`) and refused without one; every failure of the plugin (error, not on PATH, PIN without
 * a terminal, exit mid-protocol, garbage, hang under --timeout) is one line with its documented
 * exit code, leaves no database and no plugin process, and never shows the identity; a plugin
 * identity among several in one file.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { databaseExists, dataFingerprint, dropDatabase, schemaDump } from '../harness/pg.js';
import { COFFER_BIN, errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { generateIdentity, openDecryptStream, readIdentityFile } from '../../src/crypto/age.js';
import { drain, randomBytes } from './helpers.js';

const PLUGIN_DIR = fileURLToPath(new URL('../fixtures/age-plugin/', import.meta.url));
const PATH_WITH_PLUGIN = `${PLUGIN_DIR.replace(/\/$/, '')}:${process.env.PATH ?? '/usr/bin:/bin'}`;
const PATH_WITHOUT_PLUGIN = path.dirname(process.execPath) === '/usr/bin' ? '/usr/bin:/bin' : `${path.dirname(process.execPath)}:/usr/bin:/bin`;

const f = useFixture({ name: 'plugin', db: 'vault' });

let identity: string;
let recipient: string;
/** Identity file holding only the plugin identity. */
let idFile: string;
/** `pg_dump -Fc | age -r age1coffertest1…`, made by the age CLI. */
let dumpFile: string;

const pluginEnv = (extra: Record<string, string> = {}): Record<string, string> => f.env({ PATH: PATH_WITH_PLUGIN, COFFERTEST_NODE: process.execPath, ...extra });

beforeAll(async () => {
  const keys = await execa(path.join(PLUGIN_DIR, 'age-plugin-coffertest'), ['--keygen'], { env: { ...process.env, COFFERTEST_NODE: process.execPath } });
  [identity, recipient] = String(keys.stdout).trim().split(' ') as [string, string];
  idFile = f.path('plugin-identity.txt');
  await fsp.writeFile(idFile, `# test plugin identity\n# recipient: ${recipient}\n${identity}\n`, { mode: 0o600 });
  dumpFile = f.path('vault.dump.age');
  await execa('bash', ['-c', 'set -o pipefail; "$1/pg_dump" -Fc "$2" | age -r "$3" > "$4"', 'x', f.pg.binDir, f.db, recipient, dumpFile], {
    env: { ...process.env, ...f.pg.env(), PATH: PATH_WITH_PLUGIN, COFFERTEST_NODE: process.execPath },
  });
});

async function expectSameAsSource(target: string): Promise<void> {
  expect(await schemaDump(f.pg, target)).toEqual(await schemaDump(f.pg, f.db));
  expect(await dataFingerprint(f.pg, target)).toEqual(await dataFingerprint(f.pg, f.db));
}

describe('restores with a plugin identity', () => {
  it('a pg_dump archive encrypted by `age -r age1coffertest1…` restores into PostgreSQL; the plugin\'s msg is logged', async () => {
    const header = (await fsp.readFile(dumpFile)).subarray(0, 200).toString('latin1');
    expect(header).toMatch(/^age-encryption\.org\/v1\n-> coffertest \S+\n/);
    const seen = f.path('seen-1.txt');
    const target = f.dropAtEnd(`${f.db}_plugin`);
    const r = await execa(process.execPath, [COFFER_BIN, 'restore', '--file', dumpFile, '--identity', idFile, '--target-db', target, '--smoke', 'SELECT count(*) FROM vault_status'], {
      env: pluginEnv({ COFFERTEST_MSG: 'touch the coffertest key', COFFERTEST_SEEN: seen }),
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
    });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    await expectSameAsSource(target);
    expect(String(r.stderr)).toContain('age plugin age-plugin-coffertest: touch the coffertest key');
    expect(String(r.stderr)).not.toContain(identity);
    // coffer gave the plugin its identity and the header's one stanza, once (one run per header).
    expect(await fsp.readFile(seen, 'utf8')).toBe('identity-v1 identities=1 stanzas=coffertest\n');
    await dropDatabase(f.pg, target);
  });

  it('`age -d -i` and coffer decrypt the same bytes from one file (and a file of another plugin recipient matches no identity)', async () => {
    const data = randomBytes(300_000);
    const enc = await execa('age', ['-r', recipient], { input: data, encoding: 'buffer', stripFinalNewline: false, env: { ...process.env, PATH: PATH_WITH_PLUGIN, COFFERTEST_NODE: process.execPath } });
    const ciphertext = Buffer.from(enc.stdout as Uint8Array);
    const byAge = await execa('age', ['-d', '-i', idFile], { input: ciphertext, encoding: 'buffer', stripFinalNewline: false, env: { ...process.env, PATH: PATH_WITH_PLUGIN, COFFERTEST_NODE: process.execPath } });
    expect(Buffer.from(byAge.stdout as Uint8Array).equals(data)).toBe(true);
    const savedPath = process.env.PATH;
    process.env.PATH = PATH_WITH_PLUGIN;
    process.env.COFFERTEST_NODE = process.execPath;
    try {
      const ids = await readIdentityFile(idFile);
      const { plaintext } = await openDecryptStream(Readable.from([ciphertext]), ids);
      expect((await drain(plaintext)).data.equals(data)).toBe(true);
      // Another coffertest key: the plugin answers with no file key, which is "no identity matches".
      const other = String((await execa(path.join(PLUGIN_DIR, 'age-plugin-coffertest'), ['--keygen'])).stdout).split(' ')[0]!;
      await expect(openDecryptStream(Readable.from([ciphertext]), [other])).rejects.toThrow(/^no identity matches this backup's recipients$/);
    } finally {
      process.env.PATH = savedPath;
    }
  });

  it('a plugin identity among several identities in one file (classic, post-quantum, plugin): each is tried', async () => {
    const classic = await generateIdentity();
    const pq = await generateIdentity(new Date(), { pq: true });
    const several = f.path('several.txt');
    await fsp.writeFile(several, `${classic.fileText}${pq.fileText}# plugin\n${identity}\n`, { mode: 0o600 });
    const target = f.dropAtEnd(`${f.db}_several`);
    const r = await execa(process.execPath, [COFFER_BIN, 'restore', '--file', dumpFile, '--identity', several, '--target-db', target], { env: pluginEnv(), extendEnv: false, reject: false, stdin: 'ignore' });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    await expectSameAsSource(target);
    await dropDatabase(f.pg, target);

    // A backup to the classic identity restores with the same file even where the plugin is not
    // installed: native identities are tried first, the plugin is never started.
    const repo = f.path('repo-classic');
    const b = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', classic.recipient]);
    expect(b.code, b.stderr).toBe(0);
    const target2 = f.dropAtEnd(`${f.db}_several2`);
    const seen = f.path('seen-several.txt');
    const r2 = await f.run(['restore', '--from', repo, '--identity', several, '--target-db', target2], { PATH: PATH_WITHOUT_PLUGIN, COFFERTEST_SEEN: seen });
    expect(r2.code, r2.stderr).toBe(0);
    expect(fs.existsSync(seen)).toBe(false);
    await dropDatabase(f.pg, target2);
  });
});

describe('backups to a plugin recipient (age1coffertest1…, recipient-v1)', () => {
  it('coffer backs up to the plugin recipient; coffer and `age -d` read it with the plugin identity', async () => {
    const repo = f.path('repo-to-plugin');
    const seen = f.path('seen-wrap.txt');
    const envFile = f.path('plugin-env.txt');
    const b = await execa(process.execPath, [COFFER_BIN, 'backup', '--to', repo, '--db', f.db, '--recipient', recipient, '--no-index', '--json'], {
      // Secrets the run has (the database password: trust authentication ignores it here) never reach a plugin.
      env: pluginEnv({ COFFERTEST_SEEN: seen, COFFERTEST_ENVFILE: envFile, PGPASSWORD: 'pg-secret-x', AWS_SECRET_ACCESS_KEY: 'aws-secret-x' }),
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
    });
    expect(b.exitCode, String(b.stderr)).toBe(0);
    const names = (await fsp.readFile(envFile, 'utf8')).trim().split('\n');
    expect(names.length).toBeGreaterThan(0);
    for (const line of names) {
      expect(line.split(' ')).toContain('COFFERTEST_SEEN');
      expect(line.split(' ').filter((n) => /^PG|SECRET/.test(n))).toEqual([]);
    }
    // One plugin run per encrypted object, each offered age's labels extension.
    expect(await fsp.readFile(seen, 'utf8')).toMatch(/^(recipient-v1 recipients=1 files=1 labels=offered\n)+$/);
    const [m] = JSON.parse(String(b.stdout)) as Array<{ dump: { key: string }; encryption: { recipients: string[] } }>;
    expect(m!.encryption.recipients).toEqual([recipient]);
    const object = path.join(repo, m!.dump.key);
    expect((await fsp.readFile(object)).subarray(0, 100).toString('latin1')).toMatch(/^age-encryption\.org\/v1\n-> coffertest /);
    // The age CLI decrypts coffer's object with the plugin (identity-v1 of age 1.1.1).
    const archive = f.path('to-plugin.dump');
    await execa('bash', ['-c', 'set -o pipefail; age -d -i "$1" "$2" | zstd -d > "$3"', 'x', idFile, object, archive], { env: { ...process.env, PATH: PATH_WITH_PLUGIN, COFFERTEST_NODE: process.execPath } });
    const list = await execa(path.join(f.pg.binDir, 'pg_restore'), ['--list', archive]);
    expect(String(list.stdout)).toMatch(/TABLE public vault_status/);
    const target = f.dropAtEnd(`${f.db}_to_plugin`);
    const r = await execa(process.execPath, [COFFER_BIN, 'restore', '--from', repo, '--identity', idFile, '--target-db', target], { env: pluginEnv(), extendEnv: false, reject: false, stdin: 'ignore' });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    await expectSameAsSource(target);
    await dropDatabase(f.pg, target);
  });

  it('labels: a plugin recipient without labels next to a post-quantum one is refused (exit 2, nothing stored); with `postquantum` it is accepted; a plugin error fails the backup (exit 5)', async () => {
    const pq = await generateIdentity(new Date(), { pq: true });
    const repo = f.path('repo-labels');
    const run = (extra: Record<string, string>) =>
      execa(process.execPath, [COFFER_BIN, 'backup', '--to', repo, '--db', f.db, '--recipient', pq.recipient, '--recipient', recipient, '--no-index'], { env: pluginEnv(extra), extendEnv: false, reject: false, stdin: 'ignore' });
    const mixed = await run({});
    expect(mixed.exitCode, String(mixed.stderr)).toBe(2);
    expect(errorLine(String(mixed.stderr))).toMatch(/^recipients "age1pq1.*" \(postquantum\) and "age1coffertest1.*" \(classic\) cannot be mixed in one backup/);
    expect(fs.existsSync(repo)).toBe(false);
    const failing = await execa(process.execPath, [COFFER_BIN, 'backup', '--to', repo, '--db', f.db, '--recipient', recipient], { env: pluginEnv({ COFFERTEST_MODE: 'error' }), extendEnv: false, reject: false, stdin: 'ignore' });
    expect(failing.exitCode, String(failing.stderr)).toBe(5);
    expect(errorLine(String(failing.stderr))).toMatch(/^age plugin age-plugin-coffertest reported an error: the coffertest plugin refused to wrap/);
    expect(fs.existsSync(repo)).toBe(false);
    const labelled = await run({ COFFERTEST_LABELS: 'postquantum' });
    expect(labelled.exitCode, String(labelled.stderr)).toBe(0);
    // Restorable with the hybrid identity alone.
    const pqFile = f.path('labels-pq.txt');
    await fsp.writeFile(pqFile, pq.fileText, { mode: 0o600 });
    const v = await f.run(['verify', '--from', repo, '--identity', pqFile]);
    expect(v.code, v.stderr).toBe(0);
  });
});

describe('plugin failures: one line, a documented exit code, no database, no plugin left, no secret', () => {
  const cases: Array<{ name: string; env: Record<string, string>; code: number; line: RegExp; args?: string[] }> = [
    { name: 'the plugin reports an error', env: { COFFERTEST_MODE: 'error' }, code: 5, line: /^age plugin age-plugin-coffertest reported an error: the coffertest key refused to unwrap/ },
    { name: 'the plugin is not on PATH', env: { PATH: PATH_WITHOUT_PLUGIN }, code: 2, line: /^age plugin age-plugin-coffertest is not installed: .*not found on PATH/ },
    { name: 'the plugin asks for a PIN and there is no terminal', env: { COFFERTEST_MODE: 'pin' }, code: 2, line: /^age plugin age-plugin-coffertest needs a PIN or passphrase and coffer has no terminal to ask on .*run the restore interactively/ },
    { name: 'the plugin asks for a confirmation and there is no terminal', env: { COFFERTEST_MODE: 'confirm' }, code: 2, line: /^age plugin age-plugin-coffertest needs a confirmation and coffer has no terminal/ },
    { name: 'the plugin exits mid-protocol', env: { COFFERTEST_MODE: 'exit' }, code: 5, line: /^age plugin age-plugin-coffertest exited \(code 3\) before it finished unwrapping the file key/ },
    { name: 'the plugin writes garbage', env: { COFFERTEST_MODE: 'garbage' }, code: 5, line: /^age plugin age-plugin-coffertest broke age's plugin protocol/ },
  ];
  for (const c of cases) {
    it(`${c.name}: exit ${c.code}`, async () => {
      const target = `${f.db}_fail_${c.code}`;
      const r = await execa(process.execPath, [COFFER_BIN, 'restore', '--file', dumpFile, '--identity', idFile, '--target-db', target], { env: pluginEnv(c.env), extendEnv: false, reject: false, stdin: 'ignore' });
      expect(r.exitCode, String(r.stderr)).toBe(c.code);
      const line = errorLine(String(r.stderr));
      expect(line).toMatch(c.line);
      expect(line).not.toContain('\n');
      expect(String(r.stderr) + String(r.stdout)).not.toContain(identity);
      expect(await databaseExists(f.pg, target)).toBe(false);
    });
  }

  it('a plugin that hangs is ended with the run (--timeout: exit 124), and no plugin process is left', async () => {
    const pidFile = f.path('hang.pid');
    const target = `${f.db}_hang`;
    const t0 = Date.now();
    const r = await execa(process.execPath, [COFFER_BIN, '--timeout', '3s', 'restore', '--file', dumpFile, '--identity', idFile, '--target-db', target], {
      env: pluginEnv({ COFFERTEST_MODE: 'hang', COFFERTEST_PIDFILE: pidFile }),
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
      timeout: 60_000,
    });
    expect(r.exitCode, String(r.stderr)).toBe(124);
    expect(errorLine(String(r.stderr))).toMatch(/^timed out after 3s/);
    expect(Date.now() - t0).toBeLessThan(20_000);
    const pid = Number(await fsp.readFile(pidFile, 'utf8'));
    expect(() => process.kill(pid, 0)).toThrow(/ESRCH/);
    expect(await databaseExists(f.pg, target)).toBe(false);
  });
});

describe('a PIN on a terminal (pseudo-terminal made by `script`)', () => {
  const q = (s: string): string => `'${s.replace(/'/g, "'\\''")}'`;
  async function withPin(pin: string, target: string): Promise<{ code: number; screen: string }> {
    const command = [process.execPath, COFFER_BIN, 'restore', '--file', dumpFile, '--identity', idFile, '--target-db', target].map(q).join(' ');
    const child = execa('script', ['-qfec', command, '/dev/null'], {
      env: pluginEnv({ COFFERTEST_MODE: 'pin', COFFERTEST_PIN: '246810', COFFER_LOG_FORMAT: 'text' }),
      extendEnv: false,
      reject: false,
      stdin: 'pipe',
      timeout: 120_000,
    });
    let screen = '';
    let typed = false;
    child.stdout!.on('data', (c: Buffer) => {
      screen += c.toString();
      // Typed only once the prompt is shown: coffer has turned echo off by then.
      if (!typed && screen.includes('Enter the PIN of the coffertest key')) {
        typed = true;
        // A person takes a while: long enough for two redraws of the progress line (every 500 ms).
        setTimeout(() => child.stdin!.write(`${pin}\r`), 1200);
      }
    });
    const r = await child;
    return { code: r.exitCode ?? -1, screen: `${screen}${String(r.stderr)}` };
  }

  it('asks for the PIN with echo off and restores with the right one; a wrong one fails with exit 5; the PIN is never shown', async () => {
    const target = f.dropAtEnd(`${f.db}_pin`);
    const ok = await withPin('246810', target);
    expect(ok.code, ok.screen).toBe(0);
    expect(ok.screen).toContain('age-plugin-coffertest: Enter the PIN of the coffertest key');
    expect(ok.screen).not.toContain('246810');
    // While the prompt waits, the progress line is not drawn over it.
    const prompted = ok.screen.split('Enter the PIN of the coffertest key')[1]!;
    expect(prompted.slice(0, prompted.search(/\r?\n/))).not.toContain('\x1b[2K');
    await expectSameAsSource(target);
    await dropDatabase(f.pg, target);

    const bad = await withPin('999999', `${f.db}_pin_bad`);
    expect(bad.code, bad.screen).toBe(5);
    expect(bad.screen).toMatch(/age plugin age-plugin-coffertest reported an error with its identity: wrong PIN/);
    expect(bad.screen).not.toContain('999999');
    expect(await databaseExists(f.pg, `${f.db}_pin_bad`)).toBe(false);
  });
});
