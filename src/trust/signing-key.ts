/**
 * Ed25519 signing keys for manifests (`coffer keygen --signing`, `backup --signing-key`).
 *
 * The key file is an unencrypted OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`),
 * the format `ssh-keygen -t ed25519 -N ''` writes, so ssh-keygen can use coffer's keys and
 * coffer can use ssh-keygen's. A PKCS#8 PEM Ed25519 key (`-----BEGIN PRIVATE KEY-----`,
 * `openssl genpkey -algorithm ed25519`) is read too.
 *
 * Secret key material never appears in an error message or an error's `cause`.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { open } from 'node:fs/promises';
import { errnoWords, UsageError } from '../errors.js';
import { armor, dearmor, SshReader, sshString, sshUint32, WireError } from './ssh-wire.js';

export const ED25519 = 'ssh-ed25519';
const OPENSSH_MAGIC = Buffer.from('openssh-key-v1\0', 'latin1');

/** A signing key: the node key object and its public half in SSH form. */
export interface SigningKey {
  privateKey: KeyObject;
  /** The 32-byte Ed25519 public key. */
  publicKey: Buffer;
  /** The comment stored with the key (OpenSSH format), '' when none. */
  comment: string;
}

/** The SSH public key blob: string "ssh-ed25519", string key. */
export function publicKeyBlob(publicKey: Uint8Array): Buffer {
  return Buffer.concat([sshString(ED25519), sshString(publicKey)]);
}

/** `SHA256:<base64, unpadded>`, as ssh-keygen -l prints it. */
export function fingerprint(publicKey: Uint8Array): string {
  return `SHA256:${createHash('sha256').update(publicKeyBlob(publicKey)).digest('base64').replace(/=+$/, '')}`;
}

/** `ssh-ed25519 AAAA… comment`: an authorized_keys / .pub line. */
export function publicKeyLine(publicKey: Uint8Array, comment: string): string {
  return `${ED25519} ${publicKeyBlob(publicKey).toString('base64')}${comment ? ` ${comment}` : ''}`;
}

function b64url(b: Uint8Array): string {
  return Buffer.from(b).toString('base64url');
}

/** The node key objects of a raw Ed25519 key pair. */
function keyFromRaw(seed: Uint8Array, publicKey: Uint8Array): KeyObject {
  return createPrivateKey({ key: { kty: 'OKP', crv: 'Ed25519', d: b64url(seed), x: b64url(publicKey) }, format: 'jwk' });
}

/** The node public key object of a raw 32-byte Ed25519 key. */
export function publicKeyObject(publicKey: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64url(publicKey) }, format: 'jwk' });
}

/** Raw seed and public key of a node Ed25519 private key. */
function rawOf(key: KeyObject): { seed: Buffer; publicKey: Buffer } {
  const jwk = key.export({ format: 'jwk' });
  if (jwk.crv !== 'Ed25519' || typeof jwk.d !== 'string' || typeof jwk.x !== 'string') throw new Error('not an Ed25519 key');
  return { seed: Buffer.from(jwk.d, 'base64url'), publicKey: Buffer.from(jwk.x, 'base64url') };
}

/**
 * A new Ed25519 key and its file text in OpenSSH's private key format, unencrypted
 * (what `ssh-keygen -t ed25519 -N '' -C <comment>` writes).
 */
export function generateSigningKey(comment: string): { key: SigningKey; fileText: string } {
  const { privateKey } = generateKeyPairSync('ed25519');
  const { seed, publicKey } = rawOf(privateKey);
  const check = randomBytes(4);
  const pub = publicKeyBlob(publicKey);
  let priv = Buffer.concat([check, check, sshString(ED25519), sshString(publicKey), sshString(Buffer.concat([seed, publicKey])), sshString(comment)]);
  // Padded to the cipher's block size (8 for "none") with 1, 2, 3, …
  const pad = (8 - (priv.length % 8)) % 8;
  priv = Buffer.concat([priv, Buffer.from(Array.from({ length: pad }, (_, i) => i + 1))]);
  const body = Buffer.concat([OPENSSH_MAGIC, sshString('none'), sshString('none'), sshString(''), sshUint32(1), sshString(pub), sshString(priv)]);
  return { key: { privateKey, publicKey, comment }, fileText: armor('OPENSSH PRIVATE KEY', body) };
}

/** Parses an OpenSSH private key body; `problem` words what is wrong (never the key). */
function parseOpenSsh(body: Buffer, problem: (what: string) => never): SigningKey {
  if (!body.subarray(0, OPENSSH_MAGIC.length).equals(OPENSSH_MAGIC)) return problem('not an OpenSSH private key');
  try {
    const r = new SshReader(body.subarray(OPENSSH_MAGIC.length));
    const cipher = r.text();
    const kdf = r.text();
    r.bytes();
    if (cipher !== 'none' || kdf !== 'none') {
      return problem("is protected by a passphrase; coffer needs an unencrypted key (remove the passphrase on a copy: ssh-keygen -p -N '' -f COPY)");
    }
    const n = r.uint32();
    if (n !== 1) return problem(`holds ${n} keys; expected one`);
    const pub = new SshReader(r.bytes());
    const type = pub.text();
    if (type !== ED25519) return problem(`is a ${type} key; manifest signing keys are Ed25519 (ssh-keygen -t ed25519, or coffer keygen --signing)`);
    const publicKey = pub.bytes();
    const priv = new SshReader(r.bytes());
    if (priv.uint32() !== priv.uint32()) return problem('is corrupt (check bytes differ)');
    if (priv.text() !== ED25519) return problem('is corrupt (key type differs)');
    const pk = priv.bytes();
    const sk = priv.bytes();
    const comment = priv.text();
    if (pk.length !== 32 || !pk.equals(publicKey) || sk.length !== 64 || !sk.subarray(32).equals(pk)) return problem('is corrupt (the public and private halves differ)');
    const privateKey = keyFromRaw(sk.subarray(0, 32), pk);
    if (!rawOf(privateKey).publicKey.equals(pk)) return problem('is corrupt (the public key does not belong to the private key)');
    return { privateKey, publicKey: Buffer.from(pk), comment };
  } catch (err) {
    if (err instanceof UsageError) throw err;
    return problem(err instanceof WireError ? 'is truncated or corrupt' : 'is corrupt');
  }
}

/**
 * Reads a signing key file: an unencrypted OpenSSH Ed25519 private key, or a PKCS#8 PEM one.
 *
 * @throws {UsageError} when the file is missing or unreadable, not a key, another key type,
 *   encrypted, corrupt, or readable or writable by group or others (`chmod 600`). Messages name
 *   the file, never its content.
 */
export async function readSigningKeyFile(path: string): Promise<SigningKey> {
  const what = `signing key ${path}`;
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    throw new UsageError(`cannot read ${what}: ${errnoWords(err)}`);
  }
  let text: string;
  let mode: number;
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new UsageError(`${what} is not a regular file`);
    if (st.size > 64 * 1024) throw new UsageError(`${what} is too large to be a key file`);
    mode = st.mode;
    text = (await handle.readFile()).toString('latin1');
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`cannot read ${what}: ${errnoWords(err)}`);
  } finally {
    await handle.close();
  }
  const problem = (p: string): never => {
    throw new UsageError(`${what} ${p}`);
  };
  let key: SigningKey;
  const openssh = dearmor('OPENSSH PRIVATE KEY', text);
  if (openssh) key = parseOpenSsh(openssh, problem);
  else if (/-----BEGIN ENCRYPTED PRIVATE KEY-----/.test(text)) return problem('is protected by a passphrase; coffer needs an unencrypted key');
  else if (/^\s*-----BEGIN PRIVATE KEY-----/.test(text)) {
    let privateKey: KeyObject;
    try {
      privateKey = createPrivateKey({ key: text, format: 'pem' });
    } catch {
      return problem('is not a valid PEM private key');
    }
    if (privateKey.asymmetricKeyType !== 'ed25519') return problem(`is a ${privateKey.asymmetricKeyType ?? 'non-Ed25519'} key; manifest signing keys are Ed25519`);
    key = { privateKey, publicKey: rawOf(privateKey).publicKey, comment: '' };
  } else if (/^\s*(ssh-ed25519|ssh-rsa|ecdsa-sha2-)/.test(text)) {
    return problem('is a public key; pass the private key file (without .pub)');
  } else if (/AGE-SECRET-KEY-/.test(text)) {
    return problem('is an age identity; signing keys are made by coffer keygen --signing (or ssh-keygen -t ed25519)');
  } else {
    return problem('is not an OpenSSH or PKCS#8 Ed25519 private key (make one with coffer keygen --signing)');
  }
  if ((mode & 0o077) !== 0) {
    throw new UsageError(`${what} is accessible by other users (mode ${(mode & 0o777).toString(8).padStart(4, '0')}); run chmod 600 ${path}`);
  }
  return key;
}
