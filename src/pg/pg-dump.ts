/**
 * The argument lists of pg_dump and pg_dumpall (the backup spawns them through its supervisor).
 * Like every PostgreSQL program coffer runs, they never prompt (`--no-password`) and take the
 * connection as a conninfo string whose password, if any, travels in the environment.
 */
import { conninfoFor, type ConnectionSpec } from './connection.js';
import type { PgTools } from './tools.js';

/** custom: `pg_dump -Fc`; schema-only and data-only: plain SQL. */
export type DumpKind = 'custom' | 'schema-only' | 'data-only';

export interface PgDumpOptions {
  kind: DumpKind;
  /** pg_dump's own gzip level for a custom archive (0: uncompressed, compressed downstream). */
  gzipLevel: number;
  disableTriggers?: boolean;
  excludeTableData: readonly string[];
}

export function pgDumpArgv(tools: PgTools, conn: ConnectionSpec, database: string, o: PgDumpOptions): string[] {
  const args = [...tools.pgDump];
  if (o.kind === 'custom') args.push('--format=custom', `--compress=${o.gzipLevel}`);
  else args.push('--format=plain', o.kind === 'schema-only' ? '--schema-only' : '--data-only');
  if (o.disableTriggers) args.push('--disable-triggers');
  for (const p of o.excludeTableData) args.push(`--exclude-table-data=${p}`);
  args.push('--no-password', '-d', conninfoFor(conn, database));
  return args;
}

/** Roles and tablespaces; role passwords only when the connecting role may read them (a superuser). */
export function pgDumpallGlobalsArgv(tools: PgTools, conn: ConnectionSpec, database: string, superuser: boolean): string[] {
  const args = [...tools.pgDumpall, '--globals-only', '--no-password'];
  if (!superuser) args.push('--no-role-passwords');
  args.push('-d', conninfoFor(conn, database));
  return args;
}
