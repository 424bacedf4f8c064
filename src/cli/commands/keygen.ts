import { UsageError } from '../../errors.js';
import { generateIdentity, writeSecretFileExclusive } from '../../crypto/age.js';
import { text } from '../../config/parsers.js';
import { value, type Values } from '../../config/options.js';
import type { CliContext } from '../context.js';
import { defineCommand } from '../command.js';

const options = {
  out: value('--out <file>', 'write the identity here (mode 0600, never overwritten)', text),
};

export const keygen = defineCommand({
  name: 'keygen',
  summary: 'create an age X25519 identity (private key); prints its recipient',
  options,
  run: runKeygenCommand,
});

/**
 * `coffer keygen`: a new age X25519 identity in age-keygen's format. With `--out`, written
 * 0600 (never over an existing file) and the recipient printed; without, the identity goes to
 * stdout only when stdout is not a terminal (a secret key is not for the screen or scrollback).
 */
async function runKeygenCommand(flags: Values<typeof options>, ctx: CliContext): Promise<{ recipient: string }> {
  const id = await generateIdentity();
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
