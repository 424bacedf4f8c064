import { UsageError } from '../../errors.js';
import { generateIdentity, writeSecretFileExclusive } from '../../crypto/age.js';
import type { Values } from '../../config/options.js';
import type { CliContext } from '../context.js';
import type { options } from '../commands/keygen.js';

/**
 * `coffer keygen`: a new age X25519 identity (`--pq`: hybrid ML-KEM-768 + X25519) in age-keygen's format. With `--out`, written
 * 0600 (never over an existing file) and the recipient printed; without, the identity goes to
 * stdout only when stdout is not a terminal (a secret key is not for the screen or scrollback).
 */
export async function runKeygenCommand(flags: Values<typeof options>, ctx: CliContext): Promise<{ recipient: string }> {
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
