import { objectLockMode, repository } from '../../config/parsers.js';
import { flag, value } from '../../config/options.js';
import { defineCommand } from '../command.js';
import { REPOSITORY, keepOptions, keepWalOption, s3Options } from '../option-groups.js';

export const options = {
  to: value('--to <repository>', 's3://bucket/prefix', repository, { aliases: [REPOSITORY] }),
  createBucket: flag('--create-bucket', 'create the bucket if it does not exist'),
  objectLock: value('--object-lock <mode>', 'governance or compliance: create the bucket with object lock and set its default retention', objectLockMode),
  dryRun: flag('--dry-run', 'print the plan, change nothing'),
  ...s3Options,
  ...keepOptions,
  ...keepWalOption,
};

export const init = defineCommand({
  name: 'init',
  summary: 'set up an S3 bucket for coffer (admin, once, idempotent): bucket, object lock, lifecycle rules',
  options,
  run: async (values, ctx) => (await import('../run/init.js')).runInitCommand(values, ctx),
});
