import { text } from '../../config/parsers.js';
import { value } from '../../config/options.js';
import { defineCommand } from '../command.js';

export const options = {
  dir: value('--dir <directory>', 'repository directory', text, { default: './backups', showDefault: true }),
  pgBin: value('--pg-bin <dir>', 'PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)', text),
};

export const demo = defineCommand({
  name: 'demo',
  summary: 'try coffer: a throwaway PostgreSQL with a sample "vault" database, backed up into ./backups',
  options,
  run: async (values, ctx) => (await import('../run/demo.js')).runDemoCommand(values, ctx),
});
