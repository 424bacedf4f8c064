import { CofferError, DatabaseError, UsageError } from '../errors.js';

/**
 * Where the database is. Everything except the password ends up in a libpq conninfo string
 * passed as `-d` to pg_dump/psql; the password only ever travels in the child's environment
 * (PGPASSWORD), never on a command line.
 */
export interface ConnectionSpec {
  /** libpq keywords from `--dbname` (conninfo or URI), without `password`. */
  params: Record<string, string>;
  /** A password found in `--dbname` (or configuration), if any. */
  password?: string;
}

/** A database a PostgreSQL program connects to, and the environment children start from. */
export interface PgTarget {
  conn: ConnectionSpec;
  database: string | undefined;
  /** The environment children start from; the program gets it plus the password ({@link libpqEnv}). */
  env: NodeJS.ProcessEnv;
}

/** Parses `--dbname` in either libpq form: `key=value …` or `postgresql://…`. */
export function parseConnectionString(input: string | undefined): ConnectionSpec {
  if (input === undefined || input.trim() === '') return { params: {} };
  const text = input.trim();
  const params = /^postgres(ql)?:\/\//i.test(text) ? parseUri(text) : /=/.test(text) ? parseConninfo(text) : { dbname: text };
  const { password, ...rest } = params;
  return password === undefined ? { params: rest } : { params: rest, password };
}

/**
 * A connection URI as libpq reads it (PostgreSQL 15 docs, 34.1.1.2):
 * `postgresql://[user[:password]@][host][:port][,host[:port]…][/dbname][?param=value&…]`, every
 * part percent-decoded. Not WHATWG's URL: libpq accepts an empty host after a user
 * (`postgres@/db?host=/run/postgresql`), a percent-encoded socket directory as the host
 * (`%2Fvar%2Frun%2Fpostgresql`), and several hosts.
 */
function parseUri(text: string): Record<string, string> {
  const invalid = (why: string): never => {
    throw new UsageError(`invalid PostgreSQL connection URI in --dbname: ${why}`, { hint: 'expected postgresql://user@host:port/dbname (percent-encode special characters; a socket directory as %2Fvar%2Frun%2Fpostgresql or ?host=/var/run/postgresql)' });
  };
  const decode = (t: string): string => {
    try {
      return decodeURIComponent(t);
    } catch {
      return invalid('a malformed percent-encoding');
    }
  };
  let rest = text.replace(/^postgres(?:ql)?:\/\//i, '');
  let query = '';
  const q = rest.indexOf('?');
  if (q >= 0) [rest, query] = [rest.slice(0, q), rest.slice(q + 1)];
  let dbPart: string | undefined;
  const slash = rest.indexOf('/');
  if (slash >= 0) [rest, dbPart] = [rest.slice(0, slash), rest.slice(slash + 1)];
  const out: Record<string, string> = {};
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = rest.slice(0, at);
    rest = rest.slice(at + 1);
    const colon = userinfo.indexOf(':');
    const user = decode(colon >= 0 ? userinfo.slice(0, colon) : userinfo);
    if (user) out.user = user;
    if (colon >= 0) out.password = decode(userinfo.slice(colon + 1));
  }
  const hosts: string[] = [];
  const ports: string[] = [];
  if (rest !== '') {
    for (const spec of rest.split(',')) {
      let host = spec;
      let port = '';
      if (spec.startsWith('[')) {
        const end = spec.indexOf(']');
        if (end < 0) invalid('an IPv6 address without its closing "]"');
        host = spec.slice(1, end);
        const after = spec.slice(end + 1);
        if (after !== '' && !after.startsWith(':')) invalid(`unexpected ${JSON.stringify(after)} after an IPv6 address`);
        port = after.slice(1);
      } else {
        const colon = spec.lastIndexOf(':');
        if (colon >= 0) [host, port] = [spec.slice(0, colon), spec.slice(colon + 1)];
      }
      if (port !== '' && !/^\d{1,5}$/.test(port)) invalid(`port ${JSON.stringify(port)} is not a number`);
      hosts.push(decode(host));
      ports.push(port);
    }
  }
  if (hosts.some((h) => h !== '')) out.host = hosts.join(',');
  if (ports.some((p) => p !== '')) out.port = ports.join(',');
  if (dbPart !== undefined && dbPart !== '') out.dbname = decode(dbPart);
  for (const pair of query.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) invalid(`the parameter ${JSON.stringify(pair)} is not key=value`);
    out[decode(pair.slice(0, eq))] = decode(pair.slice(eq + 1));
  }
  return out;
}

function parseConninfo(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  const n = text.length;
  const fail = (): never => {
    throw new UsageError('invalid PostgreSQL connection string in --dbname', { hint: "expected key=value pairs, e.g. \"host=db port=5432 dbname=vault\"" });
  };
  while (i < n) {
    while (i < n && /\s/.test(text[i]!)) i++;
    if (i >= n) break;
    const ks = i;
    while (i < n && /[A-Za-z0-9_]/.test(text[i]!)) i++;
    const key = text.slice(ks, i);
    while (i < n && /\s/.test(text[i]!)) i++;
    if (!key || text[i] !== '=') fail();
    i++;
    while (i < n && /\s/.test(text[i]!)) i++;
    let value = '';
    if (text[i] === "'") {
      i++;
      let closed = false;
      while (i < n) {
        const c = text[i]!;
        if (c === '\\' && i + 1 < n) {
          value += text[i + 1];
          i += 2;
        } else if (c === "'") {
          i++;
          closed = true;
          break;
        } else {
          value += c;
          i++;
        }
      }
      if (!closed) fail();
    } else {
      while (i < n && !/\s/.test(text[i]!)) {
        if (text[i] === '\\' && i + 1 < n) {
          value += text[i + 1];
          i += 2;
        } else value += text[i++];
      }
    }
    out[key] = value;
  }
  return out;
}

function quoteConninfoValue(v: string): string {
  return `'${v.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

/** conninfo string for `-d` (no password), with `dbname` set to `database` when given. */
export function conninfoFor(spec: ConnectionSpec, database?: string): string {
  const params = { ...spec.params, ...(database !== undefined ? { dbname: database } : {}) };
  return Object.entries(params)
    .map(([k, v]) => `${k}=${quoteConninfoValue(v)}`)
    .join(' ');
}

/** Extra environment for a libpq child: the password, if we hold one. */
export function childEnv(spec: ConnectionSpec): Record<string, string> {
  return spec.password !== undefined ? { PGPASSWORD: spec.password } : {};
}

/** Environment for a libpq child: ours, plus the password when we hold one. */
export function libpqEnv(conn: ConnectionSpec, env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...env, ...childEnv(conn) };
}

/**
 * The connection a restore loads a scratch database through: its commits are asynchronous
 * (`synchronous_commit=off`, added to the connection's own `options` or PGOPTIONS, which it
 * keeps), so thousands of small objects do not wait for a WAL flush each. Nothing is lost by
 * it: a crash before the rename leaves only the scratch database, which is never used, and the
 * rename commits synchronously ({@link PgAdmin.swapIn}), which flushes every commit before it.
 * Nor does a role's `statement_timeout` cancel pg_restore's first queries (it turns it off itself
 * only after them), as for pg_dump ({@link dumpConnection}).
 */
export function scratchLoadTarget(target: PgTarget): PgTarget {
  return { ...target, conn: withOptions(target.conn, target.env, ['-c statement_timeout=0'], ['-c synchronous_commit=off']) };
}

/**
 * The connection with server options (`-c name=value`) set around its own (the `options`
 * parameter, else PGOPTIONS, which a conninfo `options` replaces): `before` first (its own may
 * override them), `after` last (they override its own).
 */
function withOptions(conn: ConnectionSpec, env: NodeJS.ProcessEnv, before: string[], after: string[]): ConnectionSpec {
  const own = (conn.params.options ?? env.PGOPTIONS ?? '').trim();
  const options = [...before, own, ...after].filter(Boolean).join(' ');
  return { ...conn, params: { ...conn.params, options } };
}

/**
 * pg_dump's and pg_dumpall's connection: no statement timeout from the first query on. pg_dump
 * turns it off itself, but only after its first queries, which a database's
 * `statement_timeout = '1ms'` then cancels on a loaded server.
 */
export function dumpConnection(conn: ConnectionSpec, env: NodeJS.ProcessEnv): ConnectionSpec {
  return withOptions(conn, env, ['-c statement_timeout=0'], []);
}

/**
 * The connection of coffer's own SQL (probes, locks, checks, creation, rename): its functions and
 * operators resolve in pg_catalog only, and no server-side timeout cuts it short. A database's
 * owner can set its search_path (`ALTER DATABASE … SET search_path = public, pg_catalog`) or
 * create `public.quote_ident(name)`, a better match than pg_catalog's: coffer, running as a
 * superuser, would call it. pg_dump pins its search_path the same way, and its timeouts to 0
 * (a database's `statement_timeout = '1ms'` does not stop a dump, nor coffer's probe). The
 * connection's own options (`options`, else PGOPTIONS) are kept: after the timeout, which they
 * may set, before the search_path, which they may not. Not for the user's SQL (`--smoke`,
 * `--sanitize`), which names its tables as the database's own sessions do.
 */
export function internalConnection(conn: ConnectionSpec, env: NodeJS.ProcessEnv): ConnectionSpec {
  return withOptions(conn, env, ['-c statement_timeout=0'], ['-c search_path=pg_catalog']);
}

/** Adds the fix to the usual libpq failures (message is psql's own first error line). */
export function explainLibpqError(what: string, err: unknown): CofferError {
  // psql itself not installed (a spawn failure, already explained): not the database's.
  if (err instanceof UsageError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  let hint: string | undefined;
  if (/password authentication failed|no password supplied|authentication failed/i.test(msg)) {
    hint = 'check PGPASSWORD / PGPASSFILE or the password in --dbname';
  } else if (/database ".*" does not exist/i.test(msg)) {
    hint = 'check --db / PGDATABASE; `psql -l` lists the databases';
  } else if (/role ".*" does not exist/i.test(msg)) {
    hint = 'check PGUSER or the user in --dbname';
  } else if (/could not connect|Connection refused|No such file or directory|could not translate host name|timeout expired/i.test(msg)) {
    hint = 'check PGHOST / PGPORT (or --dbname) and that the server is running';
  }
  return new DatabaseError(msg.startsWith(what) ? msg : `${what}: ${msg}`, { cause: err, ...(hint ? { hint } : {}) });
}

/** The database a connection names (from `--db`, `--dbname`, or PGDATABASE). */
export function databaseOf(spec: ConnectionSpec, explicit: string | undefined, env: NodeJS.ProcessEnv): string | undefined {
  return explicit ?? spec.params.dbname ?? env.PGDATABASE ?? undefined;
}
