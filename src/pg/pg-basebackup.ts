/**
 * pg_basebackup: its argument list, what it reports on stderr, and what coffer asks the server
 * before it starts (a physical backup, issue 14). Like every PostgreSQL program coffer runs, it
 * never prompts (`--no-password`) and takes the connection as a conninfo string whose password,
 * if any, travels in the environment.
 */
import { DatabaseError, UsageError, type CofferError } from '../errors.js';
import type { ChildFailure } from '../run/supervisor.js';
import { quoteIdent } from './admin.js';
import { conninfoFor, type ConnectionSpec } from './connection.js';
import { psqlQuery } from './psql.js';
import { serverMajor } from './server.js';
import { pgProgram, splitCommand, type PgTools } from './tools.js';

/** The pg_basebackup command: a binary, or a wrapper + binary (`--pg-basebackup-command`). */
export interface PgBasebackupTool {
  argv: string[];
  /** Runs through a command wrapper: its output is not trusted to be whole (it is walked anyway). */
  wrapped: boolean;
}

/** `--pg-basebackup-command` when given (split like a shell would, never run through one), else `pg_basebackup` from `--pg-bin` or PATH. */
export function resolvePgBasebackup(opts: { binDir?: string; command?: string }): PgBasebackupTool {
  if (opts.command) return { argv: splitCommand(opts.command), wrapped: true };
  return { argv: pgProgram(opts.binDir, 'pg_basebackup'), wrapped: false };
}

/**
 * `pg_basebackup -D - -Ft -X fetch -v`: one tar stream on stdout holding the data directory, the
 * WAL the backup needs (`pg_wal/`, fetched at its end: restorable without any archive) and, from
 * PostgreSQL 13 on, the `backup_manifest`. `-v` prints the WAL start and end points. One tar
 * stream cannot carry other tablespaces (the caller refuses them first).
 */
export function pgBasebackupArgv(tool: PgBasebackupTool, conn: ConnectionSpec, o: { fastCheckpoint: boolean }): string[] {
  const args = [...tool.argv, '-D', '-', '-Ft', '-X', 'fetch', '-v', '--no-password'];
  if (o.fastCheckpoint) args.push('--checkpoint=fast');
  const conninfo = conninfoFor(conn);
  if (conninfo !== '') args.push('-d', conninfo);
  return args;
}

/** The WAL span pg_basebackup -v reported. */
export interface BasebackupWal {
  timeline: number;
  startLsn: string;
  stopLsn: string;
}

/**
 * Reads `write-ahead log start point: 0/2000028 on timeline 1` and `write-ahead log end point:
 * 0/2000100` from pg_basebackup -v's stderr; `undefined` when either is missing.
 */
export function parseBasebackupWal(stderr: string): BasebackupWal | undefined {
  const start = /write-ahead log start point: ([0-9A-Fa-f]+\/[0-9A-Fa-f]+) on timeline (\d+)/.exec(stderr);
  const stop = /write-ahead log end point: ([0-9A-Fa-f]+\/[0-9A-Fa-f]+)/.exec(stderr);
  if (!start || !stop) return undefined;
  return { startLsn: start[1]!.toUpperCase(), timeline: Number(start[2]), stopLsn: stop[1]!.toUpperCase() };
}

/** What the server tells before a physical backup. */
export interface ClusterInfo {
  serverVersion: string;
  serverVersionNum: number;
  /** pg_control_system().system_identifier, decimal. */
  systemIdentifier: string;
  isSuperuser: boolean;
  hasReplication: boolean;
  /** The connecting role's name. */
  role: string;
  /** Tablespaces other than pg_default and pg_global, with their locations. */
  tablespaces: Array<{ name: string; location: string }>;
  /** wal_segment_size in bytes. */
  walSegmentBytes: number;
  /** Sum of the sizes of the databases the role may connect to (for the part size). */
  sizeBytes: number;
}

const CLUSTER_INFO_SQL = `SELECT json_build_object(
  'num', current_setting('server_version_num'),
  'ver', current_setting('server_version'),
  'sysid', (SELECT system_identifier::text FROM pg_control_system()),
  'super', (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
  'repl', (SELECT rolreplication FROM pg_roles WHERE rolname = current_user),
  'role', current_user,
  'spc', (SELECT coalesce(json_agg(json_build_object('name', spcname, 'location', pg_tablespace_location(oid)) ORDER BY spcname), '[]'::json) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')),
  'walseg', (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'),
  'size', (SELECT coalesce(sum(pg_database_size(oid)) FILTER (WHERE has_database_privilege(oid, 'CONNECT')), 0) FROM pg_database)
)::text;`;

/** One round trip: version, system identifier, the role's rights, extra tablespaces, size. */
export async function probeCluster(tools: Pick<PgTools, 'psql'>, conn: ConnectionSpec, database: string | undefined, opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal }): Promise<ClusterInfo> {
  const out = (await psqlQuery(tools, conn, database, CLUSTER_INFO_SQL, { ...opts, what: 'connect to the server' })).trim();
  let v: { num: string; ver: string; sysid: string; super: boolean; repl: boolean; role: string; spc: Array<{ name: string; location: string }>; walseg: string | null; size: number | string };
  try {
    v = JSON.parse(out) as typeof v;
  } catch {
    throw new DatabaseError(`could not read the server's answer (got ${JSON.stringify(out.slice(0, 80))})`);
  }
  return {
    serverVersionNum: Number(v.num),
    serverVersion: v.ver,
    systemIdentifier: String(v.sysid),
    isSuperuser: v.super === true,
    hasReplication: v.repl === true,
    role: v.role,
    tablespaces: v.spc,
    walSegmentBytes: Number(v.walseg) || 16 * 1024 * 1024,
    sizeBytes: Number(v.size) || 0,
  };
}

/**
 * Refusals before pg_basebackup starts, each with what to do: a role that may not stream a base
 * backup, and tablespaces a single tar stream cannot carry.
 */
export function checkBasebackupPossible(info: ClusterInfo): void {
  if (!info.isSuperuser && !info.hasReplication) {
    throw new DatabaseError(`role ${JSON.stringify(info.role)} has neither REPLICATION nor SUPERUSER: it cannot take a base backup`, {
      hint: `run ALTER ROLE ${quoteIdent(info.role)} REPLICATION; as a superuser, and allow it in pg_hba.conf with a "replication" line (e.g. host replication ${info.role} 10.0.0.5/32 scram-sha-256)`,
    });
  }
  if (info.tablespaces.length > 0) {
    const names = info.tablespaces.map((t) => `${t.name} (${t.location})`).join(', ');
    throw new UsageError(`the cluster has tablespaces outside its data directory: ${names}; one tar stream cannot carry them`, {
      hint: 'archive the stopped cluster with --data-dir plus its tablespace directories, or move their objects to pg_default (ALTER TABLE … SET TABLESPACE pg_default) and drop the tablespaces',
    });
  }
}

/** pg_basebackup older than the server cannot back it up: say so first, naming both. */
export function checkBasebackupVersion(clientMajor: number, clientText: string, info: ClusterInfo): void {
  const sMajor = Math.floor(serverMajor(info.serverVersionNum));
  if (clientMajor < sMajor) {
    throw new DatabaseError(`pg_basebackup ${clientMajor} is older than the server (PostgreSQL ${info.serverVersion}) [${clientText}]`, {
      hint: `install postgresql-client-${sMajor} and use --pg-bin /usr/lib/postgresql/${sMajor}/bin`,
    });
  }
}

/** pg_basebackup's failures with the fix for the usual ones (the pg_hba.conf replication line). */
export function explainBasebackupFailure(f: ChildFailure): CofferError {
  const how = f.signal ? `was killed by ${f.signal}` : `exited with code ${f.code}`;
  const line = f.stderr.firstError()?.line ?? f.stderr.lastLines();
  let hint: string | undefined;
  if (/no pg_hba\.conf entry for replication connection/i.test(line)) hint = 'add a "replication" line for this role and host to pg_hba.conf (e.g. host replication backup 10.0.0.5/32 scram-sha-256) and reload the server';
  else if (/must be superuser or replication role/i.test(line)) hint = 'ALTER ROLE … REPLICATION; as a superuser';
  else if (/number of requested standby connections exceeds max_wal_senders|too many clients|remaining connection slots/i.test(line)) hint = 'raise max_wal_senders (and restart), or retry when fewer replication connections are open';
  else if (/password authentication failed|no password supplied/i.test(line)) hint = 'check PGPASSWORD / PGPASSFILE or the password in --dbname';
  return new DatabaseError(`${f.what} ${how}${line ? `: ${line}` : ''}`, hint ? { hint } : undefined);
}
