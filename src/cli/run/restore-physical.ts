/** `coffer restore --physical`: the command of a restore into a new data directory (options: commands/restore-physical.ts). */
import { realpathSync } from 'node:fs';
import * as path from 'node:path';
import { parseLsn } from '../../catalog/cluster-layout.js';
import { parseBackupSelector } from '../../catalog/layout.js';
import { resolveS3Settings } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import { UsageError } from '../../errors.js';
import { formatBytes } from '../../observe/log.js';
import { Progress } from '../../observe/progress.js';
import type { PhysicalRestoreSummary, RecoveryTarget, TargetAction, TargetTimeline } from '../../physical/restore.js';
import { openStore } from '../../store/open.js';
import { readTrustedSigners } from '../../trust/allowed-signers.js';
import { RepositoryTrust } from '../../trust/manifest-trust.js';
import type { PhysicalEntry } from '../../catalog/physical-catalog.js';
import type { CliContext } from '../context.js';
import type { sourceOptions } from '../option-groups.js';
import { sourceRepository } from '../option-groups.js';
import type { physicalRestoreOptions } from '../commands/restore-physical.js';

type PhysicalValues = Values<typeof physicalRestoreOptions>;

/** A logical restore refuses the physical options (they would be silently ignored). */
export function refuseWithoutPhysical(flags: PhysicalValues): void {
  const given = (
    [
      ['--cluster', flags.cluster],
      ['--to-dir', flags.toDir],
      ['--target-time', flags.targetTime],
      ['--target-lsn', flags.targetLsn],
      ['--target-name', flags.targetName],
      ['--target-action', flags.targetAction],
      ['--target-timeline', flags.targetTimeline],
      ['--dir-owner', flags.dirOwner],
      ['--smoke-db', flags.smokeDb],
      ['--attachments-dir', flags.attachmentsDir],
    ] as const
  ).find(([, v]) => v !== undefined);
  if (given) throw new UsageError(`${given[0]} needs --physical`, { hint: 'restore --physical --cluster NAME --to-dir DIR restores a physical backup' });
  if (flags.verify) throw new UsageError('--verify needs --physical', { hint: 'a logical restore always checks the restored database; `coffer verify` checks a backup without restoring' });
}

/** The recovery target of the flags (at most one). */
function recoveryTarget(flags: PhysicalValues): RecoveryTarget | undefined {
  const given = [flags.targetTime, flags.targetLsn, flags.targetName].filter((v) => v !== undefined);
  if (given.length > 1) throw new UsageError('give at most one of --target-time, --target-lsn and --target-name');
  if (flags.targetTime !== undefined) return { kind: 'time', time: parseTargetTime(flags.targetTime), text: flags.targetTime.trim() };
  if (flags.targetLsn !== undefined) return { kind: 'lsn', lsn: flags.targetLsn.trim().toUpperCase(), value: parseLsn(flags.targetLsn) };
  if (flags.targetName !== undefined) {
    if (flags.targetName === '') throw new UsageError('--target-name is empty');
    return { kind: 'name', name: flags.targetName };
  }
  return undefined;
}

/** `'…'` for /bin/sh. */
function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

type Flags = PhysicalValues & Values<typeof sourceOptions> & { smoke: string[]; pgBin: string | undefined; json: boolean; jobs: number | undefined; targetDb: string | undefined; output: string | undefined; replace: boolean };

export async function runPhysicalRestoreCommand(flags: Flags, identities: string[], ctx: CliContext): Promise<PhysicalRestoreSummary> {
  if (flags.cluster === undefined) throw new UsageError('--physical needs --cluster NAME (the cluster whose backups to restore)');
  if (flags.toDir === undefined) throw new UsageError('--physical needs --to-dir DIR (a new or empty data directory)');
  const clash = (
    [
      ['--target-db', flags.targetDb !== undefined],
      ['--output', flags.output !== undefined],
      ['--replace', flags.replace],
      ['--jobs', flags.jobs !== undefined],
      ['--file', flags.file !== undefined],
      ['--db', flags.db !== undefined],
      ['--kind', flags.kind !== undefined],
    ] as const
  ).find(([, g]) => g);
  if (clash) throw new UsageError(`--physical cannot be combined with ${clash[0]}`);
  const target = recoveryTarget(flags);
  const s3 = resolveS3Settings(flags, ctx.env);
  const trusted = flags.trustedSigners !== undefined ? await readTrustedSigners(path.resolve(ctx.cwd, flags.trustedSigners)) : undefined;
  if (!trusted) ctx.log.warn('the origin of the backup is not checked: no trusted signers; pass --trusted-signers FILE (or COFFER_TRUSTED_SIGNERS_FILE) to restore only backups signed by your backup hosts');
  const store = await openStore(sourceRepository(flags.from), s3);
  const trust = trusted ? new RepositoryTrust(store, trusted, ctx.signal) : undefined;
  const identityFiles = flags.identity.map((f) => path.resolve(ctx.cwd, f));
  // restore_command: this coffer, by absolute paths (the server has no PATH of ours), reading the
  // same repository with the same identity files; credentials come from the server's environment.
  const argv = [
    process.execPath,
    realpathSync(process.argv[1]!),
    'wal-fetch',
    '--cluster',
    flags.cluster,
    '--from',
    store.location,
    ...(flags.s3Endpoint !== undefined ? ['--s3-endpoint', flags.s3Endpoint] : []),
    ...(flags.s3Region !== undefined ? ['--s3-region', flags.s3Region] : []),
    ...identityFiles.flatMap((f) => ['--identity', f]),
  ];
  const restoreCommand = `${argv.map(shellQuote).join(' ')} %f %p`;
  // The one child that needs the S3 secret: the verification server's restore_command (coffer
  // itself). Children get an environment without it (childSafeEnv); this one gets it back, in its
  // environment only (never on a command line or in postgresql.auto.conf).
  const credentials = s3.credentials ?? { accessKeyId: process.env.AWS_ACCESS_KEY_ID, secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY, sessionToken: process.env.AWS_SESSION_TOKEN };
  const serverSecrets: Record<string, string> = {};
  if (credentials.accessKeyId) serverSecrets.AWS_ACCESS_KEY_ID = credentials.accessKeyId;
  if (credentials.secretAccessKey) serverSecrets.AWS_SECRET_ACCESS_KEY = credentials.secretAccessKey;
  if ('sessionToken' in credentials && credentials.sessionToken) serverSecrets.AWS_SESSION_TOKEN = credentials.sessionToken;
  // Loaded when used: it brings the server-start machinery (execa), which no other command needs.
  const { runPhysicalRestore } = await import('../../physical/restore.js');
  const progress = new Progress('restore', { tty: ctx.stderrIsTty, log: ctx.log, fields: { task: 'restore', cluster: flags.cluster } });
  let summary: PhysicalRestoreSummary;
  try {
    summary = await runPhysicalRestore({
      store,
      cluster: flags.cluster,
      selector: parseBackupSelector(flags.backup ?? 'latest'),
      ...(trust
        ? {
            // Base backups are signed like logical ones; archived WAL is not (README, "Signed manifests").
            untrustedBecause: async (e: PhysicalEntry) => {
              const st = await trust.physicalSignature(store, e, ctx.signal);
              return st.state === 'signed' ? undefined : st.problem;
            },
            onSkip: (why: string) => ctx.log.warn(`skipping an untrusted backup: ${why}`),
          }
        : {}),
      identities,
      identityFiles,
      toDir: path.resolve(ctx.cwd, flags.toDir),
      target,
      targetAction: (flags.targetAction ?? 'promote') as TargetAction,
      ...(flags.targetTimeline !== undefined ? { targetTimeline: parseTargetTimeline(flags.targetTimeline) } : {}),
      owner: flags.dirOwner,
      binDir: flags.pgBin,
      verify: flags.verify,
      smoke: flags.smoke,
      smokeDb: flags.smokeDb ?? 'postgres',
      ...(flags.attachmentsDir !== undefined ? { attachmentsDir: path.resolve(ctx.cwd, flags.attachmentsDir) } : {}),
      restoreCommand,
      env: ctx.env,
      serverSecrets,
      signal: ctx.signal,
      log: ctx.log,
      onProgress: (n, total) => {
        progress.setTotal(total);
        progress.update(n);
      },
    });
  } finally {
    progress.stop();
    store.close();
  }
  if (flags.json) ctx.stdout(`${JSON.stringify(summary, null, 2)}\n`);
  else {
    const v = summary.verified;
    const lines = [
      `restored ${summary.kind === 'basebackup' ? 'base backup' : 'volume archive'} ${summary.backupId} of cluster ${JSON.stringify(summary.cluster)} into ${summary.dir} in ${(summary.durationMs / 1000).toFixed(1)}s (${formatBytes(summary.storedBytes)} stored, ${formatBytes(summary.tarBytes)} unpacked; PostgreSQL ${summary.majorVersion})`,
      summary.recovery
        ? `recovery: replays archived WAL ${summary.recovery.target ? `to ${summary.recovery.target}, then ${summary.recovery.action}` : 'to the end of the archive'} (restore_command and recovery.signal written)`
        : summary.kind === 'basebackup'
          ? 'recovery: none needed (no archived WAL after this backup); the directory starts at the end of the backup'
          : 'recovery: none (a volume archive starts as it was stopped; archived WAL after it is replayed only with a target)',
      ...(v
        ? [
            `verified: ${v.manifestVerified ? 'pg_verifybackup ok; ' : ''}recovered and ${v.state}${v.lastReplayed ? `, last transaction replayed at ${v.lastReplayed}` : ''} (${v.seconds.toFixed(1)}s)`,
            ...v.smoke.map((c) => `smoke: ${c.sql} → ${c.result.replace(/\n/g, ' | ')}`),
          ]
        : []),
      ...summary.attachments.map((a) => `attached file: ${a.name} (${formatBytes(a.bytes)})${a.path ? ` → ${a.path}` : ' (not fetched: --attachments-dir DIR)'}`),
      summary.startHint,
    ];
    ctx.stdout(`${lines.join('\n')}\n`);
  }
  return summary;
}

/** Parses `--target-timeline`: `current`, `latest`, or a timeline number (decimal, or hex as PostgreSQL names it with 0x). */
export function parseTargetTimeline(s: string): TargetTimeline {
  const t = s.trim().toLowerCase();
  if (t === 'current' || t === 'latest') return t;
  const n = /^\d+$/.test(t) ? Number(t) : /^0x[0-9a-f]+$/.test(t) ? Number.parseInt(t.slice(2), 16) : NaN;
  if (!Number.isSafeInteger(n) || n < 1 || n > 0xffffffff) throw new UsageError(`--target-timeline ${JSON.stringify(s)} is not a timeline`, { hint: 'current (the backup\'s own), latest, or a timeline number such as 2' });
  return n;
}

/**
 * Parses `--target-time`: an ISO 8601 time with a zone (Z or ±hh:mm); a time without one is
 * refused (whose clock?), and so is an impossible date or time of day (2026-11-31, 2027-02-29,
 * 24:00, 10:60): `new Date` would roll them over into the next day or month.
 */
export function parseTargetTime(s: string): Date {
  const t = s.trim();
  if (!/(Z|[+-]\d{2}(:?\d{2})?)$/i.test(t)) {
    throw new UsageError(`--target-time ${JSON.stringify(s)} has no time zone`, { hint: 'write it with one, e.g. 2026-11-30T14:05:00Z or "2026-11-30 23:05:00+09:00"' });
  }
  const notATime = (why: string): UsageError => new UsageError(`--target-time ${JSON.stringify(s)} is not a time${why}`, { hint: 'e.g. 2026-11-30T14:05:00Z' });
  const m = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?\s*(?:Z|([+-])(\d{2}):?(\d{2})?)$/i.exec(t);
  if (!m) throw notATime('');
  const [y, mo, d, h, mi, sec] = [m[1], m[2], m[3], m[4], m[5], m[6] ?? '0'].map(Number) as [number, number, number, number, number, number];
  const daysIn = [31, y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
  if (mo < 1 || mo > 12) throw notATime(`: month ${mo} does not exist`);
  if (d < 1 || d > daysIn[mo - 1]!) throw notATime(`: ${y}-${m[2]} has no day ${d}`);
  if (h > 23 || mi > 59 || sec > 59) throw notATime(`: ${m[4]}:${m[5]}${m[6] !== undefined ? `:${m[6]}` : ''} is not a time of day`);
  if (m[8] !== undefined && (Number(m[8]) > 15 || Number(m[9] ?? '0') > 59)) throw notATime(`: the zone offset ${m[7]}${m[8]}${m[9] !== undefined ? `:${m[9]}` : ''} does not exist`);
  const date = new Date(t.replace(' ', 'T').replace(/\s+(?=[Z+-][^-]*$)/i, '').replace(/([+-]\d{2})$/, '$1:00').replace(/([+-]\d{2})(\d{2})$/, '$1:$2'));
  if (Number.isNaN(date.getTime())) throw notATime('');
  return date;
}
