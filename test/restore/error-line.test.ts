/**
 * Issue 12, point 7: when pg_restore (or psql) fails, the error line is the first ERROR:/FATAL:
 * line it printed, not the tail of the statement after it; the statement goes to the error's
 * detail (a field of the log line), shortened, passwords hidden.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { TailBuffer } from '../../src/run/supervisor.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { databaseExists, quoteIdent, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'error-line' });
const pg = f.pg;

let db: string;

/** The JSON log record of the error line. */
function errorRecord(stderr: string): Record<string, unknown> {
  const rec = stderr
    .trim()
    .split('\n')
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        return {};
      }
    })
    .reverse()
    .find((r) => r.level === 'error');
  return rec ?? {};
}

beforeAll(async () => {
  // A classic pg_dump restore failure: an index on a SQL function that reads a table by an
  // unqualified name. pg_restore runs with an empty search_path, so CREATE INDEX fails.
  db = f.dropAtEnd(uniqueDbName('errline'));
  await pg.psql(`CREATE DATABASE ${quoteIdent(db)};`);
  await pg.psql(
    `CREATE TABLE lookup (k int PRIMARY KEY, v int);
     INSERT INTO lookup VALUES (1, 10);
     CREATE FUNCTION lookup_v(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT v FROM lookup WHERE k = $1';
     CREATE TABLE t (x int);
     INSERT INTO t VALUES (1);
     CREATE INDEX t_lookup ON t (lookup_v(x));`,
    db,
  );
});

describe('the error line of a failed restore', () => {
  it("is pg_restore's ERROR line; the statement is the detail; the scratch database is dropped", async () => {
    const repo = f.path('repo');
    const b = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient]);
    expect(b.code, b.stderr).toBe(0);
    const target = uniqueDbName('errline_r');
    const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target]);
    expect(r.code, r.stderr).toBe(3);
    const line = errorLine(r.stderr);
    expect(line).toMatch(/^pg_restore exited with code 1: pg_restore: error: could not execute query: ERROR: {2}relation "lookup" does not exist \(nothing was restored; fix the cause on this server \(the failed statement is logged as detail\) and restore again\)$/);
    expect(errorRecord(r.stderr).detail).toBe('Command was: CREATE INDEX t_lookup ON public.t USING btree (public.lookup_v(x));');
    expect(r.stderr).toContain('scratch database dropped');
    expect(await databaseExists(pg, target)).toBe(false);
  });
});

describe('TailBuffer.firstError', () => {
  it('keeps the first ERROR line however long the statement after it, in any chunking; hides passwords', () => {
    const stderr = [
      'pg_restore: warning: errors ignored on restore: 0',
      `pg_restore: error: could not execute query: ERROR:  syntax error at or near "x"`,
      'LINE 1: CREATE USER MAPPING FOR u SERVER s OPTIONS (password \'hunter22\') x',
      'Command was: CREATE USER MAPPING FOR u SERVER s OPTIONS (password \'hunter22\', host \'h\')',
      `  ${'x'.repeat(20_000)}`,
      '',
      'pg_restore: error: could not execute query: ERROR:  a later error',
      '',
    ].join('\n');
    for (const size of [1, 3, 4096, stderr.length]) {
      const t = new TailBuffer();
      const buf = Buffer.from(stderr);
      for (let i = 0; i < buf.length; i += size) t.push(buf.subarray(i, i + size));
      expect(t.lastLines()).not.toContain('ERROR:  syntax error');
      const first = t.firstError()!;
      expect(first.line).toBe('pg_restore: error: could not execute query: ERROR:  syntax error at or near "x"');
      expect(first.detail).toMatch(/^Command was: CREATE USER MAPPING FOR u SERVER s OPTIONS \(password '\*\*\*', host 'h'\) x{10,}…$/);
      expect(first.detail!.length).toBeLessThanOrEqual(240);
      expect(JSON.stringify(first)).not.toContain('hunter22');
    }
    // The server went away mid-statement: libpq's words, not the sentence fragment after them.
    const lost = new TailBuffer();
    lost.push(Buffer.from('pg_restore: error: could not execute query: server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally\n\tbefore or while processing the request.\nCommand was: ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n'));
    expect(lost.firstError()).toEqual({ line: 'pg_restore: error: could not execute query: server closed the connection unexpectedly', detail: 'Command was: ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);' });
    const none = new TailBuffer();
    none.push(Buffer.from('zstd: /*stdin*\\: unexpected end of file\n'));
    expect(none.firstError()).toBeUndefined();
  });
});
