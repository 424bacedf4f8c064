import { randomBytes } from 'node:crypto';
import { DatabaseError } from '../errors.js';
import type { ConnectionSpec } from './connection.js';
import { PsqlSession, psqlQuery, type PreparedPsql } from './psql.js';
import type { PgTools } from './tools.js';

/** Quotes an SQL identifier: always, so case, spaces, quotes and unicode survive. */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Quotes an SQL string literal (standard_conforming_strings on, as since PostgreSQL 9.1). */
export function quoteLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/**
 * A PL/pgSQL DO block (its body quoted as a string literal: a name in it cannot end a dollar
 * quote), run by psql only where the database has PL/pgSQL; where it was dropped, `otherwise`
 * (plain SQL that prints nothing) runs instead. PL/pgSQL is in every database created from an
 * untouched template1, but an administrator may drop it from the maintenance database, and a
 * restore must not fail at its rename for that.
 */
function doBlock(body: string, otherwise = ''): string {
  return [
    `SELECT EXISTS (SELECT 1 FROM pg_language WHERE lanname = 'plpgsql') AS coffer_plpgsql \\gset`,
    '\\if :coffer_plpgsql',
    `DO ${quoteLiteral(body)};`,
    ...(otherwise ? ['\\else', otherwise] : []),
    '\\endif',
  ].join('\n');
}

/** Cuts a name to at most `maxBytes` UTF-8 bytes without splitting a character. */
export function truncateUtf8(s: string, maxBytes: number): string {
  let out = '';
  let bytes = 0;
  for (const ch of s) {
    const n = Buffer.byteLength(ch, 'utf8');
    if (bytes + n > maxBytes) break;
    out += ch;
    bytes += n;
  }
  return out;
}

/** A database name made of `base` plus `suffix`, within PostgreSQL's 63-byte limit. */
export function derivedName(base: string, suffix: string): string {
  return truncateUtf8(base, 63 - Buffer.byteLength(suffix, 'utf8')) + suffix;
}

export function scratchName(target: string): string {
  return derivedName(target, `__restoring_${randomBytes(4).toString('hex')}`);
}

/**
 * What {@link PgAdmin.swapIn}'s first statement uses, loaded ahead by a psql started for it
 * ({@link PreparedPsql.prime}) while the checks run: a session's first PL/pgSQL block loads the
 * language (~5 ms), its first read of pg_stat_activity plans the view (~5 ms). Prints nothing.
 */
export const SWAP_WARMUP = `${doBlock('BEGIN END')}\nSELECT count(*) AS n FROM pg_stat_activity \\gset coffer_warmup_\n`;

/** Administrative SQL runs in the maintenance database. */
export class PgAdmin {
  /** One psql kept connected to the maintenance database ({@link openSession}). */
  private session: PsqlSession | undefined;

  constructor(
    readonly tools: PgTools,
    readonly conn: ConnectionSpec,
    readonly maintenanceDb: string,
    readonly env: NodeJS.ProcessEnv,
  ) {}

  /**
   * From now on, the maintenance database's statements go through one psql kept connected
   * (a restore asks it several times: no process and no connection each time). Once a statement
   * failed (which ends that psql) or the session was closed, each statement has a psql of its own again.
   * Not through a `--psql-command` wrapper: one that outlives its psql (`tee log | psql`) would
   * hold a session whose statement failed open until its input ends, and the run would wait.
   */
  openSession(signal: AbortSignal): void {
    if (this.tools.psqlWrapped) return;
    this.session ??= PsqlSession.open(this.tools, { conn: this.conn, database: this.maintenanceDb, env: this.env }, { what: `connect to database ${JSON.stringify(this.maintenanceDb)}`, signal });
  }

  async closeSession(): Promise<void> {
    const s = this.session;
    this.session = undefined;
    await s?.close();
  }

  query(sql: string, what: string, database = this.maintenanceDb, signal?: AbortSignal, opts: { finishOnStop?: boolean } = {}): Promise<string> {
    const running = database === this.maintenanceDb && this.session && !this.session.ended && !signal?.aborted ? this.session.query(sql, what, opts) : psqlQuery(this.tools, this.conn, database, sql, { env: this.env, what, signal });
    return running.catch((err: unknown) => {
      throw database === this.maintenanceDb ? this.explainMissing(err) : err;
    });
  }

  /** The maintenance database does not exist: the fix is --maintenance-db, not --db (psql's usual hint). */
  private explainMissing(err: unknown): unknown {
    if (!(err instanceof DatabaseError) || !err.message.includes(`database "${this.maintenanceDb}" does not exist`)) return err;
    return new DatabaseError(err.message, { cause: err, detail: err.detail, hint: `coffer creates, renames and drops databases from the maintenance database ${JSON.stringify(this.maintenanceDb)}: pass --maintenance-db with one that exists (postgres, or template1)` });
  }

  async exists(db: string): Promise<boolean> {
    const out = await this.query(`SELECT count(*) FROM pg_database WHERE datname = ${quoteLiteral(db)};`, 'look up database');
    return out.trim() === '1';
  }

  /** Creates `db` from template0, or with the given CREATE DATABASE statement. */
  async create(db: string, statement?: string): Promise<void> {
    // Not stopped half-way by a stop signal (in a session or a psql of its own): a CREATE DATABASE
    // whose psql was killed still commits on the server, perhaps after the run dropped its scratch.
    await this.query(statement ?? `CREATE DATABASE ${quoteIdent(db)} TEMPLATE template0;`, `create database ${JSON.stringify(db)}`, this.maintenanceDb, undefined, { finishOnStop: true });
  }

  /** The names of the server's roles (hex-encoded on the way: a name may hold a newline). */
  roles(): Promise<Set<string>> {
    return this.roleNames("SELECT encode(convert_to(rolname, 'UTF8'), 'hex') FROM pg_roles;", 'list roles');
  }

  /**
   * The roles whose per-database settings (`ALTER ROLE r IN DATABASE d SET …`) this user may
   * change: any, as a superuser; else its own, and with CREATEROLE those of roles that are not
   * superusers (from PostgreSQL 16 only those it has ADMIN OPTION on).
   */
  settableRoles(): Promise<Set<string>> {
    return this.roleNames(
      `SELECT encode(convert_to(r.rolname, 'UTF8'), 'hex') FROM pg_roles r, pg_roles me WHERE me.rolname = current_user
        AND (me.rolsuper OR r.rolname = current_user OR (me.rolcreaterole AND NOT r.rolsuper AND (current_setting('server_version_num')::int < 160000 OR pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION'))));`,
      'list the roles whose settings this user may change',
    );
  }

  /** Role names a query returns hex-encoded as UTF-8, one per line. */
  private async roleNames(sql: string, what: string): Promise<Set<string>> {
    const out = await this.query(sql, what);
    return new Set(out.split('\n').filter(Boolean).map((h) => Buffer.from(h.trim(), 'hex').toString('utf8')));
  }

  /** DROP … WITH (FORCE): also ends sessions still connected (PostgreSQL 13+). */
  async drop(db: string): Promise<void> {
    await this.query(`DROP DATABASE IF EXISTS ${quoteIdent(db)} WITH (FORCE);`, `drop database ${JSON.stringify(db)}`);
  }

  /**
   * Puts `scratch` in place of `target` in one transaction. With `asideName`, an existing
   * target is renamed aside first (its sessions are ended: a rename needs it idle).
   */
  async swapIn(scratch: string, target: string, asideName?: string, prepared?: PreparedPsql): Promise<void> {
    // The checks' psql has just disconnected from the scratch database, but its server process
    // may not have exited yet: RENAME would then sleep 100 ms before it looks again (PostgreSQL's
    // CountOtherDBBackends). Waiting for it here, 5 ms at a time, saves that sleep. At most 2 s,
    // and a cancellation (statement_timeout) only ends the wait: RENAME then waits, and fails, as
    // it would have. An autovacuum worker (likely after a load of many tables) is ended here too,
    // where the user may end it (a superuser): RENAME would end it itself, then sleep those 100 ms.
    // Where the user may not, RENAME does as before. Sessions this user may not see (another
    // user's: pg_stat_activity hides their backend_type) are not waited for either.
    const onScratch = `FROM pg_stat_activity WHERE datname = ${quoteLiteral(scratch)} AND pid <> pg_backend_pid()`;
    const waitForScratch = doBlock(`DECLARE may_end boolean := true;
    BEGIN
      FOR i IN 1..400 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN NOT EXISTS (SELECT 1 ${onScratch} AND backend_type IS NOT NULL AND (may_end OR backend_type <> 'autovacuum worker'));
        IF may_end THEN
          BEGIN
            PERFORM pg_terminate_backend(pid) ${onScratch} AND backend_type = 'autovacuum worker';
          EXCEPTION WHEN insufficient_privilege THEN may_end := false;
          END;
        END IF;
        PERFORM pg_sleep(0.005);
      END LOOP;
    EXCEPTION WHEN query_canceled THEN NULL;
    END`);
    if (asideName) {
      // The wait first: the target's sessions are ended right before it is renamed aside.
      const t = quoteLiteral(target);
      const others = `SELECT 1 FROM pg_stat_activity WHERE datname = ${t} AND pid <> pg_backend_pid()`;
      const endSessions = doBlock(`BEGIN
        PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ${t} AND pid <> pg_backend_pid();
        FOR i IN 1..100 LOOP
          PERFORM pg_stat_clear_snapshot();
          EXIT WHEN NOT EXISTS (${others});
          PERFORM pg_sleep(0.1);
        END LOOP;
      END`, `SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE datname = ${t} AND pid <> pg_backend_pid() \\gset coffer_ended_`);
      await this.query(`${waitForScratch}\n${endSessions}`, `end the sessions of ${JSON.stringify(target)}`);
    }
    // Synchronous whatever the server's default: the restore into the scratch database committed
    // asynchronously ({@link scratchLoadTarget}), and this commit's WAL flush makes all of it
    // durable before the restore is reported done.
    const lines = [...(asideName ? [] : [waitForScratch]), 'SET synchronous_commit = on;', 'BEGIN;'];
    if (asideName) lines.push(`ALTER DATABASE ${quoteIdent(target)} RENAME TO ${quoteIdent(asideName)};`);
    lines.push(`ALTER DATABASE ${quoteIdent(scratch)} RENAME TO ${quoteIdent(target)};`, 'COMMIT;');
    const what = `rename ${JSON.stringify(scratch)} to ${JSON.stringify(target)}`;
    await (prepared ? prepared.run(lines.join('\n'), what) : this.query(lines.join('\n'), what));
  }
}
