import { UsageError } from '../../errors.js';
import { generateIdentity, writeSecretFileExclusive } from '../../crypto/age.js';
import type { Values } from '../../config/options.js';
import type { CliContext } from '../context.js';
import type { options } from '../commands/keygen.js';
import { hostname } from 'node:os';
import { fingerprint, generateSigningKey, publicKeyLine } from '../../trust/signing-key.js';
import { MANIFEST_NAMESPACE } from '../../trust/sshsig.js';

/**
 * `coffer keygen`: a new age X25519 identity (`--pq`: hybrid ML-KEM-768 + X25519) in age-keygen's format. With `--out`, written
 * 0600 (never over an existing file) and the recipient printed; without, the identity goes to
 * stdout only when stdout is not a terminal (a secret key is not for the screen or scrollback).
 */
export async function runKeygenCommand(flags: Values<typeof options>, ctx: CliContext): Promise<{ recipient: string } | { publicKey: string; allowedSigners: string }> {
  if (flags.signing && flags.pq) throw new UsageError('--pq and --signing cannot be combined: --pq makes an age identity (encryption), --signing an Ed25519 key that signs manifests', { hint: 'run coffer keygen twice' });
  if (flags.signing) return signingKeygen(flags.out, ctx);
  const id = await generateIdentity(new Date(), { pq: flags.pq });
  if (flags.out !== undefined) {
    await writeSecretFileExclusive(flags.out, id.fileText);
    ctx.stdout(`${id.recipient}\n`);
    ctx.log.info('identity written; keep it offline, give the backup host only the recipient', { file: flags.out, recipient: id.recipient });
    return { recipient: id.recipient };
  }
  if (ctx.stdoutIsTty) {
    throw new UsageError('refusing to print a secret key to a terminal', { hint: 'use --out FILE, or redirect stdout to a file' });
  }
  ctx.stdout(id.fileText);
  ctx.log.info('identity written to stdout', { recipient: id.recipient });
  return { recipient: id.recipient };
}

/**
 * `coffer keygen --signing --out F`: an Ed25519 key in OpenSSH's private key format (what
 * `ssh-keygen -t ed25519 -N ''` writes), mode 0600, never over an existing file. Prints its
 * public key line and an allowed_signers line (principal `coffer@<host>`, this namespace only)
 * for the restore hosts' `--trusted-signers` file and for `ssh-keygen -Y verify`.
 */
async function signingKeygen(out: string | undefined, ctx: CliContext): Promise<{ publicKey: string; allowedSigners: string }> {
  if (out === undefined) throw new UsageError('--signing needs --out FILE: the signing key is written to a file (mode 0600), its public key to stdout');
  const principal = `coffer@${hostname()}`;
  const { key, fileText } = generateSigningKey(principal);
  await writeSecretFileExclusive(out, fileText);
  const publicKey = publicKeyLine(key.publicKey, principal);
  const allowedSigners = `${principal} namespaces="${MANIFEST_NAMESPACE}" ${publicKeyLine(key.publicKey, '')}`;
  ctx.stdout(`${publicKey}\n${allowedSigners}\n`);
  ctx.log.info('signing key written; give backup --signing-key this file, and put the allowed_signers line (second line) in the restore hosts\' --trusted-signers file', { file: out, fingerprint: fingerprint(key.publicKey) });
  return { publicKey, allowedSigners };
}
