/**
 * Every psql coffer runs, and its flags. Always: no psqlrc (`-X`), quiet (`-q`), never a
 * password prompt (`--no-password`: the password travels in PGPASSWORD or nowhere), the
 * connection as a conninfo string (`-d`), and the SQL on stdin (`-f -`).
 *
 * - {@link psqlQuery}: one query, its unaligned tuples-only output (`-A -t`), stopping at the
 *   first error (`-v ON_ERROR_STOP=1`);
 * - {@link spawnPsqlScript}: a long SQL script written to its stdin by the caller (a restore,
 *   a load, the globals), in the caller's run;
 * - {@link PsqlSession}: one connection kept open, asked one statement at a time (the advisory
 *   lock of a backup).
 */
import { randomBytes } from 'node:crypto';
import { DatabaseError } from '../errors.js';
import { followAbort, interruptedBy, untilAborted } from '../run/abort.js';
import { Supervisor, defaultChildError, type Child, type SpawnSpec } from '../run/supervisor.js';
import { conninfoFor, explainLibpqError, internalConnection, libpqEnv, type ConnectionSpec, type PgTarget } from './connection.js';
import { POPULATED_MATVIEWS_IN_ORDER } from './matviews.js';
import { runChild, type PgTools } from './tools.js';

/**
 * psql's argv. `rows`: output for a program to read (`-A -t`); `stopOnError`: the first failed
 * statement ends psql with exit 3 (`-v ON_ERROR_STOP=1`); `userSql`: the SQL is the user's or a
 * dump's, which runs as the database's own sessions do; else it is coffer's own, run on
 * {@link internalConnection} (search_path pg_catalog, no statement timeout).
 */
function psqlArgv(psql: string[], target: Pick<PgTarget, 'conn' | 'database' | 'env'>, opts: { rows: boolean; stopOnError: boolean; userSql?: boolean }): string[] {
  return [
    ...psql,
    '-X',
    '-q',
    ...(opts.rows ? ['-A', '-t'] : []),
    ...(opts.stopOnError ? ['-v', 'ON_ERROR_STOP=1'] : []),
    '--no-password',
    '-d',
    conninfoFor(opts.userSql ? target.conn : internalConnection(target.conn, target.env), target.database),
    '-f',
    '-',
  ];
}

/** Runs one query with psql and returns its unaligned, tuples-only output. */
export async function psqlQuery(
  tools: Pick<PgTools, 'psql'>,
  conn: ConnectionSpec,
  database: string | undefined,
  sql: string | Buffer,
  opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal; what?: string; explain?: SpawnSpec['explain']; userSql?: boolean },
): Promise<string> {
  const what = opts.what ?? 'psql';
  const argv = psqlArgv(tools.psql, { conn, database, env: opts.env }, { rows: true, stopOnError: true, userSql: opts.userSql });
  try {
    return await runChild(argv, { env: libpqEnv(conn, opts.env), signal: opts.signal, what, input: sql, explain: opts.explain });
  } catch (err) {
    // The caller's own explanation stands as it is.
    throw opts.explain ? err : explainLibpqError(what, err);
  }
}

/**
 * Starts psql in `sup`'s run to execute the SQL the caller writes to its stdin (stdout is
 * discarded). `continueOnError`: every statement runs even when some fail (no ON_ERROR_STOP;
 * the caller reads the errors from stderr).
 */
export function spawnPsqlScript(
  sup: Supervisor,
  tools: Pick<PgTools, 'psql'>,
  target: PgTarget,
  opts: { what: string; continueOnError?: boolean; explain?: SpawnSpec['explain'] },
): Child {
  return sup.spawn({
    argv: psqlArgv(tools.psql, target, { rows: false, stopOnError: !opts.continueOnError, userSql: true }),
    stdin: 'pipe',
    stdout: 'ignore',
    env: libpqEnv(target.conn, target.env),
    what: opts.what,
    explain: opts.explain,
  });
}

/** A psql session kept open while its stdin is: one connection, asked one statement at a time. */
export class PsqlSession {
  private out = '';
  private waiters: Array<() => void> = [];
  /** The end of the last {@link query} (they run one after the other). */
  private queue: Promise<unknown> = Promise.resolve();
  /** Statements in flight that a stop lets finish ({@link query}'s `finishOnStop`). */
  private finishing = 0;
  /** The run's stop, deferred while such a statement runs. */
  private stopReason: { reason: unknown } | undefined;
  private constructor(
    private readonly sup: Supervisor,
    private readonly child: Child,
    /** What the statement being run does, for its error message ({@link query}). */
    private readonly current: { what: string },
    /** Stops the session's psql (the run's stop signal, passed on by {@link stopped}). */
    private readonly kill: AbortController,
  ) {
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (s: string) => {
      this.out += s;
      this.wake();
    });
    child.done.then(
      () => this.wake(),
      () => this.wake(),
    );
  }

  /** psql has exited or is being stopped (an error ended it, the session was closed, the run stopped): it takes no more statements. */
  get ended(): boolean {
    return this.child.exited || this.sup.signal.aborted;
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Starts the session; it owns its psql (a supervisor of one child, torn down by {@link close}). */
  static open(tools: Pick<PgTools, 'psql'>, target: PgTarget, opts: { what: string; signal: AbortSignal }): PsqlSession {
    const kill = new AbortController();
    const sup = new Supervisor(kill.signal);
    const current = { what: opts.what };
    // psql stops at the first error (ON_ERROR_STOP) or a failed connection. Its input ends then:
    // a --psql-command wrapper such as `filter | psql` ends only once the filter's input does.
    let errText = '';
    const child: Child = sup.spawn({
      argv: psqlArgv(tools.psql, target, { rows: true, stopOnError: true }),
      stdin: 'pipe',
      env: libpqEnv(target.conn, target.env),
      what: opts.what,
      // A failed statement ends psql (ON_ERROR_STOP): the error names what that statement did.
      explain: (f) => defaultChildError({ ...f, what: current.what }),
      onStderr: (b) => {
        errText = (errText + b.toString('latin1')).slice(-4096);
        if (PSQL_STOPPED.test(errText) && !child.stdin!.writableEnded) child.stdin!.end();
      },
    });
    // A session waits idle between statements (the backup's advisory lock, for the whole dump):
    // the server's idle timeouts, where it has them, must not end it (and its lock with it).
    child.stdin!.write(`${SESSION_TIMEOUTS}\n`);
    const session = new PsqlSession(sup, child, current, kill);
    const unfollow = followAbort(opts.signal, () => session.stopped(opts.signal.reason));
    child.done.then(unfollow, unfollow);
    return session;
  }

  /**
   * Runs SQL (statements ending with `;`) and returns its unaligned, tuples-only output, as
   * {@link psqlQuery} does in a psql of its own; its failure ends the session. Calls run one
   * after the other.
   */
  query(sql: string, what: string, opts: { finishOnStop?: boolean } = {}): Promise<string> {
    const run = async (): Promise<string> => {
      if (this.stopReason) throw interruptedBy(this.kill.signal.aborted ? this.kill.signal : AbortSignal.abort(this.stopReason.reason));
      this.current.what = what;
      if (!opts.finishOnStop) return this.ask(sql, `coffer:done:${randomBytes(8).toString('hex')}`);
      this.finishing++;
      try {
        return await this.ask(sql, `coffer:done:${randomBytes(8).toString('hex')}`);
      } finally {
        this.finishing--;
        this.applyStop();
      }
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /** Sends one statement that prints one line; returns the line. */
  async ask(sql: string, marker: string): Promise<string> {
    const start = this.out.length;
    this.child.stdin!.write(`${sql}\n\\echo ${marker}\n`);
    for (;;) {
      const seen = this.out.slice(start);
      const at = seen.indexOf(`${marker}\n`);
      if (at >= 0) return seen.slice(0, at).trim();
      if (this.child.exited) {
        await this.child.done.catch((e: unknown) => {
          throw explainLibpqError(this.current.what, e);
        });
        throw new DatabaseError(`${this.current.what}: psql exited unexpectedly`);
      }
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  /**
   * The run was stopped: psql is stopped now, or, while a statement that must finish runs (a
   * CREATE DATABASE: killed, its server session would still commit it, perhaps after the
   * run's DROP of what it created), as soon as that statement has, or {@link STOP_GRACE_MS} later.
   */
  private stopped(reason: unknown): void {
    this.stopReason ??= { reason };
    this.applyStop();
    if (this.kill.signal.aborted) return;
    // A statement that does not come back (the server stopped answering) does not hold the stop.
    const t = setTimeout(() => {
      if (!this.kill.signal.aborted) this.kill.abort(reason);
    }, STOP_GRACE_MS);
    t.unref();
    this.kill.signal.addEventListener('abort', () => clearTimeout(t), { once: true });
  }

  private applyStop(): void {
    if (this.finishing === 0 && this.stopReason && !this.kill.signal.aborted) this.kill.abort(this.stopReason.reason);
  }

  /** Ends the session (end of input, then the teardown after at most 10 s). */
  async close(): Promise<void> {
    if (!this.child.stdin!.writableEnded) this.child.stdin!.end();
    let t: NodeJS.Timeout | undefined;
    await Promise.race([this.child.done.catch(() => undefined), new Promise((r) => (t = setTimeout(r, 10_000)))]);
    clearTimeout(t);
    await this.sup.teardown();
  }
}

/**
 * Turns off, for the session, the timeouts that end idle sessions and those that cut its
 * statements short (a database may set them: `ALTER DATABASE … SET idle_session_timeout`), on
 * servers that have them (idle_session_timeout since PostgreSQL 14). Prints nothing.
 */
const SESSION_TIMEOUTS = "SELECT count(set_config(name, '0', false)) AS n FROM pg_settings WHERE name IN ('idle_session_timeout', 'idle_in_transaction_session_timeout', 'lock_timeout') \\gset coffer_timeouts_";

/** How long a stop waits for a statement that must finish ({@link PsqlSession.query}'s `finishOnStop`). */
const STOP_GRACE_MS = 10_000;

/**
 * psql's own line for an error that stops it: `psql:<stdin>:3: ERROR:  …`, a FATAL, or
 * `psql: error: connection … failed`. English (a server whose lc_messages translates the
 * severity is not recognised: then only psql's exit ends the session, as without a wrapper).
 */
const PSQL_STOPPED = /(^|\n)psql:(?:<stdin>:\d+:)? (?:ERROR|FATAL|PANIC|error):/;

/** What libpq and psql say when the connection was lost (an idle session ended by the server, a network drop). */
const CONNECTION_LOST = /server closed the connection|connection to server was lost|terminating connection|SSL SYSCALL error|could not receive data from server|no connection to the server/i;

/**
 * A psql started before its SQL is known: it connects now, while something else runs, and
 * runs the SQL given to {@link run} later, as {@link psqlQuery} would (its output; stopping at
 * the first error). For SQL that may run twice: when the connection was lost meanwhile (the
 * server ends idle sessions, a network drops them), {@link run} runs it once more in a psql of
 * its own. {@link cancel} ends it unused.
 */
export class PreparedPsql {
  private readonly current: { what: string };
  private readonly out: Buffer[] = [];
  private readonly drained: Promise<unknown>;
  private used = false;

  private constructor(
    private readonly sup: Supervisor,
    private readonly child: Child,
    private readonly query: (sql: string | Buffer, what: string) => Promise<string>,
    current: { what: string },
    /** The run was stopped (its signal): nothing runs again. */
    private readonly stopped: () => boolean,
  ) {
    this.current = current;
    child.stdout!.on('data', (b: Buffer) => this.out.push(b));
    this.drained = new Promise((r) => child.stdout!.once('close', r));
  }

  static start(tools: Pick<PgTools, 'psql'>, conn: ConnectionSpec, database: string, opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal; what: string }): PreparedPsql {
    const sup = new Supervisor(opts.signal);
    const current = { what: opts.what };
    const child = sup.spawn({
      argv: psqlArgv(tools.psql, { conn, database, env: opts.env }, { rows: true, stopOnError: true }),
      stdin: 'pipe',
      env: libpqEnv(conn, opts.env),
      what: opts.what,
      explain: (f) => defaultChildError({ ...f, what: current.what }),
    });
    const again = (sql: string | Buffer, what: string): Promise<string> => psqlQuery(tools, conn, database, sql, { env: opts.env, signal: opts.signal, what });
    return new PreparedPsql(sup, child, again, current, () => opts.signal?.aborted === true);
  }

  /**
   * Sends statements ahead of {@link run}, whose output nothing reads: they must print nothing
   * (`\gset`). Their failure stops psql (ON_ERROR_STOP), which {@link run} then reports.
   */
  prime(sql: string): void {
    if (!this.used) this.child.stdin!.write(sql);
  }

  async run(sql: string | Buffer, what: string): Promise<string> {
    if (this.used) throw new Error(`internal: ${what}: a prepared psql runs once`);
    this.used = true;
    this.current.what = what;
    try {
      this.child.stdin!.end(sql);
      await Promise.all([this.child.done, this.drained]);
      return Buffer.concat(this.out).toString('utf8');
    } catch (err) {
      const lost = CONNECTION_LOST.test((err as Error).message) && !this.stopped();
      if (lost) return this.query(sql, what);
      throw explainLibpqError(what, err);
    } finally {
      await this.sup.teardown();
    }
  }

  /** Ends it unused (or after {@link run}: nothing to do). */
  async cancel(): Promise<void> {
    if (!this.used) {
      this.used = true;
      this.child.stdin!.end();
    }
    await this.sup.teardown();
  }
}

/** What {@link runSqlFile}'s closing script prints (`\echo`), as lines of psql's stdout. */
const SQL_FILE = {
  /** The file ran, in coffer's transaction, without an error. */
  checked: 'coffer:sql-file:checked',
  /** Before each refreshed materialized view (its name follows). */
  refresh: 'coffer:sql-file:refresh:',
  /** The refreshes are done; COMMIT follows. */
  refreshed: 'coffer:sql-file:refreshed',
  /** COMMIT succeeded. */
  done: 'coffer:sql-file:done',
  /** coffer's transaction was not the one open after the file. */
  left: 'coffer:sql-file:left-transaction',
  /** A statement of the file failed (psql's LAST_ERROR_SQLSTATE), even if the file recovered; its SQLSTATE and message follow. */
  error: 'coffer:sql-file:error',
} as const;

/** The transaction-local setting that marks coffer's transaction: its txid. */
const SQL_FILE_XACT = 'coffer.sql_file_xact';

/**
 * What psql reads from stdin after the user's file, in the same session: undo what the file
 * may have set (output redirected, ON_ERROR_STOP off, AUTOCOMMIT off, ...), check in the same
 * transaction that it is still coffer's (the transaction-local mark is there and names the
 * current txid: a COMMIT, ROLLBACK, END, ABORT or `\connect` in the file lost it) and that no
 * statement of the file failed (LAST_ERROR_SQLSTATE, which an error caught by a SAVEPOINT or
 * ON_ERROR_ROLLBACK sets too; a transaction left aborted fails the check query itself), then
 * refresh the populated materialized views (pg_restore filled them with the data from before
 * the file), and only then COMMIT. A failed check ends psql without COMMIT.
 */
const SQL_FILE_EPILOGUE = `\\o
\\set QUIET on
\\set ON_ERROR_STOP on
\\set ON_ERROR_ROLLBACK off
\\set AUTOCOMMIT on
\\set ECHO none
\\set SINGLESTEP off
\\pset format unaligned
\\pset tuples_only on
SELECT pg_catalog.current_setting('${SQL_FILE_XACT}', true) IS NOT DISTINCT FROM pg_catalog.txid_current()::pg_catalog.text AND pg_catalog.current_database() OPERATOR(pg_catalog.=) :'coffer_db' AS coffer_same_xact, :'LAST_ERROR_SQLSTATE' OPERATOR(pg_catalog.=) '00000' AS coffer_no_error \\gset
\\if :coffer_same_xact
\\else
\\echo ${SQL_FILE.left}
\\q
\\endif
\\if :coffer_no_error
\\else
\\echo ${SQL_FILE.error} :LAST_ERROR_SQLSTATE :LAST_ERROR_MESSAGE
\\q
\\endif
\\echo ${SQL_FILE.checked}
SELECT '${SQL_FILE.refresh}' OPERATOR(pg_catalog.||) v FROM (${POPULATED_MATVIEWS_IN_ORDER}) AS mv(v);
SELECT 'REFRESH MATERIALIZED VIEW ' OPERATOR(pg_catalog.||) v FROM (${POPULATED_MATVIEWS_IN_ORDER}) AS mv(v) \\gexec
\\echo ${SQL_FILE.refreshed}
COMMIT;
\\echo ${SQL_FILE.done}
`;

/** psql's report of an error (the server's, or psql's own), with its origin when it has one. */
const PSQL_ERROR_LINE = /^(?:psql(?::(.*?):(\d+))?: )?(?:ERROR|FATAL|PANIC|error|fatal):/;
/** The server's warning for a BEGIN inside a transaction. */
const NESTED_BEGIN = /^(?:psql:(.*?):(\d+): )?WARNING:\s+there is already a transaction in progress/;

/** The first error line of psql's stderr, and the first nested-BEGIN warning, whatever its length. */
class PsqlStderrScan {
  firstError: { text: string; file: string | undefined } | undefined;
  nestedBegin: string | undefined;
  private partial = '';
  push(b: Buffer): void {
    const lines = (this.partial + b.toString('utf8')).split('\n');
    this.partial = lines.pop()!.slice(0, 4096);
    for (const l of lines) this.line(l);
  }
  end(): void {
    if (this.partial) this.line(this.partial);
    this.partial = '';
  }
  private line(raw: string): void {
    const l = raw.trim();
    const err = this.firstError === undefined ? PSQL_ERROR_LINE.exec(l) : null;
    if (err) this.firstError = { text: l, file: err[1] };
    const begin = this.nestedBegin === undefined ? NESTED_BEGIN.exec(l) : null;
    if (begin) this.nestedBegin = begin[2] ?? '?';
  }
}

/** psql:/path/file.sql:3: ERROR:  … → line 3: ERROR: … */
function shortPsqlError(line: string): string {
  return line.replace(/^psql:.*?:(\d+): /, 'line $1: ').replace(/\s+/g, ' ');
}

/**
 * Runs a user's SQL file (`restore --sanitize`) in `target.database` in ONE transaction that
 * coffer opens and closes (psql `-c BEGIN`, a transaction-local mark, `-f FILE`, then
 * {@link SQL_FILE_EPILOGUE} on stdin), stopping at the first error. The error names the file
 * and PostgreSQL's message (with psql's line number). Returns the materialized views refreshed
 * after the file, in their order.
 *
 * The file cannot get around that; each of these fails like an error, and nothing of the file
 * is committed: an error the file hid (`\set ON_ERROR_STOP off`, a SAVEPOINT it rolled back
 * to, ON_ERROR_ROLLBACK), psql's own error (a missing `\i` file), a COMMIT/ROLLBACK/END/ABORT
 * or `\connect` that ended coffer's transaction (its statements ran outside it), a BEGIN of its
 * own (it meant to control the transaction), psql ending before coffer's COMMIT. A sanitize
 * that did not run whole, in coffer's transaction, must not let the data it was to mask reach
 * the target name; nor may a materialized view keep the rows from before it. (A `\q` in the
 * file ends the file only, as with `psql -f FILE -c …`: what follows it in the file does not run.)
 */
export async function runSqlFile(tools: Pick<PgTools, 'psql'>, target: PgTarget, file: string, opts: { what: string; signal?: AbortSignal }): Promise<{ refreshed: string[] }> {
  const argv = [
    ...tools.psql,
    '-X',
    '-q',
    '-A',
    '-t',
    '-v',
    'ON_ERROR_STOP=1',
    '-v',
    `coffer_db=${target.database}`,
    '--no-password',
    '-d',
    conninfoFor(target.conn, target.database),
    '-c',
    'BEGIN',
    '-c',
    `SELECT pg_catalog.set_config('${SQL_FILE_XACT}', pg_catalog.txid_current()::pg_catalog.text, true) IS NULL`,
    '-f',
    file,
    '-f',
    '-',
  ];
  const scan = new PsqlStderrScan();
  const failed = (message: string, hint = 'fix the SQL and restore again; nothing was put under the target name'): DatabaseError => new DatabaseError(message, { hint });
  const sup = new Supervisor(opts.signal);
  const chunks: Buffer[] = [];
  /** psql's stdout so far. */
  const out = (): string => Buffer.concat(chunks).toString('utf8');
  /** The first error, said for the file's line, or for coffer's own step after it. */
  const fromError = (text: string, origin: string | undefined): DatabaseError => {
    if (origin !== '<stdin>') return failed(`${opts.what} failed: ${shortPsqlError(text)}`);
    const short = text.replace(/^psql:.*?:\d+: /, '').replace(/\s+/g, ' ');
    const lines = out().split('\n');
    if (lines.includes(SQL_FILE.checked) && !lines.includes(SQL_FILE.refreshed)) {
      const view = lines.filter((l) => l.startsWith(SQL_FILE.refresh)).at(-1)?.slice(SQL_FILE.refresh.length);
      return failed(`${opts.what} ran, but refreshing its materialized views after it failed${view ? ` (last listed: ${view})` : ''}: ${short}`, 'a materialized view must be refreshable after the file (drop the ones it cannot refresh, in the file) and restore again; nothing was put under the target name');
    }
    return failed(`${opts.what} failed when coffer closed its transaction: ${short}`);
  };
  await sup.run(async () => {
    const child = sup.spawn({
      argv,
      env: libpqEnv(target.conn, target.env),
      stdin: 'pipe',
      what: opts.what,
      onStderr: (b) => scan.push(b),
      explain: (f) => {
        scan.end();
        if (scan.firstError) return fromError(scan.firstError.text, scan.firstError.file);
        const lines = f.stderr.text().split('\n').map((l) => l.trim()).filter(Boolean);
        return failed(`${opts.what} failed: ${lines.at(-1) ?? `exit ${f.code ?? f.signal}`}`);
      },
    });
    child.stdout!.on('data', (b: Buffer) => chunks.push(b));
    const drained = new Promise((r) => child.stdout!.once('close', r));
    child.stdin!.end(SQL_FILE_EPILOGUE);
    // A stop of the run ends the wait at once (the teardown then kills psql, as runChild's does).
    await untilAborted(Promise.all([child.done, drained]), sup.signal);
  });
  scan.end();
  const lines = out().split('\n');
  const hint = "remove the file's own BEGIN, COMMIT, ROLLBACK, END, ABORT and \\connect (coffer runs the file in one transaction and commits it) and restore again; nothing was put under the target name";
  if (scan.firstError) throw fromError(scan.firstError.text, scan.firstError.file);
  if (lines.includes(SQL_FILE.left)) {
    throw failed(`${opts.what} ended coffer's transaction (a COMMIT, ROLLBACK, END, ABORT or \\connect in the file${scan.nestedBegin ? `, after its own BEGIN on line ${scan.nestedBegin}` : ''}): what followed ran outside it`, hint);
  }
  const error = lines.find((l) => l.startsWith(`${SQL_FILE.error} `));
  if (error) throw failed(`${opts.what} failed: a statement of the file failed: ${error.slice(SQL_FILE.error.length + 1)}`);
  if (!lines.includes(SQL_FILE.done)) {
    throw failed(`${opts.what} did not run to its end (psql stopped before coffer's COMMIT)`);
  }
  if (scan.nestedBegin) throw failed(`${opts.what} has a BEGIN of its own on line ${scan.nestedBegin}: coffer runs the file in one transaction`, hint);
  return { refreshed: lines.filter((l) => l.startsWith(SQL_FILE.refresh)).map((l) => l.slice(SQL_FILE.refresh.length)) };
}
