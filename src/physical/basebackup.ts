/**
 * The source of an online physical backup: `pg_basebackup -D - -Ft -X fetch -v` of a running
 * server (src/pg/pg-basebackup.ts), checked before it starts (the role's REPLICATION right,
 * no tablespaces outside the data directory, a client at least as new as the server) and after
 * (a whole tar holding backup_label, global/pg_control, PG_VERSION, backup_manifest and every
 * WAL segment from the start point to the end point pg_basebackup reported).
 */
import { nextSegmentName, parseLsn, segmentOfLsn } from '../catalog/cluster-layout.js';
import { libpqEnv, type ConnectionSpec } from '../pg/connection.js';
import {
  checkBasebackupPossible,
  checkBasebackupVersion,
  explainBasebackupFailure,
  parseBasebackupWal,
  pgBasebackupArgv,
  probeCluster,
  type ClusterInfo,
  type PgBasebackupTool,
} from '../pg/pg-basebackup.js';
import { clientVersion, serverMajor } from '../pg/server.js';
import type { PgTools } from '../pg/tools.js';
import type { PhysicalSource, SourceFacts } from './backup.js';
import { controlFileFacts, majorOfPgVersion } from './volume.js';

export interface BasebackupSourceOptions {
  /** psql, for the questions asked first. */
  tools: Pick<PgTools, 'psql'>;
  pgBasebackup: PgBasebackupTool;
  conn: ConnectionSpec;
  /** The database psql connects to for those questions. */
  database: string | undefined;
  /** `--checkpoint=fast`: start at once instead of after a spread checkpoint. */
  fastCheckpoint: boolean;
  env: NodeJS.ProcessEnv;
}

/** Longest stderr kept to find pg_basebackup's WAL points and warnings in. */
const STDERR_MAX = 1024 * 1024;

export function basebackupSource(o: BasebackupSourceOptions): PhysicalSource {
  let info: ClusterInfo | undefined;
  let toolVersion = '';
  let stderr = '';
  return {
    kind: 'basebackup',
    hint: 'check the pg_basebackup command (--pg-basebackup-command): a wrapper must pass its output through unchanged and whole',
    walk: { watch: ['backup_label', 'global/pg_control', 'PG_VERSION', 'backup_manifest'], watchPrefix: ['pg_wal/'], keep: { PG_VERSION: 16, 'global/pg_control': 8 }, hash: ['backup_manifest'] },
    async prepare(signal) {
      const [cluster, client] = await Promise.all([
        probeCluster(o.tools, o.conn, o.database, { env: o.env, signal }),
        clientVersion(o.pgBasebackup.argv, 'pg_basebackup', { env: libpqEnv(o.conn, o.env), signal }),
      ]);
      checkBasebackupPossible(cluster);
      checkBasebackupVersion(client.major, client.text, cluster);
      info = cluster;
      toolVersion = client.text;
      return { expectedBytes: cluster.sizeBytes, warnings: [] };
    },
    spawn(sup) {
      return sup.spawn({
        argv: pgBasebackupArgv(o.pgBasebackup, o.conn, { fastCheckpoint: o.fastCheckpoint }),
        env: libpqEnv(o.conn, o.env),
        what: 'pg_basebackup',
        explain: explainBasebackupFailure,
        onStderr: (b) => {
          if (stderr.length < STDERR_MAX) stderr += b.toString('utf8');
        },
      });
    },
    finish(walk): { problem: string } | SourceFacts {
      const server = info!;
      for (const name of ['backup_label', 'global/pg_control', 'PG_VERSION']) {
        if (!walk.seen.has(name)) return { problem: `the tar holds no ${name}: it is not a base backup` };
      }
      const major = majorOfPgVersion(walk.kept.get('PG_VERSION'));
      const serverMajorVersion = Math.floor(serverMajor(server.serverVersionNum));
      if (major !== serverMajorVersion) return { problem: `the tar's PG_VERSION says ${major ?? '?'}, the server is PostgreSQL ${server.serverVersion}` };
      const backupManifestSha256 = walk.hashes.get('backup_manifest');
      if (serverMajorVersion >= 13 && backupManifestSha256 === undefined) return { problem: 'the tar holds no backup_manifest (PostgreSQL 13 and later write one into it)' };
      const points = parseBasebackupWal(stderr);
      if (!points) return { problem: 'pg_basebackup did not report its write-ahead log start and end points (-v)' };
      const startSegment = segmentOfLsn(points.startLsn, points.timeline, server.walSegmentBytes);
      const stopSegment = segmentOfLsn(lastByteBefore(points.stopLsn), points.timeline, server.walSegmentBytes);
      for (let seg = startSegment; ; seg = nextSegmentName(seg, server.walSegmentBytes)) {
        if (!walk.seen.has(`pg_wal/${seg}`)) return { problem: `the tar lacks the WAL segment pg_wal/${seg} the backup needs (${points.startLsn} to ${points.stopLsn})` };
        if (seg === stopSegment) break;
      }
      const control = controlFileFacts(walk.kept.get('global/pg_control'));
      if (control && !control.includes(server.systemIdentifier)) return { problem: `the tar's pg_control names another system (${control.join(' / ')}) than the server (${server.systemIdentifier})` };
      const warnings = stderr
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => /\bwarning:/i.test(l));
      return {
        postgres: {
          majorVersion: serverMajorVersion,
          serverVersion: server.serverVersion,
          serverVersionNum: server.serverVersionNum,
          systemIdentifier: server.systemIdentifier,
          role: server.role,
          command: [...o.pgBasebackup.argv],
          toolVersion,
        },
        wal: { timeline: points.timeline, startLsn: points.startLsn, stopLsn: points.stopLsn, startSegment, stopSegment },
        ...(backupManifestSha256 ? { backupManifestSha256 } : {}),
        warnings,
      };
    },
  };
}

/**
 * The LSN of the last byte of WAL before `lsn`: the backup's end point is where its last record
 * ends, so when it falls on a segment boundary the last segment it needs is the one before
 * (PostgreSQL's XLByteToPrevSeg).
 */
function lastByteBefore(lsn: string): string {
  const n = parseLsn(lsn) - 1n;
  return `${(n >> 32n).toString(16).toUpperCase()}/${(n & 0xffffffffn).toString(16).toUpperCase()}`;
}
