import { text } from '../../config/parsers.js';
import { flag, value } from '../../config/options.js';
import { defineCommand } from '../command.js';

export const options = {
  out: value('--out <file>', 'write the identity (or with --signing, the signing key) here (mode 0600, never overwritten)', text),
  pq: flag('--pq', 'a hybrid post-quantum identity (ML-KEM-768 + X25519): AGE-SECRET-KEY-PQ-1…, recipient age1pq1…'),
  signing: flag('--signing', 'make an Ed25519 manifest signing key (OpenSSH format; needs --out) instead of an age identity; prints its public key and an allowed_signers line'),
};

export const keygen = defineCommand({
  name: 'keygen',
  summary: 'create an age X25519 identity (private key), with --pq a post-quantum one, or with --signing a manifest signing key; prints the public part',
  options,
  run: async (values, ctx) => (await import('../run/keygen.js')).runKeygenCommand(values, ctx),
});
