import { text } from '../../config/parsers.js';
import { flag, value } from '../../config/options.js';
import { defineCommand } from '../command.js';

export const options = {
  out: value('--out <file>', 'write the identity here (mode 0600, never overwritten)', text),
  pq: flag('--pq', 'a hybrid post-quantum identity (ML-KEM-768 + X25519): AGE-SECRET-KEY-PQ-1…, recipient age1pq1…'),
};

export const keygen = defineCommand({
  name: 'keygen',
  summary: 'create an age X25519 identity (private key), or with --pq a post-quantum one; prints its recipient',
  options,
  run: async (values, ctx) => (await import('../run/keygen.js')).runKeygenCommand(values, ctx),
});
