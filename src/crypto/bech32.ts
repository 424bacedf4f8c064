/**
 * BIP 173 bech32 decoding, for checking age recipients (`age1…`, `age1pq1…`) without loading the
 * `age-encryption` library (and its post-quantum dependencies): about 0.15 s of CPU at every
 * start of coffer, paid before any command ran, while most commands never encrypt.
 * Cross-checked against the library in test/crypto/keys.test.ts.
 */

const CHARSET = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';
const GENERATOR = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];

function polymod(values: number[]): number {
  let chk = 1;
  for (const v of values) {
    const top = chk >>> 25;
    chk = ((chk & 0x1ffffff) << 5) ^ v;
    for (let i = 0; i < 5; i++) if ((top >>> i) & 1) chk ^= GENERATOR[i]!;
  }
  return chk;
}

/**
 * Decodes a bech32 string (not bech32m) into its human-readable prefix (lower case) and bytes.
 * `maxLength` is BIP 173's 90 unless the format lifts it (age's hybrid recipients do).
 *
 * @returns `undefined` when `s` is not valid bech32: mixed case, a character outside the
 *   alphabet, no separator, a wrong checksum, or non-zero padding bits.
 */
export function bech32Decode(s: string, maxLength = 90): { prefix: string; bytes: Uint8Array } | undefined {
  if (s.length > maxLength || (s !== s.toLowerCase() && s !== s.toUpperCase())) return undefined;
  const lower = s.toLowerCase();
  const sep = lower.lastIndexOf('1');
  if (sep < 1 || lower.length - sep - 1 < 6) return undefined;
  const prefix = lower.slice(0, sep);
  const values: number[] = [];
  for (const c of prefix) {
    const code = c.charCodeAt(0);
    if (code < 33 || code > 126) return undefined;
  }
  for (const c of prefix) values.push(c.charCodeAt(0) >>> 5);
  values.push(0);
  for (const c of prefix) values.push(c.charCodeAt(0) & 31);
  const data: number[] = [];
  for (const c of lower.slice(sep + 1)) {
    const v = CHARSET.indexOf(c);
    if (v < 0) return undefined;
    data.push(v);
  }
  if (polymod([...values, ...data]) !== 1) return undefined;
  // 5-bit groups → bytes; at most 4 padding bits, all zero.
  const words = data.slice(0, -6);
  const bytes: number[] = [];
  let acc = 0;
  let bits = 0;
  for (const w of words) {
    acc = (acc << 5) | w;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((acc >>> bits) & 0xff);
    }
    acc &= (1 << bits) - 1;
  }
  if (bits >= 5 || acc !== 0) return undefined;
  return { prefix, bytes: Uint8Array.from(bytes) };
}
