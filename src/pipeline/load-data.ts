import { Transform, type TransformCallback } from 'node:stream';
import { pipeline as streamPipeline } from 'node:stream/promises';
import { DatabaseError, UsageError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { PgAdmin } from '../pg/admin.js';
import type { ConnectionSpec } from '../pg/connection.js';
import { MATVIEW_REFS_CTE } from '../pg/matviews.js';
import { psqlQuery, spawnPsqlScript } from '../pg/psql.js';
import type { PgTools } from '../pg/tools.js';
import { checkManifestVersions, localVersions } from '../pg/versions.js';
import { Supervisor, type ChildFailure } from '../run/supervisor.js';
import { FanOut } from './fanout.js';
import { openSource, type RestoreSource } from './restore-source.js';

export interface LoadRequest {
  source: RestoreSource;
  identities: string[];
  tools: PgTools;
  conn: ConnectionSpec;
  maintenanceDb: string;
  /** The existing database that holds the schema. */
  database: string;
  /** Leave out the large objects' `ALTER LARGE OBJECT … OWNER TO`. */
  noOwner: boolean;
  /** Leave out the large objects' GRANT/REVOKE. */
  noPrivileges: boolean;
  zstdCommand?: string[];
  env: NodeJS.ProcessEnv;
  signal: AbortSignal;
  log: Logger;
  onProgress?: (storedBytes: number) => void;
}

export interface LoadSummary {
  database: string;
  backupId: string | null;
  storedBytes: number;
  archiveBytes: number;
  durationMs: number;
  /** Materialized views refreshed after the data, in this order (in the same transaction). */
  materializedViews: string[];
  /** pg_dump's own BEGIN;/COMMIT; lines (around large objects) left out so that the load stays one transaction. */
  transactionLinesDropped: number;
}

/**
 * Loads a data-only backup into an existing database that holds the schema, in ONE transaction:
 *
 *   store ─▶ age ─▶ zstd -d ─▶ whole-archive check ─▶ filter ─▶ psql -X -v ON_ERROR_STOP=1
 *
 * The filter sends `BEGIN;` first, leaves out pg_dump's own `BEGIN;`/`COMMIT;` (pg_dump wraps
 * the large objects' data in them, which would commit everything loaded so far), and only once
 * the whole archive checked out appends `REFRESH MATERIALIZED VIEW` for every materialized view
 * (dependencies first) and `COMMIT;`. Any failure — an SQL error (ON_ERROR_STOP), damage found
 * at the last byte, a stop signal — ends psql without COMMIT: the server rolls everything back
 * and the database is as it was. (psql's own --single-transaction would COMMIT at end of input,
 * also when that input was cut short.)
 */
export async function runLoadDataOnly(req: LoadRequest): Promise<LoadSummary> {
  const started = Date.now();
  const env = req.env;
  const manifest = req.source.kind === 'repository' ? req.source.entry.manifest : undefined;
  const backupId = req.source.kind === 'repository' ? req.source.entry.id : null;
  if (manifest && manifest.kind !== 'data-only') {
    throw new UsageError(`backup ${backupId} is ${manifest.kind === 'custom' ? 'a full backup' : 'schema-only'}: --into-existing loads data-only backups`, {
      hint: 'restore this one into a new database with --target-db',
    });
  }
  const admin = new PgAdmin(req.tools, req.conn, req.maintenanceDb, env);
  if (!(await admin.exists(req.database))) {
    throw new UsageError(`database ${JSON.stringify(req.database)} does not exist; --into-existing loads a data-only backup into a database that already has the schema`, {
      hint: `restore the schema first, e.g. coffer restore --kind schema-only --target-db ${req.database}, then load this backup`,
    });
  }
  // A dump of a newer server does not load into an older one: refused before the download.
  if (manifest) checkManifestVersions(manifest, await localVersions(req.tools, admin, false, env, req.signal));
  const views = await materializedViewOrder(req);
  if (manifest && !manifest.dumpOptions?.disableTriggers && (manifest.warnings ?? []).some((w) => /circular foreign-key constraints/.test(w))) {
    req.log.warn('pg_dump reported circular foreign keys when this backup was taken without --disable-triggers: the load fails unless those constraints are deferrable', { backup: backupId ?? undefined });
  }
  const sup = new Supervisor(req.signal);
  const disableTriggers = manifest?.dumpOptions?.disableTriggers;
  return sup.run(async () => {
    const opened = await openSource(req, sup, env);
    if (opened.format !== 'sql') {
      throw new UsageError('this file is a custom-format (full) backup: --into-existing loads data-only backups', { hint: 'restore it into a new database with --target-db' });
    }
    req.log.info('loading a data-only backup into an existing database, in one transaction', { database: req.database, materializedViews: views.length });
    const psql = spawnPsqlScript(sup, req.tools, { conn: req.conn, database: req.database, env }, { what: 'psql (load)', explain: (f) => loadError(f, req.database, backupId, disableTriggers) });
    const suffix = `${views.map((v) => `REFRESH MATERIALIZED VIEW ${v};\n`).join('')}COMMIT;\n`;
    const filter = new OneTransaction({ noOwner: req.noOwner, noPrivileges: req.noPrivileges, suffix });
    await Promise.all([
      streamPipeline(opened.archive, filter, new FanOut([{ name: 'psql', stream: psql.stdin!, kind: 'child' }]), { signal: sup.signal }),
      psql.done,
      ...opened.children.map((c) => c.done),
    ]);
    if (sup.failed) throw sup.cause();
    const stats = opened.stats();
    if (filter.dropped > 0) req.log.info("pg_dump's BEGIN/COMMIT around large objects left out: the whole load was one transaction", { lines: filter.dropped });
    if (views.length > 0) req.log.info('materialized views refreshed', { views: views.join(',') });
    return {
      database: req.database,
      backupId,
      storedBytes: stats.storedBytes,
      archiveBytes: stats.archiveBytes,
      durationMs: Date.now() - started,
      materializedViews: views,
      transactionLinesDropped: filter.dropped,
    };
  });
}

/**
 * The materialized views of `req.database`, qualified and quoted, each after the materialized
 * views it reads (directly or through plain views).
 */
async function materializedViewOrder(req: LoadRequest): Promise<string[]> {
  const out = await psqlQuery(
    req.tools,
    req.conn,
    req.database,
    `WITH RECURSIVE ${MATVIEW_REFS_CTE}
SELECT pg_catalog.json_build_object(
  'views', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname)) ORDER BY n.nspname, c.relname), '[]')
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'm' AND n.nspname NOT IN ('pg_catalog', 'information_schema')),
  'needs', (SELECT coalesce(pg_catalog.json_agg(DISTINCT pg_catalog.jsonb_build_array(refs.mv, refs.ref)), '[]')
            FROM refs JOIN pg_catalog.pg_class c ON c.oid = refs.ref AND c.relkind = 'm'));`,
    { env: req.env, signal: req.signal, what: `list the materialized views of ${JSON.stringify(req.database)}` },
  );
  const { views, needs } = JSON.parse(out.trim()) as { views: Array<[number, string]>; needs: Array<[number, number]> };
  return dependencyOrder(views, needs);
}

/** Kahn's algorithm, stable by the given order: each view after those it needs. */
export function dependencyOrder(views: Array<[number, string]>, needs: Array<[number, number]>): string[] {
  const name = new Map(views);
  const waiting = new Map<number, Set<number>>(views.map(([oid]) => [oid, new Set<number>()]));
  for (const [mv, ref] of needs) if (name.has(mv) && name.has(ref)) waiting.get(mv)!.add(ref);
  const out: string[] = [];
  const done = new Set<number>();
  while (done.size < views.length) {
    const next = views.find(([oid]) => !done.has(oid) && [...waiting.get(oid)!].every((r) => done.has(r)));
    // A cycle cannot exist between materialized views; take the rest in name order if it did.
    const pick = next ?? views.find(([oid]) => !done.has(oid))!;
    done.add(pick[0]);
    out.push(pick[1]);
  }
  return out;
}

/** psql's first `ERROR:` line (and its DETAIL), as the message of a failed load, with the fix. */
function loadError(f: ChildFailure, database: string, backupId: string | null, disableTriggers: boolean | undefined): DatabaseError {
  const lines = f.stderr.text().split('\n');
  const at = lines.findIndex((l) => /\b(ERROR|FATAL):/.test(l));
  const error = at >= 0 ? lines[at]!.replace(/^.*?\b(ERROR|FATAL):\s*/, '') : f.stderr.lastLines();
  const detail = at >= 0 ? lines.slice(at + 1).find((l) => /\bDETAIL:/.test(l))?.replace(/^.*?\bDETAIL:\s*/, '') : undefined;
  const what = `loading ${backupId ? `data-only backup ${backupId}` : 'the data-only backup'} into ${JSON.stringify(database)} failed: ${error}${detail ? ` (${detail})` : ''}; nothing was loaded`;
  let hint: string | undefined;
  if (/violates foreign key constraint/.test(error)) {
    hint =
      disableTriggers === true
        ? 'the data does not satisfy this foreign key (was data excluded with --exclude-table-data?)'
        : 'take the data-only backup with --disable-triggers (coffer backup --data-only --disable-triggers) and load that one as a superuser';
  } else if (/permission denied: .* is a system trigger|must be owner of|permission denied for (table|relation)/.test(error)) {
    hint = 'load as a superuser (--dbname with a superuser): a backup taken with --disable-triggers disables the foreign-key triggers while it loads';
  } else if (/duplicate key value violates unique constraint/.test(error)) {
    hint = 'the database already holds rows: load into a database whose tables are empty, e.g. one restored from a schema-only backup';
  } else if (/relation ".*" does not exist|schema ".*" does not exist/.test(error)) {
    hint = `the database lacks the backup's tables: restore the schema first, e.g. coffer restore --kind schema-only --target-db ${database}`;
  }
  return new DatabaseError(what, hint ? { hint } : undefined);
}

/**
 * The SQL of a plain data-only dump as one transaction: `BEGIN;` first; pg_dump's own
 * `BEGIN;`/`COMMIT;` lines (outside COPY data) left out; `suffix` (the refreshes and `COMMIT;`)
 * only at the end of a complete input. Optionally leaves out the large objects' owner and
 * privilege statements. COPY data passes through untouched: a line of it is never a statement
 * (`\.` ends it; a data line cannot be `\.`, COPY escapes the backslash).
 */
export class OneTransaction extends Transform {
  dropped = 0;
  private inCopy = false;
  private partial: Buffer[] = [];
  private partialLen = 0;
  /** The current line is COPY data already passed on (too long to be `\.`). */
  private passing = false;
  private started = false;

  constructor(private readonly opts: { noOwner: boolean; noPrivileges: boolean; suffix: string }) {
    super({ highWaterMark: 1024 * 1024 });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const out: Buffer[] = [];
    if (!this.started) {
      this.started = true;
      out.push(Buffer.from('BEGIN;\n'));
    }
    let pos = 0;
    while (pos < chunk.length) {
      const nl = chunk.indexOf(10, pos);
      if (nl === -1) {
        const rest = chunk.subarray(pos);
        if (this.inCopy && (this.passing || this.partialLen + rest.length > 3)) {
          out.push(...this.partial, rest);
          this.partial = [];
          this.passing = true;
        } else this.partial.push(rest);
        this.partialLen += rest.length;
        break;
      }
      const seg = chunk.subarray(pos, nl + 1);
      pos = nl + 1;
      if (this.passing) {
        out.push(seg);
      } else {
        const line = this.partial.length > 0 ? Buffer.concat([...this.partial, seg]) : seg;
        if (this.keep(line)) out.push(line);
      }
      this.partial = [];
      this.partialLen = 0;
      this.passing = false;
    }
    cb(null, out.length === 1 ? out[0] : Buffer.concat(out));
  }

  override _flush(cb: TransformCallback): void {
    const out: Buffer[] = [];
    if (!this.started) out.push(Buffer.from('BEGIN;\n'));
    if (this.partial.length > 0) {
      const line = Buffer.concat(this.partial);
      if (this.passing || this.keep(line)) out.push(line);
      out.push(Buffer.from('\n'));
    }
    out.push(Buffer.from(this.opts.suffix));
    cb(null, Buffer.concat(out));
  }

  /** Whether a whole line (with its newline) goes on; tracks COPY. */
  private keep(line: Buffer): boolean {
    if (this.inCopy) {
      if (line[0] === 0x5c && line[1] === 0x2e && (line.length === 3 || (line.length === 4 && line[2] === 0x0d))) this.inCopy = false;
      return true;
    }
    if (line.length > 4096 && !line.subarray(0, 5).equals(Buffer.from('COPY '))) return true;
    const text = line.toString('utf8').replace(/\r?\n$/, '');
    if (/^COPY .* FROM stdin;$/.test(text)) {
      this.inCopy = true;
      return true;
    }
    if (text === 'BEGIN;' || text === 'COMMIT;') {
      this.dropped++;
      return false;
    }
    if (this.opts.noOwner && /^ALTER LARGE OBJECT \d+ OWNER TO .*;$/.test(text)) return false;
    if (this.opts.noPrivileges && /^(GRANT|REVOKE) .* ON LARGE OBJECT \d+ (TO|FROM) .*;$/.test(text)) return false;
    return true;
  }
}
