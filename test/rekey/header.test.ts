/**
 * The new age header of `coffer rekey` (src/crypto/rekey.ts): the same file key for other
 * recipients, optionally padded past S3's 5 MiB smallest part. Both readers must accept it:
 * coffer's own decrypt path (age-encryption parses the header) and Debian's age 1.1.1 CLI.
 */
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEncryptStream, generateIdentity, openDecryptStream, readHeaderFileKey } from '../../src/crypto/age.js';
import { buildHeader, PAD_STANZA_TYPE } from '../../src/crypto/rekey.js';
import { IntegrityError } from '../../src/errors.js';

const MiB = 1024 * 1024;

async function encrypt(plaintext: Buffer, recipients: string[]): Promise<{ file: Buffer; headerLength: number }> {
  const enc = await createEncryptStream(recipients);
  const out: Buffer[] = [];
  enc.on('data', (c: Buffer) => out.push(c));
  const done = new Promise((r) => enc.on('end', r));
  enc.end(plaintext);
  await done;
  return { file: Buffer.concat(out), headerLength: enc.headerLength };
}

async function decrypt(file: Buffer, identities: string[]): Promise<Buffer> {
  const { plaintext } = await openDecryptStream(Readable.from([file.subarray(0, 1000), file.subarray(1000)]), identities);
  const out: Buffer[] = [];
  for await (const c of plaintext) out.push(c as Buffer);
  return Buffer.concat(out);
}

let tmp: string;
let a: Awaited<ReturnType<typeof generateIdentity>>;
let b: Awaited<ReturnType<typeof generateIdentity>>;
let c: Awaited<ReturnType<typeof generateIdentity>>;
// 3 chunks and a bit: the payload crosses chunk boundaries.
const plaintext = randomBytes(3 * 64 * 1024 + 17);
let old: { file: Buffer; headerLength: number };

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-rekey-header-'));
  [a, b, c] = await Promise.all([generateIdentity(), generateIdentity(), generateIdentity()]);
  for (const [n, id] of [['a', a], ['b', b], ['c', c]] as const) await fsp.writeFile(path.join(tmp, `${n}.txt`), id.fileText, { mode: 0o600 });
  old = await encrypt(plaintext, [a.recipient]);
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

/** The old file under a new header for `recipients` (padded to `minLength`). */
async function rekeyed(recipients: string[], minLength: number): Promise<{ file: Buffer; header: Buffer }> {
  const k = await readHeaderFileKey(old.file.subarray(0, old.headerLength + 16), [a.identity]);
  expect(k.headerLength).toBe(old.headerLength);
  expect(k.stanzaTypes).toEqual(['X25519']);
  const header = await buildHeader(k.fileKey, recipients, minLength);
  return { file: Buffer.concat([header, old.file.subarray(k.headerLength)]), header };
}

async function ageCli(file: Buffer, identity: string): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  const p = path.join(tmp, `f-${randomBytes(4).toString('hex')}.age`);
  await fsp.writeFile(p, file);
  const r = await execa('age', ['-d', '-i', path.join(tmp, `${identity}.txt`), p], { reject: false, encoding: 'buffer' });
  return { code: r.exitCode ?? -1, stdout: Buffer.from(r.stdout), stderr: Buffer.from(r.stderr).toString() };
}

describe('buildHeader', () => {
  it('a header for other recipients, unpadded: B and C read the same plaintext, A no longer', async () => {
    const { file, header } = await rekeyed([b.recipient, c.recipient], 0);
    expect(header.length).toBeLessThan(1000);
    expect(await decrypt(file, [b.identity])).toEqual(plaintext);
    expect(await decrypt(file, [c.identity])).toEqual(plaintext);
    await expect(decrypt(file, [a.identity])).rejects.toThrow(/no identity matches/);
    const cli = await ageCli(file, 'b');
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.stdout.equals(plaintext)).toBe(true);
    expect((await ageCli(file, 'a')).code).not.toBe(0);
  });

  it('padded past 5 MiB with stanzas no identity claims: coffer and the age 1.1.1 CLI both read it', async () => {
    const { file, header } = await rekeyed([b.recipient], 5 * MiB);
    expect(header.length).toBeGreaterThanOrEqual(5 * MiB);
    // Just past the minimum: the last padding stanza is cut to fit.
    expect(header.length - 5 * MiB).toBeLessThan(100);
    const text = header.toString('latin1');
    expect(text.split('\n').filter((l) => l.startsWith(`-> ${PAD_STANZA_TYPE} `)).length).toBe(Math.ceil((5 * MiB) / 65_000));
    // Every body line is at most 64 columns (the spec's line length).
    expect(text.split('\n').every((l) => l.startsWith('-> ') || l.startsWith('--- ') || l.length <= 64)).toBe(true);
    expect(await decrypt(file, [b.identity])).toEqual(plaintext);
    const cli = await ageCli(file, 'b');
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.stdout.equals(plaintext)).toBe(true);
    const k = await readHeaderFileKey(file.subarray(0, header.length + 16), [b.identity]);
    expect(k.headerLength).toBe(header.length);
    expect(k.stanzaTypes.filter((t) => t !== PAD_STANZA_TYPE)).toEqual(['X25519']);
  });

  it('the MAC covers the padding: one changed byte in it and both readers refuse', async () => {
    const { file, header } = await rekeyed([b.recipient], 5 * MiB);
    const bad = Buffer.from(file);
    const at = Math.floor(header.length / 2);
    // A base64 character for another (still a valid line, a different body).
    bad[at] = bad[at] === 0x41 ? 0x42 : 0x41;
    await expect(decrypt(bad, [b.identity])).rejects.toBeInstanceOf(IntegrityError);
    await expect(decrypt(bad, [b.identity])).rejects.toThrow(/header/);
    expect((await ageCli(bad, 'b')).code).not.toBe(0);
  });

  it('refuses an empty recipient list and a wrong key length', async () => {
    await expect(buildHeader(new Uint8Array(16), [], 0)).rejects.toThrow(/at least one recipient/);
    await expect(buildHeader(new Uint8Array(15), [b.recipient], 0)).rejects.toThrow(/16 bytes/);
  });
});
