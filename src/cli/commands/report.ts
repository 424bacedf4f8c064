import { count, text } from '../../config/parsers.js';
import { flag, value } from '../../config/options.js';
import { defineCommand } from '../command.js';
import { keepOptions, keepWalOption, s3Options, sourceSelectOptions } from '../option-groups.js';
import { options as statusOptions } from './status.js';
import { options as retentionOptions } from './retention.js';

// The objectives are status's own declarations: a report judges as status does.
const { from, db, maxAge, rtoTarget, rpoTarget, maxDrillAge } = statusOptions;

export const reportOptions = {
  from,
  db,
  maxAge,
  rtoTarget,
  rpoTarget,
  maxDrillAge,
  html: value('--html <file>', 'write the report as one self-contained HTML page (no script, no network when viewed)', text),
  json: flag('--json', 'print the report as JSON on stdout (the default without --html)'),
  limit: value('--limit <n>', 'backups per database in the report, newest first', count(100000), { default: '200' }),
  ...s3Options,
  ...sourceSelectOptions,
  // The retention policy the bucket is compared with, as `retention check` compares it.
  objectLockMode: retentionOptions.objectLockMode,
  ...keepOptions,
  ...keepWalOption,
};

export const report = defineCommand({
  name: 'report',
  summary: "the repository's backups, recovery points, restore times and drills as JSON or one HTML page",
  options: reportOptions,
  run: async (v, ctx, config) => (await import('../run/report.js')).runReportCommand(v, ctx, undefined, config),
});
