import { count, repository } from '../../config/parsers.js';
import { flag, value } from '../../config/options.js';
import { defineCommand } from '../command.js';
import { REPOSITORY, keepOptions, keepWalOption } from '../option-groups.js';

export const options = {
  from: value('--from <repository>', 'the repository directory', repository, { aliases: [REPOSITORY] }),
  dryRun: flag('--dry-run', 'print what would be deleted, delete nothing'),
  minKeep: value('--min-keep <n>', 'always keep this many newest good backups per database and kind (full, schema-only, data-only: each counts apart) and per cluster (default 3)', count(), { default: '3' }),
  json: flag('--json', 'print the plan as JSON on stdout'),
  ...keepOptions,
  ...keepWalOption,
};

export const prune = defineCommand({
  name: 'prune',
  summary: 'delete expired backups and archived WAL from a local repository (never the newest --min-keep per database or cluster, never WAL they need, never foreign files)',
  options,
  run: async (values, ctx) => (await import('../run/prune.js')).runPruneCommand(values, ctx),
});
