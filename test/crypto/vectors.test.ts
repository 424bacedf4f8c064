/**
 * The official age test vectors (C2SP CCTV, npm `cctv-age`) through openDecryptStream.
 *
 * Skipped, with counts asserted so the set cannot silently grow: ASCII-armored vectors (coffer
 * reads binary age files only) and passphrase-only (scrypt) vectors (coffer has no passphrase
 * mode). Everything else — X25519 and hybrid post-quantum identities — must behave as the vector
 * expects, including the payload hash of the plaintext released before a payload failure.
 */
import { inflateSync } from 'node:zlib';
import { Readable } from 'node:stream';
import * as vectors from 'cctv-age';
import { describe, expect, it } from 'vitest';
import { openDecryptStream } from '../../src/crypto/age.js';
import { IntegrityError } from '../../src/errors.js';
import { drain, piecesOf, sha256 } from './helpers.js';

interface Vector {
  name: string;
  expect: string;
  payload: string | undefined;
  identities: string[];
  passphrases: string[];
  armored: boolean;
  file: Buffer;
}

function parseVector(name: string, bytes: Uint8Array): Vector {
  const buf = Buffer.from(bytes);
  const sep = buf.indexOf('\n\n');
  const fields: Record<string, string[]> = {};
  for (const line of buf.subarray(0, sep).toString().split('\n')) {
    const i = line.indexOf(': ');
    (fields[line.slice(0, i)] ??= []).push(line.slice(i + 2));
  }
  let file = buf.subarray(sep + 2);
  if (fields.compressed?.[0] === 'zlib') file = inflateSync(file);
  return {
    name,
    expect: fields.expect![0]!,
    payload: fields.payload?.[0],
    identities: fields.identity ?? [],
    passphrases: fields.passphrase ?? [],
    armored: fields.armored?.[0] === 'yes',
    file,
  };
}

const all = Object.entries(vectors as Record<string, Uint8Array>)
  .filter(([name, v]) => name !== 'default' && v instanceof Uint8Array)
  .map(([name, v]) => parseVector(name, v));
const armored = all.filter((v) => v.armored);
const passphraseOnly = all.filter((v) => !v.armored && v.identities.length === 0 && v.passphrases.length > 0);
const tested = all.filter((v) => !armored.includes(v) && !passphraseOnly.includes(v));

describe('cctv-age vectors', () => {
  it('skips only armored and passphrase-only vectors, in known numbers', () => {
    expect(all.length).toBe(143);
    expect(armored.length).toBe(33);
    expect(passphraseOnly.length).toBe(24);
    expect(tested.length).toBe(86);
    // Vectors without identities are only the empty-file/armor ones, which fail before identities matter.
    expect(tested.filter((v) => v.identities.length === 0).map((v) => v.name)).toEqual(['empty']);
  });

  for (const v of tested) {
    it(`${v.name}: ${v.expect}`, async () => {
      const identities = v.identities.length > 0 ? v.identities : ['AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0'];
      // Large vectors in random pieces, small ones in one piece: both paths of the reader.
      const source = v.file.length > 1000 ? piecesOf(v.file, 100_000) : Readable.from([v.file]);
      const opened = openDecryptStream(source, identities);
      switch (v.expect) {
        case 'success': {
          const { plaintext } = await opened;
          const { data, error } = await drain(plaintext);
          expect(error).toBeUndefined();
          expect(sha256(data)).toBe(v.payload);
          break;
        }
        case 'payload failure': {
          const { plaintext } = await opened;
          const { data, error } = await drain(plaintext);
          expect(error).toBeInstanceOf(IntegrityError);
          // Whatever was released before the failure is the authenticated prefix the vector expects.
          expect(sha256(data)).toBe(v.payload);
          break;
        }
        case 'no match':
          await expect(opened).rejects.toThrow(/^no identity matches this backup's recipients$/);
          await expect(opened).rejects.toBeInstanceOf(IntegrityError);
          break;
        case 'HMAC failure':
          await expect(opened).rejects.toThrow(/header authentication failed/);
          await expect(opened).rejects.toBeInstanceOf(IntegrityError);
          break;
        case 'header failure':
          await expect(opened).rejects.toBeInstanceOf(IntegrityError);
          await expect(opened).rejects.not.toThrow(/no identity matches/);
          break;
        default:
          throw new Error(`unexpected expectation ${v.expect}`);
      }
    });
  }
});
