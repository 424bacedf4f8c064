/**
 * `coffer backup --physical` (an online base backup) and `coffer backup --data-dir DIR` /
 * `--tar-command CMD` (a cold archive of a stopped cluster's directory): the physical half of
 * the backup command (issue 14). The options are declared with the backup command
 * (./backup.ts); this module checks their combination and runs src/physical/backup.ts.
 */
import type { ManifestSigner } from '../../trust/manifest-trust.js';
import { statSync } from 'node:fs';
import * as path from 'node:path';
import type { Tier } from '../../catalog/layout.js';
import type { Compression } from '../../catalog/manifest.js';
import { errnoWords, formatErrorLine, UsageError } from '../../errors.js';
import { formatBytes } from '../../observe/log.js';
import { writeBackupMetrics } from '../../observe/metrics.js';
import { acquireBackupLock, defaultLockDir, type HeldLock, type LockRequest } from '../../ops/lock.js';
import { Notifier } from '../../observe/notify.js';
import { Progress } from '../../observe/progress.js';
import { databaseOf, type ConnectionSpec } from '../../pg/connection.js';
import { resolvePgBasebackup } from '../../pg/pg-basebackup.js';
import { resolvePgTools } from '../../pg/tools.js';
import { runPhysicalBackup, type PhysicalBackupResult, type PhysicalSource } from '../../physical/backup.js';
import { basebackupSource } from '../../physical/basebackup.js';
import { volumeSource } from '../../physical/volume.js';
import type { ObjectRetention } from '../../store/object-store.js';
import { openStore, type RepositoryRef, type S3Settings } from '../../store/open.js';
import type { CliContext } from '../context.js';

/** The backup command's values the physical path reads. */
export interface PhysicalFlags {
  to: RepositoryRef;
  physical: boolean;
  cluster: string | undefined;
  dataDir: string | undefined;
  tarCommand: string | undefined;
  attach: string[];
  fastCheckpoint: boolean;
  pgBin: string | undefined;
  pgBasebackupCommand: string | undefined;
  psqlCommand: string | undefined;
  label: string | undefined;
  compress: Compression;
  partSize: number | undefined;
  maxParts: number;
  json: boolean;
  notify: string | undefined;
  webhook: string | undefined;
  metricsFile: string | undefined;
  wait: { ms: number } | undefined;
  lockDir: string | undefined;
  /** Options of logical backups only: refused here. */
  schemaOnly: boolean;
  dataOnly: boolean;
  globals: boolean;
  allDatabases: boolean;
  excludeTableData: string[];
  disableTriggers: boolean;
}

/** Whether the backup command was asked for a physical backup. */
export function isPhysicalBackup(f: Pick<PhysicalFlags, 'physical' | 'dataDir' | 'tarCommand'>): boolean {
  return f.physical || f.dataDir !== undefined || f.tarCommand !== undefined;
}

/** What the logical path has already resolved: the recipients, the tier, object lock, the connection. */
export interface PhysicalCommon {
  recipients: string[];
  tier: Tier | undefined;
  retentionFor: ((tier: Tier, now: Date) => ObjectRetention) | undefined;
  conn: ConnectionSpec;
  s3: S3Settings;
  /** `--signing-key`: signs the manifest (no chain for physical backups). */
  signer: ManifestSigner | undefined;
}

export async function runPhysicalBackupCommand(flags: PhysicalFlags, common: PhysicalCommon, ctx: CliContext): Promise<PhysicalBackupResult[]> {
  const cluster = flags.cluster;
  if (cluster === undefined) {
    throw new UsageError('a physical backup needs --cluster NAME: the name its backups are kept under in the repository', { hint: 'e.g. --cluster main' });
  }
  if (flags.physical && (flags.dataDir !== undefined || flags.tarCommand !== undefined)) {
    throw new UsageError('--physical (an online base backup) and --data-dir/--tar-command (an archive of a stopped cluster) cannot be combined', {
      hint: 'use --physical for a running server, --data-dir DIR for a stopped one',
    });
  }
  const logicalOnly: Array<[boolean, string]> = [
    [flags.schemaOnly, '--schema-only'],
    [flags.dataOnly, '--data-only'],
    [flags.globals, '--globals'],
    [flags.allDatabases, '--all-databases'],
    [flags.excludeTableData.length > 0, '--exclude-table-data'],
    [flags.disableTriggers, '--disable-triggers'],
  ];
  const bad = logicalOnly.filter(([on]) => on).map(([, name]) => name);
  if (bad.length > 0) throw new UsageError(`${bad.join(', ')} apply to logical backups (pg_dump) only, not to a physical backup of the whole cluster`);
  if (flags.compress.kind !== 'zstd') throw new UsageError(`a physical backup is compressed with zstd (--compress zstd[:level]); got ${flags.compress.kind === 'none' ? 'none' : 'gzip'}`);
  const level = flags.compress.level;
  for (const f of flags.attach) {
    let st;
    try {
      st = statSync(path.resolve(ctx.cwd, f));
    } catch (err) {
      throw new UsageError(`--attach ${f}: ${errnoWords(err)}`);
    }
    if (!st.isFile()) throw new UsageError(`--attach ${f} is not a regular file`);
  }
  if (new Set(flags.attach.map((f) => path.basename(f))).size !== flags.attach.length) {
    throw new UsageError('--attach: two files have the same name; the manifest lists attachments by name', { hint: 'rename one of them' });
  }

  const env = ctx.env;
  let source: PhysicalSource;
  let advisory: LockRequest['advisory'];
  if (flags.physical) {
    const tools = resolvePgTools({ binDir: flags.pgBin, psqlCommand: flags.psqlCommand });
    const database = databaseOf(common.conn, undefined, env) ?? 'postgres';
    advisory = { tools, conn: common.conn, connectTo: database };
    source = basebackupSource({
      tools,
      pgBasebackup: resolvePgBasebackup({ binDir: flags.pgBin, command: flags.pgBasebackupCommand }),
      conn: common.conn,
      database,
      fastCheckpoint: flags.fastCheckpoint,
      env,
    });
  } else {
    if (flags.dataDir === undefined && flags.tarCommand === undefined) throw new Error('internal: not a volume backup');
    source = volumeSource({ dataDir: flags.dataDir === undefined ? undefined : path.resolve(ctx.cwd, flags.dataDir), tarCommand: flags.tarCommand, env });
  }

  const notifier = new Notifier({ notifyUrl: flags.notify, webhookUrl: flags.webhook, log: ctx.log, signal: ctx.signal });
  const store = await openStore(flags.to, common.s3);
  notifier.start();
  const progress = new Progress(`backup cluster ${cluster}`, { tty: ctx.stderrIsTty, log: ctx.log, fields: { task: 'backup', cluster } });
  const t0 = Date.now();
  let tarSeen = false;
  let result: PhysicalBackupResult | undefined;
  let lock: HeldLock | undefined;
  let failure: unknown;
  try {
    // One physical backup of a cluster per repository at a time, as for a database: the lock
    // file on this host, and for an online backup the server's advisory lock (another host).
    lock = await acquireBackupLock({
      repository: store.location,
      database: `cluster=${cluster}`,
      subject: `cluster ${JSON.stringify(cluster)}`,
      lockDir: path.resolve(ctx.cwd, flags.lockDir ?? defaultLockDir(env)),
      runId: ctx.log.runId,
      ...(advisory ? { advisory } : {}),
      env,
      waitMs: flags.wait?.ms ?? 0,
      signal: ctx.signal,
      log: ctx.log,
    });
    result = await runPhysicalBackup({
      store,
      cluster,
      source,
      recipients: common.recipients,
      signer: common.signer,
      level,
      tier: common.tier,
      label: flags.label,
      partSize: flags.partSize,
      maxParts: flags.maxParts,
      attach: flags.attach.map((f) => path.resolve(ctx.cwd, f)),
      retentionFor: common.retentionFor,
      env,
      signal: ctx.signal,
      log: ctx.log,
      // Stored bytes until the tar is seen; the tar against what the source expects, an estimate.
      onProgress: (b) => {
        if (!tarSeen) progress.update(b);
      },
      onTarProgress: (b, expected) => {
        if (!tarSeen) progress.setTotal(expected > 0 ? expected : undefined, true);
        tarSeen = true;
        progress.update(b);
      },
    });
  } catch (err) {
    failure = err;
    await notifier.failure(formatErrorLine(err));
    throw err;
  } finally {
    progress.stop();
    await lock?.release();
    store.close();
    if (flags.metricsFile !== undefined) {
      const metricsFile = path.resolve(ctx.cwd, flags.metricsFile);
      await writeBackupMetrics(metricsFile, [
        {
          repository: store.location,
          cluster,
          database: '',
          success: failure === undefined && result !== undefined,
          finishedAt: result ? Date.parse(result.manifest.finishedAt) / 1000 : Date.now() / 1000,
          durationSeconds: (Date.now() - t0) / 1000,
          bytes: result?.manifest.archive.size ?? 0,
        },
      ]).catch((err: unknown) => ctx.log.warn(`could not write the metrics file: ${formatErrorLine(err)}`));
    }
  }
  await notifier.success();
  const m = result.manifest;
  if (flags.json) ctx.stdout(`${JSON.stringify([m], null, 2)}\n`);
  else if (ctx.stdoutIsTty) {
    const w = m.warnings.length;
    ctx.stdout(`${m.id}  cluster ${m.cluster}  ${m.kind}  ${m.tier}  ${formatBytes(m.archive.size)}${w > 0 ? `  ${w} warning(s): see the log and the manifest` : ''}\n`);
  }
  return [result];
}
