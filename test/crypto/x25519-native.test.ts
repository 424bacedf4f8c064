/**
 * The X25519 header read and written with node:crypto alone (src/crypto/x25519.ts), against the
 * `age-encryption` library and the age CLI: the same file key from the same header, the same
 * verdict for every damaged header (every byte of it flipped, in turn), and headers each side
 * reads from the other. The official vectors (vectors.test.ts) go through it too. And the point
 * of it: an X25519 backup or restore never loads the library (about 0.15 s of CPU per process).
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Decrypter, Encrypter } from 'age-encryption';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgeHeaderError, AgeMacError, parseAgeHeader, unwrapX25519, x25519Header } from '../../src/crypto/x25519.js';
import { ageKeygen, run, tempDir } from './helpers.js';

let dir: string;
let cleanup: () => Promise<void>;
let keys: Array<{ path: string; identity: string; recipient: string }>;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
  keys = [await ageKeygen(dir, 'a.txt'), await ageKeygen(dir, 'b.txt'), await ageKeygen(dir, 'c.txt')];
});
afterAll(async () => cleanup());

/** The header of an age file (through the MAC line). */
function headerOf(file: Buffer): Buffer {
  const mac = file.indexOf('\n--- ');
  return file.subarray(0, file.indexOf(0x0a, mac + 1) + 1);
}

type Verdict = { ok: string } | 'no match' | 'HMAC' | 'header';

function native(header: Buffer, identities: string[]): Verdict {
  try {
    const key = unwrapX25519(parseAgeHeader(header), identities);
    return key === null ? 'no match' : { ok: key.toString('hex') };
  } catch (err) {
    if (err instanceof AgeMacError) return 'HMAC';
    if (err instanceof AgeHeaderError) return 'header';
    throw err;
  }
}

async function library(header: Buffer, identities: string[]): Promise<Verdict> {
  const d = new Decrypter();
  for (const id of identities) d.addIdentity(id);
  try {
    return { ok: Buffer.from(await d.decryptHeader(header)).toString('hex') };
  } catch (err) {
    const m = (err as Error).message;
    if (/no identity matched/.test(m)) return 'no match';
    if (/HMAC/.test(m)) return 'HMAC';
    return 'header';
  }
}

describe('the X25519 header without the library', () => {
  it("unwraps the library's file key from headers the age CLI and the library wrote, with any one of their identities", async () => {
    const plain = join(dir, 'plain');
    await writeFile(plain, 'x');
    const cli = await run('age', ['-r', keys[0]!.recipient, '-r', keys[1]!.recipient, plain]);
    const e = new Encrypter();
    for (const k of keys) e.addRecipient(k.recipient);
    const lib = Buffer.from(await e.encrypt('x'));
    for (const file of [cli, lib]) {
      const header = headerOf(file);
      for (const k of keys) {
        const want = await library(header, [k.identity]);
        expect(native(header, [k.identity])).toEqual(want);
        if (file === cli && k === keys[2]) expect(want).toBe('no match');
        else expect(want).toHaveProperty('ok');
      }
    }
  });

  it('writes headers the library and the age CLI read, one stanza per recipient', async () => {
    const fileKey = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
    const header = x25519Header(fileKey, keys.map((k) => k.recipient));
    expect(header.toString('latin1').match(/^-> X25519 /gm)).toHaveLength(3);
    for (const k of keys) expect(await library(header, [k.identity])).toEqual({ ok: fileKey.toString('hex') });
    // A whole file around it (an empty payload: the nonce, then one empty final chunk sealed with
    // the payload key) is what `age -d` needs; src/crypto/age.ts writes that part (roundtrip.test.ts).
    const { createEncryptStream } = await import('../../src/crypto/age.js');
    const enc = await createEncryptStream([keys[1]!.recipient]);
    const out: Buffer[] = [];
    enc.on('data', (c: Buffer) => out.push(c));
    enc.end(Buffer.from('hello'));
    await new Promise((r) => enc.on('end', r));
    const file = join(dir, 'ours.age');
    await writeFile(file, Buffer.concat(out));
    expect((await run('age', ['-d', '-i', keys[1]!.path, file])).toString()).toBe('hello');
  });

  it('gives the verdict the library gives for every byte of a two-recipient header flipped', async () => {
    const e = new Encrypter();
    e.addRecipient(keys[0]!.recipient);
    e.addRecipient(keys[1]!.recipient);
    const header = headerOf(Buffer.from(await e.encrypt('x')));
    expect(native(header, [keys[1]!.identity])).toEqual(await library(header, [keys[1]!.identity]));
    expect(native(header, [keys[1]!.identity])).toHaveProperty('ok');
    const seen = new Set<string>();
    for (let at = 0; at < header.length; at++) {
      for (const flip of [0x01, 0x20, 0x80]) {
        const bad = Buffer.from(header);
        bad[at]! ^= flip;
        // The bytes a line may hold are checked before the header is parsed (src/crypto/age.ts scanHeader).
        if (bad.subarray(0, -1).some((b) => b !== 0x0a && (b < 0x20 || b > 0x7e))) continue;
        for (const ids of [[keys[1]!.identity], [keys[2]!.identity, keys[0]!.identity]]) {
          const want = await library(bad, ids);
          expect(native(bad, ids), `byte ${at} ^ ${flip}`).toEqual(want);
          seen.add(typeof want === 'string' ? want : 'ok');
        }
      }
    }
    // Every flip fails (the MAC covers every byte), and the sweep met each way of failing.
    expect([...seen].sort()).toEqual(['HMAC', 'header', 'no match']);
  });

  it('is what a process that encrypts to and decrypts with X25519 keys runs: the library is never loaded', async () => {
    // A resolve hook that fails any import of the library: the round trip must not need it.
    const hook = join(dir, 'no-age-library.mjs');
    await writeFile(hook, "export async function resolve(s, c, next) { if (s === 'age-encryption') throw new Error('age-encryption was loaded'); return next(s, c); }\n");
    const register = join(dir, 'register.mjs');
    await writeFile(register, `import { register } from 'node:module';\nregister(${JSON.stringify(`file://${hook}`)});\n`);
    const age = new URL('../../dist/crypto/age.js', import.meta.url).href;
    const script = `
      const { createEncryptStream, openDecryptStream } = await import(${JSON.stringify(age)});
      const { Readable } = await import('node:stream');
      const enc = await createEncryptStream([${JSON.stringify(keys[0]!.recipient)}, ${JSON.stringify(keys[1]!.recipient)}]);
      const out = [];
      enc.on('data', (c) => out.push(c));
      enc.end(Buffer.from('secret'));
      await new Promise((r) => enc.on('end', r));
      const { plaintext } = await openDecryptStream(Readable.from([Buffer.concat(out)]), [${JSON.stringify(keys[1]!.identity)}]);
      const got = [];
      for await (const c of plaintext) got.push(c);
      let loaded = 'no';
      try { await import('age-encryption'); } catch (e) { loaded = e.message; }
      console.log(Buffer.concat(got).toString(), loaded);`;
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', register, '--input-type=module', '-e', script], { cwd: new URL('../..', import.meta.url).pathname });
    // The hook works (a direct import fails), and the round trip did not need the library.
    expect(stdout.trim()).toBe('secret age-encryption was loaded');
  });
});
