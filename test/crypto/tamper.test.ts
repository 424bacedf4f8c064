/** Tampering, truncation, trailing data, wrong identities and source errors. */
import { PassThrough, Readable } from 'node:stream';
import { beforeAll, describe, expect, it } from 'vitest';
import { createEncryptStream, generateIdentity, MAX_HEADER_SIZE, openDecryptStream } from '../../src/crypto/age.js';
import { IntegrityError, UsageError } from '../../src/errors.js';
import { CHUNK, drain, encryptAll, piecesOf, randomBytes, sha256 } from './helpers.js';

const SEALED = CHUNK + 16;
let id: { identity: string; recipient: string };
let plaintext: Buffer; // 3 full chunks + a short final one
let ciphertext: Buffer;
let payloadStart: number; // offset of the first sealed chunk

beforeAll(async () => {
  id = await generateIdentity();
  plaintext = randomBytes(3 * CHUNK + 1000);
  const enc = await createEncryptStream([id.recipient]);
  ciphertext = await encryptAll(enc, plaintext);
  payloadStart = enc.headerLength + 16;
});

/** Decrypt `file`; resolves with what was released and the error the stream ended with. */
async function attempt(file: Buffer, identities = [id.identity]): Promise<{ data: Buffer; error: unknown }> {
  const { plaintext: p } = await openDecryptStream(piecesOf(file, 50_000), identities);
  return drain(p);
}

function modified(f: (b: Buffer) => void): Buffer {
  const copy = Buffer.from(ciphertext);
  f(copy);
  return copy;
}

describe('tampering', () => {
  it('the untouched file decrypts', async () => {
    const { data, error } = await attempt(ciphertext);
    expect(error).toBeUndefined();
    expect(data.equals(plaintext)).toBe(true);
  });

  it('a flipped payload byte fails authentication at that chunk; earlier chunks were released', async () => {
    const bad = modified((b) => {
      b[payloadStart + 2 * SEALED + 100]! ^= 0x01;
    });
    const { data, error } = await attempt(bad);
    expect(error).toBeInstanceOf(IntegrityError);
    expect((error as Error).message).toBe(
      `authentication failed at byte offset ${payloadStart + 2 * SEALED}: the backup was modified or corrupted`,
    );
    expect(data.equals(plaintext.subarray(0, 2 * CHUNK))).toBe(true);
  });

  it('a flipped byte in the final chunk or its tag fails', async () => {
    for (const at of [ciphertext.length - 1, ciphertext.length - 20]) {
      const { data, error } = await attempt(modified((b) => void (b[at]! ^= 0x80)));
      expect(error).toBeInstanceOf(IntegrityError);
      expect(data.length).toBe(3 * CHUNK);
    }
  });

  it('a flipped payload nonce byte fails at the first chunk, releasing nothing', async () => {
    const { data, error } = await attempt(modified((b) => void (b[payloadStart - 1]! ^= 0x01)));
    expect(error).toBeInstanceOf(IntegrityError);
    expect(data.length).toBe(0);
  });

  it('a flipped header byte fails before any plaintext', async () => {
    // In the stanza body, in the MAC, in the version line.
    for (const at of [payloadStart - 16 - 60, payloadStart - 16 - 5, 3]) {
      const bad = modified((b) => void (b[at]! ^= 0x01));
      await expect(openDecryptStream(Readable.from([bad]), [id.identity])).rejects.toBeInstanceOf(IntegrityError);
    }
  });
});

describe('truncation', () => {
  it('at a chunk boundary: backup is truncated', async () => {
    const { data, error } = await attempt(ciphertext.subarray(0, payloadStart + 3 * SEALED));
    expect(error).toBeInstanceOf(IntegrityError);
    expect((error as Error).message).toMatch(/^backup is truncated/);
    expect(data.equals(plaintext.subarray(0, 3 * CHUNK))).toBe(true);
  });

  it('at a chunk boundary when the full final chunk is lost', async () => {
    const p = randomBytes(3 * CHUNK);
    const enc = await createEncryptStream([id.recipient]);
    const c = await encryptAll(enc, p);
    const { error } = await attempt(c.subarray(0, enc.headerLength + 16 + 2 * SEALED));
    expect((error as Error).message).toMatch(/^backup is truncated/);
    expect(error).toBeInstanceOf(IntegrityError);
  });

  it('mid-chunk, and inside a tag, fails', async () => {
    for (const cut of [payloadStart + SEALED + 5000, payloadStart + 2 * SEALED - 3, ciphertext.length - 1, payloadStart + 5]) {
      const { data, error } = await attempt(ciphertext.subarray(0, cut));
      expect(error).toBeInstanceOf(IntegrityError);
      expect(data.equals(plaintext.subarray(0, data.length))).toBe(true);
    }
  });

  it('right after the header, or inside the payload nonce: rejected before resolving', async () => {
    for (const cut of [payloadStart - 16, payloadStart - 1]) {
      const opened = openDecryptStream(Readable.from([ciphertext.subarray(0, cut)]), [id.identity]);
      await expect(opened).rejects.toBeInstanceOf(IntegrityError);
      await expect(opened).rejects.toThrow(/^backup is truncated/);
    }
  });

  it('right after the nonce: backup is truncated', async () => {
    const { error } = await attempt(ciphertext.subarray(0, payloadStart));
    expect(error).toBeInstanceOf(IntegrityError);
    expect((error as Error).message).toMatch(/^backup is truncated/);
  });

  it('inside the header: corrupt header', async () => {
    for (const cut of [0, 10, 40, payloadStart - 20]) {
      const opened = openDecryptStream(Readable.from([ciphertext.subarray(0, cut)]), [id.identity]);
      await expect(opened).rejects.toThrow(/^not an age file, or its header was modified or corrupted/);
    }
  });
});

describe('trailing data', () => {
  it('appended garbage of any size fails', async () => {
    for (const n of [1, 15, 16, 17, 100, SEALED, 70_000]) {
      const { data, error } = await attempt(Buffer.concat([ciphertext, randomBytes(n)]));
      expect(error).toBeInstanceOf(IntegrityError);
      expect(data.equals(plaintext.subarray(0, data.length))).toBe(true);
    }
  });

  it('data after a full final chunk is reported as such', async () => {
    const p = randomBytes(2 * CHUNK);
    const c = await encryptAll(await createEncryptStream([id.recipient]), p);
    const { data, error } = await attempt(Buffer.concat([c, Buffer.from('x')]));
    expect((error as Error).message).toMatch(/^unexpected data after the end of the backup/);
    expect(data.equals(p)).toBe(true);
  });

  it('two concatenated backups fail', async () => {
    const { error } = await attempt(Buffer.concat([ciphertext, ciphertext]));
    expect(error).toBeInstanceOf(IntegrityError);
  });
});

describe('identities and inputs', () => {
  it('a wrong identity fails before any plaintext, and the source is destroyed', async () => {
    const other = await generateIdentity();
    const source = piecesOf(ciphertext, 1000);
    const opened = openDecryptStream(source, [other.identity]);
    await expect(opened).rejects.toBeInstanceOf(IntegrityError);
    await expect(opened).rejects.toThrow(/^no identity matches this backup's recipients$/);
    const err = await opened.catch((e: IntegrityError) => e);
    expect((err as IntegrityError).hint).toMatch(/identity/);
    expect(source.destroyed).toBe(true);
  });

  it('no identities, or an invalid one, is a usage error without key material', async () => {
    await expect(openDecryptStream(Readable.from([ciphertext]), [])).rejects.toBeInstanceOf(UsageError);
    const broken = id.identity.slice(0, -3) + 'QQQ';
    const err = await openDecryptStream(Readable.from([ciphertext]), [broken]).catch((e: Error) => e);
    expect(err).toBeInstanceOf(UsageError);
    expect(JSON.stringify({ m: (err as Error).message, c: String((err as Error).cause) })).not.toContain(broken.slice(16, 40));
  });

  it('garbage, an empty input and an armored file are not age files', async () => {
    for (const input of [randomBytes(5000), Buffer.alloc(0), Buffer.from('hello\n'), Buffer.from('age-encryption.org/v2\n')]) {
      await expect(openDecryptStream(Readable.from([input]), [id.identity])).rejects.toThrow(/^not an age file, or its header was modified or corrupted/);
    }
    const armored = Buffer.from('-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCg==\n-----END AGE ENCRYPTED FILE-----\n');
    await expect(openDecryptStream(Readable.from([armored]), [id.identity])).rejects.toThrow(/armored/);
  });

  it('a header line without newline that never ends is bounded', async () => {
    // Past the longest header coffer reads (16 MiB: rekey's padded headers are 5 MiB).
    expect(MAX_HEADER_SIZE).toBe(16 * 1024 * 1024);
    const endless = Buffer.concat([Buffer.from('age-encryption.org/v1\n-> X25519 '), Buffer.alloc(MAX_HEADER_SIZE + 1024 * 1024, 0x41)]);
    await expect(openDecryptStream(piecesOf(endless, 64 * 1024), [id.identity])).rejects.toThrow(/header too large/);
  });

  it('a source error while reading the header rejects with that error', async () => {
    const source = new PassThrough();
    const opened = openDecryptStream(source, [id.identity]);
    source.write(ciphertext.subarray(0, 30));
    const boom = new Error('network reset');
    source.destroy(boom);
    await expect(opened).rejects.toBe(boom);
  });

  it('a source error mid-payload reaches the plaintext stream', async () => {
    const source = new PassThrough();
    const opened = openDecryptStream(source, [id.identity]);
    source.write(ciphertext.subarray(0, payloadStart + SEALED + 100));
    const { plaintext: p } = await opened;
    const drained = drain(p);
    const boom = new Error('network reset');
    setTimeout(() => source.destroy(boom), 10);
    const { data, error } = await drained;
    expect(error).toBe(boom);
    expect(data.equals(plaintext.subarray(0, CHUNK))).toBe(true);
  });

  it('bytes past the header delivered in the same piece are not lost', async () => {
    // Whole file in one piece, and byte by byte through the header.
    const { plaintext: p1 } = await openDecryptStream(Readable.from([ciphertext]), [id.identity]);
    expect(sha256((await drain(p1)).data)).toBe(sha256(plaintext));
    async function* bytewise(): AsyncGenerator<Buffer> {
      for (let i = 0; i < payloadStart + 20; i++) yield ciphertext.subarray(i, i + 1);
      yield ciphertext.subarray(payloadStart + 20);
    }
    const { plaintext: p2 } = await openDecryptStream(Readable.from(bytewise()), [id.identity]);
    expect(sha256((await drain(p2)).data)).toBe(sha256(plaintext));
  });
});
