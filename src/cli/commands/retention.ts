import { objectLockMode, repository } from '../../config/parsers.js';
import { flag, value } from '../../config/options.js';
import { defineCommand } from '../command.js';
import { REPOSITORY, keepOptions, keepWalOption, s3Options } from '../option-groups.js';

export const options = {
  from: value('--from <repository>', 's3://bucket/prefix', repository, { aliases: [REPOSITORY] }),
  objectLockMode: value('--object-lock-mode <mode>', 'also require object lock with this mode (governance or compliance)', objectLockMode),
  json: flag('--json', 'print the result as JSON on stdout'),
  ...s3Options,
  ...keepOptions,
  ...keepWalOption,
};

export const retentionCheck = defineCommand({
  name: 'retention check',
  summary: "compare the bucket's lifecycle and object-lock configuration with the policy; drift exits 7",
  options,
  run: async (values, ctx) => (await import('../run/retention.js')).runRetentionCheckCommand(values, ctx),
});
