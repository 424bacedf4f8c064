import { DEFAULT_KEEP, DEFAULT_KEEP_WAL, type RetentionPolicy } from '../retention/policy.js';
import { parseRepository, type RepositoryRef } from '../store/open.js';
import { database, duration, hook, period, rate, repository, text, url } from '../config/parsers.js';
import { flag, list, secret, value, type Alias, type OptionDecl, type Parser } from '../config/options.js';
import { UsageError } from '../errors.js';
import type { BackupKind } from '../catalog/catalog.js';

/** Options several commands declare alike. Each command spreads them where its help lists them. */

/** `repository:` / COFFER_REPOSITORY: the repository of whichever command runs (`--to`, `--from`). */
export const REPOSITORY: Alias = { key: 'repository', env: 'COFFER_REPOSITORY' };

/** The repository when none is configured (`backup`, `list`, `status`, `restore`, `verify`, `drill`). */
export const DEFAULT_REPOSITORY = './backups';

/** The S3 connection, and the keys for it (secrets: the SDK's own chain is used when unset). */
export const s3Options = {
  s3Endpoint: value('--s3-endpoint <url>', 'S3 endpoint for MinIO/Ceph/… (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)', url),
  s3Region: value('--s3-region <region>', 'S3 region (default: AWS_REGION, else us-east-1)', text),
  s3Timeout: value('--s3-timeout <duration>', 'fail an S3 request whose connection is silent this long; it is retried (default 2m)', duration),
  maxRate: value('--max-rate <rate>', 'cap uploads and downloads at this average rate, all transfers of the run together, e.g. 5MB/s, 512KiB/s, 40Mbit/s (MB = 10^6 bytes)', rate),
  s3AccessKeyId: secret('COFFER_S3_ACCESS_KEY_ID'),
  s3SecretAccessKey: secret('COFFER_S3_SECRET_ACCESS_KEY'),
};

/** The password for `--dbname`'s server, when the connection string and libpq's files have none. */
export const pgPassword = secret('COFFER_PGPASSWORD');

/** How long each tier is kept (units d, w, mo = 31 d, y = 366 d; whole days rounded up). */
export const keepOptions = {
  keepDaily: value('--keep-daily <period>', 'keep daily backups this long (default 14d)', period, { default: DEFAULT_KEEP.daily }),
  keepWeekly: value('--keep-weekly <period>', 'keep weekly backups this long (default 8w)', period, { default: DEFAULT_KEEP.weekly }),
  keepMonthly: value('--keep-monthly <period>', 'keep monthly backups this long (default 12mo = 372 days)', period, { default: DEFAULT_KEEP.monthly }),
  keepManual: value('--keep-manual <period>', 'keep manual backups this long (default 90d)', period, { default: DEFAULT_KEEP.manual }),
};

/** How long archived WAL is kept: the lifecycle's `wal` rule (`init`, `retention check`). */
export const keepWalOption = {
  keepWal: value('--keep-wal <period>', 'keep archived WAL (wal-push) this long: the point-in-time window (default 14d)', period, { default: DEFAULT_KEEP_WAL }),
};

/** The retention policy of the keep options (in days); `walDays` when the command has --keep-wal. */
export function retentionPolicy(v: { keepDaily: number; keepWeekly: number; keepMonthly: number; keepManual: number; keepWal?: number }): RetentionPolicy {
  return { days: { daily: v.keepDaily, weekly: v.keepWeekly, monthly: v.keepMonthly, manual: v.keepManual }, ...(v.keepWal !== undefined ? { walDays: v.keepWal } : {}) };
}

/** `--kind`: `full` (a custom archive: the default for latest), `schema-only` or `data-only`. */
const backupKind: Parser<BackupKind> = {
  parse: (s) => {
    if (s === 'full' || s === 'custom') return 'custom';
    if (s === 'schema-only' || s === 'data-only') return s;
    throw new UsageError(`--kind ${JSON.stringify(s)}: expected full, schema-only or data-only`);
  },
};

/**
 * `--trusted-signers` (restore, verify, drill, show, list --verify-signatures): an OpenSSH
 * allowed_signers file; only backups whose manifests a listed key signed are used, and a broken
 * chain of a database's manifests refuses its backups (src/trust/manifest-trust.ts).
 */
export const trustedSignersOption = {
  trustedSigners: value('--trusted-signers <file>', 'OpenSSH allowed_signers file: use only backups whose manifest a listed key signed, with an unbroken chain (exit 5 otherwise)', text, { aliases: [{ key: '', env: 'COFFER_TRUSTED_SIGNERS_FILE' }] }),
};

/** `--signing-key` (backup, rekey): the Ed25519 key each manifest written is signed with (src/trust/). */
export const signingKeyOption = {
  signingKey: value('--signing-key <file>', 'sign each manifest with this Ed25519 private key file (coffer keygen --signing, or ssh-keygen -t ed25519; mode 0600)', text, { aliases: [{ key: '', env: 'COFFER_SIGNING_KEY_FILE' }] }),
};

/** Where a backup to read comes from: a repository (and which backup), or a local copy. */
export const sourceOptions = {
  // No declared default: `--file` cannot be combined with a --from that was set.
  from: value('--from <repository>', 's3://bucket/prefix, file:///path or a directory', repository, { aliases: [REPOSITORY] }),
  db: value('--db <name>', 'database whose backups to use (needed when the repository holds several)', database),
  backup: value('--backup <id>', 'backup id, or latest', text),
  kind: value('--kind <kind>', 'with latest: full (default), schema-only or data-only', backupKind),
  file: value('--file <path>', 'a local copy of a backup object (.age), instead of a repository', text),
  identity: list('--identity <file>', 'age identity file (private key); repeatable', text, { aliases: [{ key: '', env: 'COFFER_IDENTITY_FILE' }] }),
  ...trustedSignersOption,
  ...s3Options,
};

/** The repository of a source: `--from`, else {@link DEFAULT_REPOSITORY}. */
export function sourceRepository(from: RepositoryRef | undefined): RepositoryRef {
  return from ?? parseRepository(DEFAULT_REPOSITORY);
}

/** The server a restore writes to. */
export const serverOptions = {
  dbname: value('--dbname <conninfo>', 'target server (libpq conninfo or URI; default: PG* environment)', text),
  pgPassword,
  maintenanceDb: value('--maintenance-db <name>', 'database to connect to for CREATE/DROP/RENAME', text, { default: 'postgres', showDefault: true }),
  pgBin: value('--pg-bin <dir>', 'directory of pg_restore/psql', text),
  pgRestoreCommand: value('--pg-restore-command <command>', 'command prefix to run pg_restore (no shell)', text),
  psqlCommand: value('--psql-command <command>', 'command prefix to run psql (no shell)', text),
};


/** `--before` / `--after`: commands run around the run (src/ops/hooks.ts). */
export const hookOptions = {
  before: value('--before <command>', 'run this command (argv, no shell) before anything else; if it fails, nothing is done (exit 9)', hook),
  after: value('--after <command>', 'run this command (argv, no shell) at the end, success or failure, with COFFER_HOOK_RESULT and the rest in its environment', hook),
};

/** `s3://bucket/prefix` or `file:///path`: a repository as hooks and messages name it. */
export function repositoryText(ref: RepositoryRef): string {
  return ref.kind === 'file' ? `file://${ref.root}` : `s3://${ref.bucket}${ref.prefix ? `/${ref.prefix}` : ''}`;
}

/**
 * `--metrics-file` (backup, status, drill): the node_exporter textfile its gauges go to. Commands
 * may share one file: each rewrites its own series and keeps the others (src/observe/metrics.ts).
 */
export function metricsFileOption(when: string): { metricsFile: OptionDecl<string | undefined> } {
  return { metricsFile: value('--metrics-file <path>', `write Prometheus textfile-collector metrics here ${when}`, text) };
}

/** Which servers of the configuration file's `sources:` a run walks (backup, status). Per run: command line only. */
export const sourceSelectOptions = {
  source: list('--source <name>', "this source of the configuration file's sources: (repeatable)", text, { configurable: false }),
  allSources: flag('--all-sources', "every source of the configuration file's sources:, one after the other; one failing does not stop the others"),
};
