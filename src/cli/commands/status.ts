import { cluster, database, duration, repository, size } from '../../config/parsers.js';
import { flag, list, value } from '../../config/options.js';
import { defineCommand } from '../command.js';
import { DEFAULT_REPOSITORY, REPOSITORY, metricsFileOption, s3Options, sourceSelectOptions } from '../option-groups.js';

export const options = {
  from: value('--from <repository>', 's3://bucket/prefix, file:///path or a directory', repository, { default: DEFAULT_REPOSITORY, aliases: [REPOSITORY] }),
  db: list('--db <name>', 'database that must have a fresh backup (repeatable; default: every database in the repository)', database),
  maxAge: value('--max-age <duration>', 'oldest acceptable newest backup (default 26h)', duration, { default: '26h' }),
  rtoTarget: value('--rto-target <duration>', 'exit 7 when the restore time predicted from the newest successful drill (coffer drill --record) exceeds this, or none is recorded', duration),
  rpoTarget: value('--rpo-target <duration>', "exit 7 when the newest backup's snapshot is older than this (what a restore now would lose)", duration),
  maxDrillAge: value('--max-drill-age <duration>', 'exit 7 when the newest drill recorded is older than this, or none is', duration),
  json: flag('--json', 'print a JSON array on stdout'),
  ...metricsFileOption('for every database checked (recovery point, predicted restore, newest drill, the targets), also when it exits 7'),
  cluster: value('--cluster <name>', "report this cluster's archived WAL instead of databases: lag, newest segment; exits 7 on a gap", cluster),
  maxWalAge: value('--max-wal-age <duration>', 'with --cluster: exit 7 when the newest archived WAL file is older (default: lag is reported only)', duration),
  walSegmentSize: value('--wal-segment-size <size>', "with --cluster: the cluster's WAL segment size (default 16MiB)", size),
  ...s3Options,
  ...sourceSelectOptions,
};

export const status = defineCommand({
  name: 'status',
  summary: 'newest completed backup, recovery point and predicted restore time per database; exits 7 when one misses its objectives',
  options,
  run: async (v, ctx, config) => (await import('../run/status.js')).runStatusCommand(v, ctx, undefined, config),
});
