/**
 * Every pg_restore coffer runs, its flags, what its failures mean, and how its table of
 * contents reads:
 * - {@link spawnTocList}: `pg_restore --list` of an archive on stdin (no connection);
 * - {@link spawnPgRestore}: the archive streamed on stdin into a database;
 * - {@link spawnPgRestoreJobs}: `pg_restore --jobs=N` from a spooled archive file.
 */
import { DatabaseError } from '../errors.js';
import { toolEnv, type Child, type Supervisor } from '../run/supervisor.js';
import { conninfoFor, libpqEnv, type PgTarget } from './connection.js';
import type { PgTools } from './tools.js';

/** What the restore leaves out of the archive. */
export interface RestoreFlags {
  noOwner: boolean;
  noPrivileges: boolean;
  /** A selective restore: only the entries of this pg_restore -L list (in archive order). */
  listFile?: string;
}

/** Stop at the first error, never prompt for a password, and leave out what was asked. */
export function restoreFlags(flags: RestoreFlags): string[] {
  return [
    '--exit-on-error',
    '--no-password',
    ...(flags.noOwner ? ['--no-owner'] : []),
    ...(flags.noPrivileges ? ['--no-privileges'] : []),
    ...(flags.listFile !== undefined ? [`--use-list=${flags.listFile}`] : []),
  ];
}

/**
 * `pg_restore --list` reading an archive the caller writes to its stdin; its stdout is the
 * table of contents (with `listFile`, only the entries of that -L list: what a selective restore
 * restores). It reads the archive only: no connection, no credentials.
 */
export function spawnTocList(sup: Supervisor, tools: Pick<PgTools, 'pgRestore'>, env: NodeJS.ProcessEnv, listFile?: string): Child {
  return sup.spawn({ argv: [...tools.pgRestore, '--list', ...(listFile !== undefined ? [`--use-list=${listFile}`] : [])], stdin: 'pipe', env: toolEnv(env), what: 'pg_restore --list' });
}

/** pg_restore into `target.database`, from the archive the caller writes to its stdin. */
export function spawnPgRestore(sup: Supervisor, tools: Pick<PgTools, 'pgRestore'>, target: PgTarget, flags: RestoreFlags): Child {
  return sup.spawn({
    argv: [...tools.pgRestore, ...restoreFlags(flags), '-d', conninfoFor(target.conn, target.database)],
    stdin: 'pipe',
    stdout: 'ignore',
    env: libpqEnv(target.conn, target.env),
    what: 'pg_restore',
  });
}

/** `pg_restore --jobs=N` into `target.database` from an archive file (it needs to seek). */
export function spawnPgRestoreJobs(sup: Supervisor, tools: Pick<PgTools, 'pgRestore'>, target: PgTarget, flags: RestoreFlags, jobs: number, file: string): Child {
  return sup.spawn({
    argv: [...tools.pgRestore, ...restoreFlags(flags), `--jobs=${jobs}`, '-d', conninfoFor(target.conn, target.database), file],
    stdout: 'ignore',
    env: libpqEnv(target.conn, target.env),
    what: `pg_restore --jobs=${jobs}`,
  });
}

/**
 * Adds the usual fixes to pg_restore and psql failures. A missing role: restore the roles, create
 * it, or pass the flags that skip ownership and grants (only those not given already; with both
 * given, the reference is one they do not remove, e.g. a policy or a user mapping).
 */
export function explainRestoreError(err: unknown, flags: RestoreFlags): unknown {
  if (!(err instanceof DatabaseError)) return err;
  const m = /role "([^"]+)" does not exist/.exec(err.message);
  if (m) {
    const missing = [...(flags.noOwner ? [] : ['--no-owner']), ...(flags.noPrivileges ? [] : ['--no-privileges'])];
    const role = JSON.stringify(m[1]);
    const roles = 'restore the roles first (--with-globals, from a backup taken with --globals) or create the role';
    return new DatabaseError(
      missing.length > 0
        ? `the backup refers to role ${role}, which does not exist on this server`
        : `the backup refers to role ${role}, which does not exist on this server, in a statement that --no-owner and --no-privileges do not remove (such as a policy or a user mapping)`,
      { cause: err, detail: err.detail, hint: missing.length > 0 ? `${roles}, or pass ${missing.join(' ')}` : roles },
    );
  }
  if (err.hint === undefined && /^(?:pg_restore|psql \(restore\)) .*\b(?:ERROR|FATAL):/.test(err.message)) {
    const statement = err.detail?.startsWith('Command was: ') ? ' (the failed statement is logged as detail)' : '';
    return new DatabaseError(err.message, { cause: err, detail: err.detail, hint: `nothing was restored; fix the cause on this server${statement} and restore again` });
  }
  return err;
}

/** The entries of a `pg_restore --list` output (its comment lines left out). */
export function tocEntryCount(toc: string): number {
  return toc.split('\n').filter((l) => /^\d+;/.test(l)).length;
}

/**
 * TABLE entries of a `pg_restore --list` output, as "schema name owner" strings (other entry
 * types that start with TABLE — TABLE DATA, TABLE ATTACH — are not tables).
 */
export function tocTables(toc: string): string[] {
  const out: string[] = [];
  for (const line of toc.split('\n')) {
    const m = /^\d+; \d+ \d+ TABLE (?!DATA |ATTACH )(.+)$/.exec(line);
    if (m) out.push(m[1]!);
  }
  return out;
}
