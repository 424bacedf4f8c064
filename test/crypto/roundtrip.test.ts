/**
 * Round trips at STREAM chunk boundaries, with the Debian `age` CLI as the interop oracle:
 * ours → `age -d`, `age -r` → ours, ours → ours. Plaintext and ciphertext are fed in random
 * pieces so chunking never lines up with writes.
 */
import { once } from 'node:events';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEncryptStream, encryptedSize, openDecryptStream } from '../../src/crypto/age.js';
import { ageKeygen, CHUNK, drain, encryptAll, piecesOf, randomBytes, run, sha256, tempDir } from './helpers.js';

let dir: string;
let cleanup: () => Promise<void>;
let key: { path: string; identity: string; recipient: string };

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
  key = await ageKeygen(dir);
});
afterAll(async () => cleanup());

const sizes: Array<[string, number]> = [
  ['0', 0],
  ['1', 1],
  ['64KiB-1', CHUNK - 1],
  ['64KiB', CHUNK],
  ['64KiB+1', CHUNK + 1],
  ['3*64KiB', 3 * CHUNK],
  ['5MiB+123', 5 * 1024 * 1024 + 123],
];

async function decryptAll(ciphertext: Buffer, identities: string[], pieces = true): Promise<Buffer> {
  const { plaintext } = await openDecryptStream(pieces ? piecesOf(ciphertext, 150_000) : Readable.from([ciphertext]), identities);
  const { data, error } = await drain(plaintext);
  if (error) throw error;
  return data;
}

describe.each(sizes)('plaintext of %s bytes', (_label, size) => {
  const plaintext = randomBytes(size);

  it('ours decrypts with age -d, and has the size age would produce', async () => {
    const enc = await createEncryptStream([key.recipient]);
    const ciphertext = await encryptAll(enc, plaintext);
    expect(ciphertext.length).toBe(encryptedSize(size, enc.headerLength));
    const chunks = Math.max(1, Math.ceil(size / CHUNK));
    expect(ciphertext.length - enc.headerLength).toBe(16 + size + 16 * chunks);
    const out = await run('age', ['-d', '-i', key.path], ciphertext);
    expect(sha256(out)).toBe(sha256(plaintext));
  });

  it('age -r output decrypts with ours', async () => {
    const ciphertext = await run('age', ['-r', key.recipient], plaintext);
    expect(sha256(await decryptAll(ciphertext, [key.identity]))).toBe(sha256(plaintext));
    expect(sha256(await decryptAll(ciphertext, [key.identity], false))).toBe(sha256(plaintext));
  });

  it('ours decrypts with ours', async () => {
    const ciphertext = await encryptAll(await createEncryptStream([key.recipient]), plaintext);
    expect(sha256(await decryptAll(ciphertext, [key.identity]))).toBe(sha256(plaintext));
  });
});

describe('multiple recipients', () => {
  it('either identity decrypts, with ours and with age -d', async () => {
    const other = await ageKeygen(dir, 'other.txt');
    const third = await ageKeygen(dir, 'third.txt');
    const plaintext = randomBytes(3 * CHUNK + 7);
    const ciphertext = await encryptAll(await createEncryptStream([key.recipient, other.recipient]), plaintext);
    for (const k of [key, other]) {
      expect(sha256(await decryptAll(ciphertext, [k.identity]))).toBe(sha256(plaintext));
      expect(sha256(await run('age', ['-d', '-i', k.path], ciphertext))).toBe(sha256(plaintext));
    }
    // A non-matching identity among the ones tried is fine.
    const { plaintext: p, recipientsStanzaCount } = await openDecryptStream(Readable.from([ciphertext]), [third.identity, other.identity]);
    expect(recipientsStanzaCount).toBe(2);
    expect(sha256((await drain(p)).data)).toBe(sha256(plaintext));
  });

  it('age -r with two recipients decrypts with ours', async () => {
    const other = await ageKeygen(dir, 'other2.txt');
    const plaintext = randomBytes(100_000);
    const ciphertext = await run('age', ['-r', key.recipient, '-r', other.recipient], plaintext);
    expect(sha256(await decryptAll(ciphertext, [other.identity]))).toBe(sha256(plaintext));
  });
});

describe('hybrid post-quantum recipients (not readable by the age 1.1 CLI)', () => {
  it('ours -> ours, alone and next to another hybrid recipient; never next to an X25519 one (age\'s mixing rule)', async () => {
    const { generateHybridIdentity, identityToRecipient } = await import('age-encryption');
    const pqIdentity = await generateHybridIdentity();
    const pqRecipient = await identityToRecipient(pqIdentity);
    const otherPq = await identityToRecipient(await generateHybridIdentity());
    const plaintext = randomBytes(CHUNK + 99);
    for (const recipients of [[pqRecipient], [otherPq, pqRecipient]]) {
      const ciphertext = await encryptAll(await createEncryptStream(recipients), plaintext);
      expect(sha256(await decryptAll(ciphertext, [pqIdentity]))).toBe(sha256(plaintext));
    }
    await expect(createEncryptStream([key.recipient, pqRecipient])).rejects.toThrow(/^post-quantum .* and classic .* recipients cannot be mixed/);
  });
});

describe('streaming behaviour', () => {
  it('respects backpressure: a slow consumer keeps buffered bytes bounded', async () => {
    const enc = await createEncryptStream([key.recipient]);
    let maxBuffered = 0;
    const total = 16 * 1024 * 1024;
    async function* source(): AsyncGenerator<Buffer> {
      const piece = randomBytes(100_000);
      for (let sent = 0; sent < total; sent += piece.length) {
        maxBuffered = Math.max(maxBuffered, enc.writableLength + enc.readableLength);
        yield piece;
      }
    }
    let received = 0;
    const slow = new Writable({
      highWaterMark: 64 * 1024,
      write(chunk: Buffer, _enc, cb) {
        received += chunk.length;
        setImmediate(cb);
      },
    });
    await pipeline(Readable.from(source()), enc, slow);
    expect(received).toBeGreaterThan(total);
    expect(maxBuffered).toBeLessThan(2 * 1024 * 1024);
  });

  it('decrypts a stream read from a file', async () => {
    const { createReadStream } = await import('node:fs');
    const { writeFile } = await import('node:fs/promises');
    const plaintext = randomBytes(1024 * 1024 + 5);
    const file = join(dir, 'file.age');
    await writeFile(file, await run('age', ['-r', key.recipient], plaintext));
    const { plaintext: p } = await openDecryptStream(createReadStream(file, { highWaterMark: 4096 }), [key.identity]);
    expect(sha256((await drain(p)).data)).toBe(sha256(plaintext));
  });

  it('destroying the plaintext stream destroys the source', async () => {
    const ciphertext = await encryptAll(await createEncryptStream([key.recipient]), randomBytes(2 * 1024 * 1024));
    const source = piecesOf(ciphertext, 10_000);
    const { plaintext } = await openDecryptStream(source, [key.identity]);
    await new Promise<void>((resolve) => plaintext.once('data', () => resolve()));
    plaintext.destroy();
    if (!source.destroyed) await once(source, 'close');
    expect(source.destroyed).toBe(true);
  });
});
