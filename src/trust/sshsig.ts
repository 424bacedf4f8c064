/**
 * OpenSSH's signature format, SSHSIG (PROTOCOL.sshsig), for Ed25519 keys: what
 * `ssh-keygen -Y sign` writes and `ssh-keygen -Y verify` checks.
 *
 *   signed data = "SSHSIG" ‖ string namespace ‖ string reserved ‖ string hash_algorithm ‖ string H(message)
 *   blob        = "SSHSIG" ‖ uint32 1 ‖ string publickey ‖ string namespace ‖ string reserved
 *                 ‖ string hash_algorithm ‖ string (string "ssh-ed25519" ‖ string signature)
 *
 * armored as `-----BEGIN SSH SIGNATURE-----`. coffer signs with sha512 (ssh-keygen's default).
 */
import { createHash, sign, verify } from 'node:crypto';
import { armor, dearmor, SshReader, sshString, sshUint32 } from './ssh-wire.js';
import { ED25519, publicKeyBlob, publicKeyObject, type SigningKey } from './signing-key.js';

const MAGIC = Buffer.from('SSHSIG', 'latin1');
const VERSION = 1;
const LABEL = 'SSH SIGNATURE';

/** The namespace of coffer's manifest signatures (ssh-keygen -Y verify -n). */
export const MANIFEST_NAMESPACE = 'coffer-manifest@coffer';

/** What a parsed signature says; `publicKey` is the raw 32-byte Ed25519 key. */
export interface ParsedSignature {
  publicKey: Buffer;
  namespace: string;
  hashAlgorithm: string;
  signature: Buffer;
}

function signedData(namespace: string, hashAlgorithm: string, message: Uint8Array): Buffer {
  const h = createHash(hashAlgorithm).update(message).digest();
  return Buffer.concat([MAGIC, sshString(namespace), sshString(''), sshString(hashAlgorithm), sshString(h)]);
}

/** Signs `message`: the armored SSHSIG text (ends with a newline), as `ssh-keygen -Y sign` writes. */
export function signMessage(key: SigningKey, message: Uint8Array, namespace: string = MANIFEST_NAMESPACE): string {
  const sig = sign(null, signedData(namespace, 'sha512', message), key.privateKey);
  const blob = Buffer.concat([
    MAGIC,
    sshUint32(VERSION),
    sshString(publicKeyBlob(key.publicKey)),
    sshString(namespace),
    sshString(''),
    sshString('sha512'),
    sshString(Buffer.concat([sshString(ED25519), sshString(sig)])),
  ]);
  return armor(LABEL, blob);
}

/**
 * Parses an armored SSHSIG. Returns a word on what is wrong instead when it is not one coffer
 * can check (not armored, another version, a key type other than Ed25519, a truncated blob).
 */
export function parseSignature(text: string): ParsedSignature | { problem: string } {
  const blob = dearmor(LABEL, text);
  if (!blob) return { problem: 'not an armored SSH signature' };
  try {
    const r = new SshReader(blob);
    if (!r.raw(6).equals(MAGIC)) return { problem: 'not an SSHSIG signature' };
    const version = r.uint32();
    if (version !== VERSION) return { problem: `SSHSIG version ${version} is not supported` };
    const pub = new SshReader(r.bytes());
    const keyType = pub.text();
    if (keyType !== ED25519) return { problem: `signed with a ${keyType} key; coffer checks Ed25519 signatures only` };
    const publicKey = pub.bytes();
    if (publicKey.length !== 32 || pub.remaining !== 0) return { problem: 'malformed public key' };
    const namespace = r.text();
    r.bytes(); // reserved
    const hashAlgorithm = r.text();
    const s = new SshReader(r.bytes());
    if (s.text() !== ED25519) return { problem: 'signature type differs from the key type' };
    const signature = s.bytes();
    if (signature.length !== 64 || r.remaining !== 0) return { problem: 'malformed signature' };
    return { publicKey: Buffer.from(publicKey), namespace, hashAlgorithm, signature: Buffer.from(signature) };
  } catch {
    return { problem: 'truncated or malformed signature' };
  }
}

/** Whether `sig` is a valid signature of `message` in `namespace` by the key it names. */
export function checkSignature(sig: ParsedSignature, message: Uint8Array, namespace: string = MANIFEST_NAMESPACE): boolean {
  if (sig.namespace !== namespace) return false;
  if (sig.hashAlgorithm !== 'sha512' && sig.hashAlgorithm !== 'sha256') return false;
  try {
    return verify(null, signedData(namespace, sig.hashAlgorithm, message), publicKeyObject(sig.publicKey), sig.signature);
  } catch {
    return false;
  }
}
