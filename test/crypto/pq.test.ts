/**
 * Post-quantum (hybrid ML-KEM-768 + X25519) keys end to end: `coffer keygen --pq`, a backup to
 * its `age1pq1…` recipient restored into PostgreSQL with an identity file that also holds a
 * classic identity, age's rule against mixing post-quantum and classic recipients (refused at
 * start-up, nothing stored), and interop with the age CLI when the installed one knows hybrid
 * keys (age ≥ 1.3; Debian 12's 1.1.1 does not, and the test says so when it skips).
 * Library-independent hybrid vectors (C2SP CCTV `hybrid*`) run in vectors.test.ts.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { dataFingerprint, dropDatabase, schemaDump } from '../harness/pg.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { createEncryptStream, generateIdentity, openDecryptStream } from '../../src/crypto/age.js';
import { UsageError } from '../../src/errors.js';
import { drain, encryptAll, piecesOf, randomBytes } from './helpers.js';

const f = useFixture({ name: 'pq', db: 'vault' });

/** Whether the installed age CLI encrypts to hybrid recipients (age 1.3 and later). */
async function ageKnowsPq(recipient: string): Promise<boolean> {
  const r = await execa('age', ['-r', recipient], { input: '', reject: false });
  return r.exitCode === 0;
}

async function keygenPq(name: string): Promise<{ file: string; recipient: string; text: string }> {
  const file = f.path(name);
  const r = await f.run(['keygen', '--pq', '--out', file]);
  expect(r.code, r.stderr).toBe(0);
  return { file, recipient: r.stdout.trim(), text: await fsp.readFile(file, 'latin1') };
}

describe('coffer keygen --pq', () => {
  it('writes a 0600 hybrid identity in age-keygen format, never overwrites, and the library agrees on its recipient', async () => {
    const { file, recipient, text } = await keygenPq('pq-key.txt');
    expect(recipient).toMatch(/^age1pq1[02-9ac-hj-np-z]{1900,}$/);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(text).toMatch(/^# created: \d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})\n# public key: age1pq1[a-z0-9]+\nAGE-SECRET-KEY-PQ-1[0-9A-Z]+\n$/);
    expect(text).toContain(`# public key: ${recipient}\n`);
    const identity = text.split('\n')[2]!;
    const { identityToRecipient } = await import('age-encryption');
    expect(await identityToRecipient(identity)).toBe(recipient);
    const again = await f.run(['keygen', '--pq', '--out', file]);
    expect(again.code).toBe(2);
    expect(errorLine(again.stderr)).toMatch(/already exists; refusing to overwrite a key file/);
    expect(await fsp.readFile(file, 'latin1')).toBe(text);
    expect(again.stderr).not.toContain('AGE-SECRET-KEY');
  });
});

describe('backups to a post-quantum recipient', () => {
  it('back up to age1pq1…, restore with a file holding a classic and the hybrid identity: same database', async () => {
    const pq = await keygenPq('pq-restore.txt');
    const classic = await generateIdentity();
    // The classic identity first: it matches nothing, the hybrid one after it does.
    const both = f.path('both-identities.txt');
    await fsp.writeFile(both, `${classic.fileText}${pq.text}`, { mode: 0o600 });
    const repo = f.path('repo-pq');
    const b = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', pq.recipient, '--json']);
    expect(b.code, b.stderr).toBe(0);
    // The stored object's header holds exactly one hybrid stanza.
    const [m] = JSON.parse(b.stdout) as Array<{ dump: { key: string } }>;
    const head = (await fsp.readFile(`${repo}/${m!.dump.key}`)).subarray(0, 4096).toString('latin1');
    expect(head.match(/^-> \S+/gm)).toEqual(['-> mlkem768x25519']);

    const target = `${f.db}_pq`;
    f.dropAtEnd(target);
    const r = await f.run(['restore', '--from', repo, '--identity', both, '--target-db', target, '--smoke', 'SELECT count(*) FROM vault_status']);
    expect(r.code, r.stderr).toBe(0);
    expect(await schemaDump(f.pg, target)).toEqual(await schemaDump(f.pg, f.db));
    expect(await dataFingerprint(f.pg, target)).toEqual(await dataFingerprint(f.pg, f.db));
    await dropDatabase(f.pg, target);

    // Only the classic identity: no match, exit 5, before any database is created.
    const classicOnly = f.path('classic-only.txt');
    await fsp.writeFile(classicOnly, classic.fileText, { mode: 0o600 });
    const wrong = await f.run(['restore', '--from', repo, '--identity', classicOnly, '--target-db', `${target}_x`]);
    expect(wrong.code).toBe(5);
    expect(errorLine(wrong.stderr)).toMatch(/^no identity matches this backup's recipients/);
  });

  it('mixing post-quantum and classic recipients is refused at start-up (backup, recipients file, wal-push), nothing stored', async () => {
    const pq = await keygenPq('pq-mix.txt');
    const classic = await generateIdentity();
    const repo = f.path('repo-mix');
    const flags = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', classic.recipient, '--recipient', pq.recipient]);
    expect(flags.code).toBe(2);
    const line = errorLine(flags.stderr);
    expect(line).toMatch(/^post-quantum \("age1pq1.*"\) and classic \("age1.*"\) recipients cannot be mixed: /);
    expect(line.split('\n')).toHaveLength(1);
    expect(fs.existsSync(repo)).toBe(false);

    const recipientsFile = f.path('mixed-recipients.txt');
    await fsp.writeFile(recipientsFile, `# both kinds\n${pq.recipient}\n${classic.recipient}\n`);
    const file = await f.run(['backup', '--to', repo, '--db', f.db, '--recipients-file', recipientsFile]);
    expect(file.code).toBe(2);
    expect(errorLine(file.stderr)).toMatch(/recipients cannot be mixed/);
    expect(fs.existsSync(repo)).toBe(false);

    const walFile = f.path('000000010000000000000001');
    await fsp.writeFile(walFile, randomBytes(1024));
    const wal = await f.run(['wal-push', '--cluster', 'pq', '--to', repo, '--recipients-file', recipientsFile, walFile]);
    expect(wal.code).not.toBe(0);
    expect(errorLine(wal.stderr)).toMatch(/recipients cannot be mixed/);
    expect(fs.existsSync(repo)).toBe(false);

    // The library path refuses it too, whoever calls it.
    await expect(createEncryptStream([pq.recipient, classic.recipient])).rejects.toThrow(UsageError);
    // Two post-quantum recipients are fine.
    const pq2 = await generateIdentity(new Date(), { pq: true });
    const enc = await encryptAll(await createEncryptStream([pq.recipient, pq2.recipient]), Buffer.from('two pq'));
    const { plaintext } = await openDecryptStream(piecesOf(enc), [pq2.identity]);
    expect((await drain(plaintext)).data.toString()).toBe('two pq');
  });
});

describe('interop with the age CLI', () => {
  it('age -d decrypts what coffer encrypted to a hybrid recipient, and the reverse (when the installed age knows hybrid keys)', async (ctx) => {
    const pq = await generateIdentity(new Date(), { pq: true });
    if (!(await ageKnowsPq(pq.recipient))) {
      const v = (await execa('age', ['--version'], { reject: false })).stdout.trim();
      ctx.skip(`the installed age ${v} has no post-quantum (age1pq1…) support: age 1.3 or later needed; hybrid interop is covered by the C2SP CCTV vectors in vectors.test.ts`);
      return;
    }
    const key = f.path('pq-age-cli.txt');
    await fsp.writeFile(key, pq.fileText, { mode: 0o600 });
    const data = randomBytes(200_000);
    const enc = await encryptAll(await createEncryptStream([pq.recipient]), data);
    const dec = await execa('age', ['-d', '-i', key], { input: enc, encoding: 'buffer', stripFinalNewline: false });
    expect(Buffer.from(dec.stdout as Uint8Array).equals(data)).toBe(true);
    const theirs = await execa('age', ['-r', pq.recipient], { input: data, encoding: 'buffer', stripFinalNewline: false });
    const { plaintext } = await openDecryptStream(piecesOf(Buffer.from(theirs.stdout as Uint8Array)), [pq.identity]);
    expect((await drain(plaintext)).data.equals(data)).toBe(true);
  });
});
