import { ExitCode } from '../../errors.js';
import { cluster, compression, count, duration, recipient, repository, text } from '../../config/parsers.js';
import { flag, list, value } from '../../config/options.js';
import { defineCommand } from '../command.js';
import { REPOSITORY, s3Options } from '../option-groups.js';

export const pushOptions = {
  cluster: value('--cluster <name>', 'the cluster whose WAL this is (its name in the repository)', cluster),
  to: value('--to <repository>', 's3://bucket/prefix, file:///path or a directory', repository, { aliases: [REPOSITORY] }),
  recipient: list('--recipient <age1…>', 'age recipient (public key); repeatable', recipient, { aliases: [{ key: 'recipients', env: 'COFFER_RECIPIENTS' }] }),
  recipientsFile: list('--recipients-file <file>', 'file of age recipients, one per line; repeatable', text),
  compress: value('--compress <method>', 'zstd[:level] (default zstd:1)', compression, { default: 'zstd:1' }),
  async: flag('--async', 'hand the file to a long-lived worker that uploads announced segments ahead, in parallel; exit 0 once this file is stored'),
  spoolDir: value('--spool-dir <dir>', 'with --async: status files of the worker (default TMPDIR/coffer-wal-spool-<cluster>; not inside the data directory)', text),
  asyncParallel: value('--async-parallel <n>', 'with --async: uploads at a time (default 4)', count(32), { default: '4' }),
  asyncWait: value('--async-wait <duration>', 'with --async: how long this call waits for its file before failing (PostgreSQL retries; default 60s)', duration, { default: '60s' }),
  asyncWorker: flag('--async-worker', 'internal: run as the --async worker'),
  ...s3Options,
};

/**
 * `coffer wal-push --cluster NAME --to REPO --recipient R %p [%f]`: PostgreSQL's archive_command
 * (src/physical/wal-push.ts). Exit 0 when the file is durably stored or an identical copy
 * already was; 5 when a different copy is stored under the name; 2 for a name that is no WAL
 * file; 4 for storage failures. PostgreSQL keeps the file and retries on any non-zero exit.
 */
export const walPushCommand = defineCommand({
  name: 'wal-push',
  summary: "archive one WAL file (archive_command = 'coffer wal-push --cluster NAME --to REPO --recipient age1… %p')",
  options: pushOptions,
  operands: '<path> [name]',
  run: async (values, ctx, config, operands) => (await import('../run/wal.js')).runWalPush(values, ctx, config, operands),
});

export const fetchOptions = {
  cluster: value('--cluster <name>', 'the cluster whose WAL to read', cluster),
  from: value('--from <repository>', 's3://bucket/prefix, file:///path or a directory', repository, { aliases: [REPOSITORY] }),
  identity: list('--identity <file>', 'age identity file (private key); repeatable', text, { aliases: [{ key: '', env: 'COFFER_IDENTITY_FILE' }] }),
  ...s3Options,
};

/**
 * `coffer wal-fetch --cluster NAME --from REPO --identity FILE %f %p`: PostgreSQL's
 * restore_command (src/physical/wal-fetch.ts). Exit 0 when `%p` is written, 1 when the file is
 * not in the archive, 200 for every other failure, so that PostgreSQL aborts recovery.
 */
export const walFetchCommand = defineCommand({
  name: 'wal-fetch',
  summary: "restore one archived WAL file (restore_command = 'coffer wal-fetch --cluster NAME --from REPO --identity FILE %f %p')",
  options: fetchOptions,
  operands: '<name> <path>',
  failureExitCode: ExitCode.walFetchFailed,
  run: async (values, ctx, config, operands) => (await import('../run/wal.js')).runWalFetch(values, ctx, config, operands),
});
