import { text } from '../../config/parsers.js';
import { value } from '../../config/options.js';
import { defineCommand } from '../command.js';

export const options = {
  out: value('--out <file>', 'write the identity here (mode 0600, never overwritten)', text),
};

export const keygen = defineCommand({
  name: 'keygen',
  summary: 'create an age X25519 identity (private key); prints its recipient',
  options,
  run: async (values, ctx) => (await import('../run/keygen.js')).runKeygenCommand(values, ctx),
});
