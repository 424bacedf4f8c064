/**
 * age's header for X25519 recipients, with node:crypto (OpenSSL) alone: the header coffer writes
 * for `age1…` recipients, and the file key an `AGE-SECRET-KEY-1…` identity unwraps from a header.
 * The `age-encryption` library (src/crypto/keys.ts `library()`) does the same and more (hybrid
 * post-quantum keys, plugins' stanzas), but loading it costs about 0.15 s of CPU per process:
 * most backups and restores use X25519 keys only, and need none of it.
 *
 * Format (age v1, https://age-encryption.org/v1, the C2SP specification):
 *   header  "age-encryption.org/v1\n"
 *           stanzas: "-> " arg (" " arg)* "\n", then the body in base64 (canonical, no padding),
 *           64 characters (48 bytes) per line, ending with a shorter line (possibly empty)
 *           "--- " base64(HMAC-SHA256(HKDF(file key, "", "header"), header up to "---")) "\n"
 *   X25519  "-> X25519 " base64(ephemeral share) with body = ChaCha20-Poly1305(key, zero nonce,
 *           file key), key = HKDF-SHA256(shared secret, share || recipient, "age-encryption.org/v1/X25519")
 * Checked by the official test vectors (test/crypto/vectors.test.ts) and the age CLI both ways.
 */
import { createCipheriv, createDecipheriv, createHmac, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, timingSafeEqual, type KeyObject } from 'node:crypto';
import { bech32Decode } from './bech32.js';

const VERSION_LINE = 'age-encryption.org/v1';
const X25519_LABEL = 'age-encryption.org/v1/X25519';
const FILE_KEY_SIZE = 16;
const BODY_LINE_BYTES = 48;
const PKCS8_X25519 = Buffer.from('302e020100300506032b656e04220420', 'hex');
const SPKI_X25519 = Buffer.from('302a300506032b656e032100', 'hex');

/** A recipient stanza: its arguments (the first is its type) and its body. */
export interface AgeStanza {
  args: string[];
  body: Buffer;
}

/** A header that does not follow the format (the caller says "not an age file, or its header was modified"). */
export class AgeHeaderError extends Error {}

/** A header whose MAC does not match its file key: it was modified. */
export class AgeMacError extends Error {}

/** Whether coffer reads this identity itself (X25519), without the library. */
export function isX25519Identity(identity: string): boolean {
  return identity.startsWith('AGE-SECRET-KEY-1');
}

/** Whether coffer writes this recipient's stanza itself (X25519: age1 and bech32 data, no further "1"). */
export function isX25519Recipient(recipient: string): boolean {
  return recipient.startsWith('age1') && !recipient.slice(4).includes('1');
}

/** Canonical unpadded base64 (age's rule: one encoding per value), or undefined. */
function base64Strict(s: string): Buffer | undefined {
  if (!/^[A-Za-z0-9+/]*$/.test(s) || s.length % 4 === 1) return undefined;
  const b = Buffer.from(s, 'base64');
  return unpadded(b) === s ? b : undefined;
}

function unpadded(b: Buffer): string {
  return b.toString('base64').replace(/=+$/, '');
}

/**
 * The stanzas and MAC of a header (the bytes through the MAC line's newline). Throws
 * {@link AgeHeaderError} for anything the format does not allow.
 */
export function parseAgeHeader(header: Buffer): { stanzas: AgeStanza[]; macInput: Buffer; mac: Buffer } {
  const text = header.toString('latin1');
  if (!text.endsWith('\n')) throw new AgeHeaderError('header does not end with a newline');
  const lines = text.slice(0, -1).split('\n');
  for (const line of lines) if (/[^\x20-\x7e]/.test(line)) throw new AgeHeaderError('non-ASCII byte in header');
  if (lines[0] !== VERSION_LINE) throw new AgeHeaderError('unsupported version line');
  const stanzas: AgeStanza[] = [];
  let i = 1;
  for (;;) {
    const line = lines[i++];
    if (line === undefined) throw new AgeHeaderError('header ends before its MAC');
    const args = line.split(' ');
    if (args.length < 2 || args[0] !== '->') {
      // The MAC line: "--- " and the MAC. Nothing may follow it.
      if (!line.startsWith('--- ') || i !== lines.length) throw new AgeHeaderError('bad MAC line');
      const mac = base64Strict(line.slice(4));
      if (mac === undefined) throw new AgeHeaderError('MAC not in canonical base64');
      const end = text.length - 1 - line.length + 3;
      return { stanzas, macInput: header.subarray(0, end), mac };
    }
    args.shift();
    if (args.some((a) => a.length === 0)) throw new AgeHeaderError('empty stanza argument');
    const body: Buffer[] = [];
    for (;;) {
      const bodyLine = lines[i++];
      if (bodyLine === undefined) throw new AgeHeaderError('stanza without its final body line');
      const bytes = base64Strict(bodyLine);
      if (bytes === undefined || bytes.length > BODY_LINE_BYTES) throw new AgeHeaderError('bad stanza body line');
      body.push(bytes);
      if (bytes.length < BODY_LINE_BYTES) break;
    }
    stanzas.push({ args, body: Buffer.concat(body) });
  }
}

/** An X25519 identity's private key and its public key (the recipient's bytes). */
function identityKeys(identity: string): { privateKey: KeyObject; publicBytes: Buffer } {
  const decoded = bech32Decode(identity, 90);
  if (decoded === undefined || decoded.bytes.length !== 32) throw new AgeHeaderError('invalid identity');
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_X25519, decoded.bytes]), format: 'der', type: 'pkcs8' });
  const publicBytes = createPublicKey(privateKey).export({ format: 'der', type: 'spki' }).subarray(-32);
  return { privateKey, publicBytes };
}

function publicKeyOf(bytes: Uint8Array): KeyObject {
  return createPublicKey({ key: Buffer.concat([SPKI_X25519, bytes]), format: 'der', type: 'spki' });
}

/** Recipients' public keys, made once per process (a run writes several objects to the same recipients; OpenSSL's decoding is the slow part). */
const recipientKeys = new Map<string, { bytes: Uint8Array; key: KeyObject }>();

function recipientKey(recipient: string): { bytes: Uint8Array; key: KeyObject } {
  let k = recipientKeys.get(recipient);
  if (!k) {
    const decoded = bech32Decode(recipient, 90);
    if (decoded === undefined || decoded.bytes.length !== 32) throw new Error('invalid X25519 recipient');
    k = { bytes: decoded.bytes, key: publicKeyOf(decoded.bytes) };
    recipientKeys.set(recipient, k);
  }
  return k;
}

function wrapKey(secret: Buffer, share: Uint8Array, recipient: Uint8Array): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, Buffer.concat([share, recipient]), X25519_LABEL, 32));
}

/** The header MAC of a file key over the header up to "---". */
function headerMac(fileKey: Uint8Array, macInput: Buffer): Buffer {
  const key = Buffer.from(hkdfSync('sha256', fileKey, Buffer.alloc(0), 'header', 32));
  return createHmac('sha256', key).update(macInput).digest();
}

/**
 * The file key that one of `identities` (X25519, tried in order) unwraps from the header's
 * X25519 stanzas, checked against the header MAC; null when none of them matches. Throws
 * {@link AgeHeaderError} for a malformed X25519 stanza or a low-order share, {@link AgeMacError}
 * when the MAC does not match.
 */
export function unwrapX25519(parsed: { stanzas: AgeStanza[]; macInput: Buffer; mac: Buffer }, identities: string[]): Buffer | null {
  let fileKey: Buffer | null = null;
  for (const identity of identities) {
    const { privateKey, publicBytes } = identityKeys(identity);
    for (const s of parsed.stanzas) {
      if (s.args[0] !== 'X25519') continue;
      const share = s.args.length === 2 ? base64Strict(s.args[1]!) : undefined;
      if (share === undefined || share.length !== 32) throw new AgeHeaderError('invalid X25519 stanza');
      let secret: Buffer;
      try {
        // OpenSSL refuses a low-order share (an all-zero shared secret), as the spec requires.
        secret = diffieHellman({ privateKey, publicKey: publicKeyOf(share) });
      } catch {
        throw new AgeHeaderError('invalid X25519 share');
      }
      if (s.body.length !== FILE_KEY_SIZE + 16) throw new AgeHeaderError('invalid X25519 stanza body');
      const key = wrapKey(secret, share, publicBytes);
      const d = createDecipheriv('chacha20-poly1305', key, Buffer.alloc(12), { authTagLength: 16 });
      d.setAuthTag(s.body.subarray(FILE_KEY_SIZE));
      try {
        fileKey = Buffer.concat([d.update(s.body.subarray(0, FILE_KEY_SIZE)), d.final()]);
        break;
      } catch {
        // Not this identity's stanza.
      }
    }
    if (fileKey) break;
  }
  if (!fileKey) return null;
  const mac = headerMac(fileKey, parsed.macInput);
  if (parsed.mac.length !== mac.length || !timingSafeEqual(parsed.mac, mac)) {
    fileKey.fill(0);
    throw new AgeMacError('header MAC mismatch');
  }
  return fileKey;
}

/** A header wrapping `fileKey` to X25519 `recipients` (age1…, validated by the caller), one stanza each, in order. */
export function x25519Header(fileKey: Uint8Array, recipients: string[]): Buffer {
  const lines = [`${VERSION_LINE}\n`];
  for (const r of recipients) {
    const recipient = recipientKey(r);
    const ephemeral = generateKeyPairSync('x25519');
    const share = ephemeral.publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
    const secret = diffieHellman({ privateKey: ephemeral.privateKey, publicKey: recipient.key });
    const c = createCipheriv('chacha20-poly1305', wrapKey(secret, share, recipient.bytes), Buffer.alloc(12), { authTagLength: 16 });
    const body = Buffer.concat([c.update(fileKey), c.final(), c.getAuthTag()]);
    // 32 bytes: one body line, shorter than 48 bytes, ends the stanza.
    lines.push(`-> X25519 ${unpadded(share)}\n${unpadded(body)}\n`);
  }
  lines.push('---');
  const macInput = Buffer.from(lines.join(''), 'latin1');
  return Buffer.concat([macInput, Buffer.from(` ${unpadded(headerMac(fileKey, macInput))}\n`, 'latin1')]);
}

