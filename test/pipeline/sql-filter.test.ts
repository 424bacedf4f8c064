/**
 * The plain-SQL filter for --no-owner / --no-privileges (issue 12, point 6), on its own: what it
 * removes and keeps, whatever the chunk boundaries, and that it streams. Pure: runs with
 * COFFER_TEST_SERVICES=none. test/restore/plain-owner.test.ts compares it with pg_dump's own
 * --no-owner / --no-privileges output and restores through it.
 */
import { describe, expect, it } from 'vitest';
import { PlainSqlFilter, type SqlFilterOptions } from '../../src/pipeline/sql-filter.js';

/** k: kept; o: removed by --no-owner; p: removed by --no-privileges. */
type Part = ['k' | 'o' | 'p', string];

// pg_dump-like output, with everything that must not be taken for a statement.
const PARTS: Part[] = [
  ['k', String.raw`--
-- PostgreSQL database dump
--

\restrict Abc123

SET statement_timeout = 0;
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);

--
-- Name: owned; Type: SCHEMA; Schema: -; Owner: gone
--

CREATE SCHEMA owned;


`],
  ['o', 'ALTER SCHEMA owned OWNER TO gone;'],
  ['k', String.raw`

--
-- Name: f(integer); Type: FUNCTION; Schema: owned; Owner: gone
--

CREATE FUNCTION owned.f(a integer) RETURNS integer
    LANGUAGE plpgsql
    AS $body$
BEGIN
-- Name: x; Type: ACL; Schema: owned; Owner: y
ALTER TABLE x OWNER TO y;
GRANT ALL ON x TO y;
  RETURN $$a$$ || $body2$ $bod $ $body;
END
$body$;


`],
  ['o', 'ALTER FUNCTION owned.f(a integer) OWNER TO gone;'],
  ['k', `

CREATE FUNCTION owned.g() RETURNS text LANGUAGE sql AS $$
SELECT 'it''s'; ALTER TABLE x OWNER TO y;
$$;
CREATE FUNCTION owned.h(x integer) RETURNS integer
    LANGUAGE sql
    BEGIN ATOMIC
 SELECT CASE
             WHEN (x > 0) THEN x
             ELSE 0
         END AS "case";
 ALTER TABLE x OWNER TO y;
END;
`],
  ['o', 'ALTER FUNCTION owned.h(x integer) OWNER TO gone;'],
  ['k', '\nCREATE FUNCTION owned.k() RETURNS text LANGUAGE sql AS $x$ SELECT 1 $$x$;\n'],
  ['o', 'ALTER FUNCTION owned.k() OWNER TO gone;'],
  ['k', "\nCOMMENT ON TABLE owned.w IS code'\\';\n"],
  ['o', 'ALTER TABLE owned.w OWNER TO gone;'],
  ['k', '\nSELECT 1 -- ; ALTER TABLE t OWNER TO x;\n;\nSELECT 2 /* ; ALTER TABLE t OWNER TO x; */;\n'],
  ['k', String.raw`
COMMENT ON TABLE owned.t IS 'it''s
ALTER TABLE owned.t OWNER TO gone;
GRANT ALL ON owned.t TO gone;
-- Name: t; Type: ACL; Schema: owned; Owner: x
';
COMMENT ON COLUMN owned.t.note IS E'escaped \' quote;
ALTER TABLE owned.t OWNER TO gone;
\\';
SET standard_conforming_strings = off;
COMMENT ON TABLE owned.u IS 'old style \'; ALTER TABLE owned.u OWNER TO gone; \\';
SET standard_conforming_strings = on;
COMMENT ON TABLE owned.w IS 'ne\';
COMMENT ON TABLE owned.w IS typ'\' || '\';
CREATE TABLE public."a"";ALTER TABLE t OWNER TO x;" (id integer);
CREATE TABLE public.a$b$ (x integer);
PREPARE p(integer) AS SELECT $1 + 1;
CREATE RULE r AS ON INSERT TO public.t DO ALSO (SELECT 1; ALTER TABLE t OWNER TO x; NOTIFY x);
/* a /* nested */ ALTER TABLE t OWNER TO x; */
-- ALTER TABLE t OWNER TO x;
`],
  ['o', 'ALTER TABLE public."x OWNER TO y" OWNER TO gone;'],
  ['k', '\n'],
  ['o', 'ALTER TABLE public.a$b$ OWNER TO "Gone Role";'],
  ['k', '\n'],
  ['o', 'ALTER TABLE public."données 🙂" OWNER TO "rôle ""x""";'],
  ['k', '\n'],
  ['o', 'ALTER SCHEMA rename OWNER TO gone;'],
  ['k', '\n'],
  ['o', 'SET SESSION AUTHORIZATION gone;'],
  ['k', '\n'],
  ['o', 'RESET SESSION AUTHORIZATION;'],
  ['k', String.raw`
ALTER TABLE ONLY public.t ALTER COLUMN owner SET DEFAULT 1;
ALTER TABLE public.t RENAME COLUMN owner TO x;
ALTER TABLE public.t RENAME owner TO x;
ALTER TABLE ONLY public.t OWNER TO;
SET search_path = owned, "OWNER TO x";

--
-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: gone
--

COPY public.t (id, note) FROM stdin;
ALTER TABLE public.t OWNER TO gone;
-- Name: t; Type: ACL; Schema: public; Owner: postgres
GRANT ALL ON public.t TO gone;
\\.
x\.
$$ ' " /* --
\.
\connect -reuse-previous=on "dbname='other'"

--
-- Name: SCHEMA owned; Type: ACL; Schema: -; Owner: gone
--

`],
  ['p', 'REVOKE ALL ON SCHEMA owned FROM gone;'],
  ['k', '\n'],
  ['p', 'GRANT USAGE ON SCHEMA owned TO gone WITH GRANT OPTION;'],
  ['k', String.raw`
SET default_tablespace = '';


--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: owned; Owner: postgres
--

`],
  ['p', 'ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA owned GRANT SELECT ON TABLES  TO gone;'],
  ['k', String.raw`


--
-- Name: x; Type: ACL; Schema: y; Type: TABLE; Schema: public; Owner: gone
--

CREATE TABLE public."x; Type: ACL; Schema: y" (id integer);
`],
  ['o', 'ALTER TABLE public."x; Type: ACL; Schema: y" OWNER TO gone;'],
  ['k', String.raw`

--
-- Name: later; Type: TABLE; Schema: public; Owner: gone
--

GRANT SELECT ON public.later TO gone;
COPY public.later FROM STDIN WITH (FORMAT csv);
"GRANT ALL ON t TO x;"
\.

--
-- PostgreSQL database dump complete
--

\unrestrict Abc123

SELECT 'no semicolon at the end'`],
];

const INPUT = Buffer.from(PARTS.map((p) => p[1]).join(''));

function expected(opts: SqlFilterOptions): string {
  return PARTS.filter(([k]) => k === 'k' || (k === 'o' && !opts.noOwner) || (k === 'p' && !opts.noPrivileges))
    .map((p) => p[1])
    .join('');
}

/** Runs the filter over `chunks`; returns its output and counts. */
async function filter(opts: SqlFilterOptions, chunks: Buffer[]): Promise<{ text: string; counts: PlainSqlFilter['counts'] }> {
  const f = new PlainSqlFilter(opts);
  const out: Buffer[] = [];
  f.on('data', (d: Buffer) => out.push(d));
  const ended = new Promise((r) => f.on('end', r));
  for (const c of chunks) f.write(c);
  f.end();
  await ended;
  return { text: Buffer.concat(out).toString('utf8'), counts: f.counts };
}

/** Splits `buf` at the given offsets. */
function splitAt(buf: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts].sort((a, b) => a - b)) {
    out.push(buf.subarray(prev, c));
    prev = c;
  }
  out.push(buf.subarray(prev));
  return out;
}

/** A small deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const FLAGS: Array<[string, SqlFilterOptions]> = [
  ['--no-owner', { noOwner: true, noPrivileges: false }],
  ['--no-privileges', { noOwner: false, noPrivileges: true }],
  ['--no-owner --no-privileges', { noOwner: true, noPrivileges: true }],
];

describe('plain-SQL filter for --no-owner / --no-privileges', () => {
  it.each(FLAGS)('%s: removes exactly the ownership / ACL statements, nothing inside literals, bodies, comments or COPY data', async (_name, opts) => {
    const r = await filter(opts, [INPUT]);
    expect(r.text).toBe(expected(opts));
    expect(r.counts).toEqual({
      ownership: opts.noOwner ? PARTS.filter(([k]) => k === 'o').length : 0,
      privileges: opts.noPrivileges ? PARTS.filter(([k]) => k === 'p').length : 0,
    });
  });

  it.each(FLAGS)('%s: the same output in 1-byte chunks', async (_name, opts) => {
    const bytes = Array.from({ length: INPUT.length }, (_, i) => INPUT.subarray(i, i + 1));
    expect((await filter(opts, bytes)).text).toBe(expected(opts));
  });

  it('the same output whatever the one split point (every offset)', async () => {
    const opts = { noOwner: true, noPrivileges: true };
    const want = expected(opts);
    const bad: number[] = [];
    for (let cut = 1; cut < INPUT.length; cut++) if ((await filter(opts, splitAt(INPUT, [cut]))).text !== want) bad.push(cut);
    expect(bad).toEqual([]);
  });

  it.each(FLAGS)('%s: the same output for 300 random splits into 2 to 40 chunks', async (_name, opts) => {
    const want = expected(opts);
    const next = rng(12);
    for (let i = 0; i < 300; i++) {
      const n = 1 + Math.floor(next() * 39);
      const cuts = Array.from({ length: n }, () => 1 + Math.floor(next() * (INPUT.length - 1)));
      const r = await filter(opts, splitAt(INPUT, cuts));
      if (r.text !== want) expect({ cuts, text: r.text }).toEqual({ cuts, text: want });
    }
  });

  it('streams: a long statement goes out before its end; only a statement that may be dropped waits for its semicolon', async () => {
    const f = new PlainSqlFilter({ noOwner: true, noPrivileges: true });
    const out: Buffer[] = [];
    f.on('data', (d: Buffer) => out.push(d));
    const sent = (): string => Buffer.concat(out).toString('utf8');
    const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

    const head = 'CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT ';
    const body = `'${'x'.repeat(1024 * 1024)}'`;
    f.write(head);
    f.write(body);
    await tick();
    expect(sent()).toBe(head + body);
    f.write(' $$;\nALTER TABLE public.t OWNER');
    await tick();
    expect(sent()).toBe(`${head + body} $$;\n`);
    f.write(' TO gone;\nALTER TABLE public.t ADD COLUMN c');
    await tick();
    expect(sent()).toBe(`${head + body} $$;\n\n`);
    f.write(' int;\nCOPY public.t FROM stdin;\n');
    // COPY data streams: a large block goes through line by line, none of it held.
    const line = 'ALTER TABLE public.t OWNER TO gone;\n';
    for (let i = 0; i < 1000; i++) f.write(line.repeat(100));
    await tick();
    expect(sent()).toBe(`${head + body} $$;\n\nALTER TABLE public.t ADD COLUMN c int;\nCOPY public.t FROM stdin;\n${line.repeat(100_000)}`);
    f.end('\\.\n');
    await new Promise((r) => f.on('end', r));
    expect(f.counts).toEqual({ ownership: 1, privileges: 0 });
  });

  it('multi-byte characters split across chunks come out whole', async () => {
    const sql = Buffer.from('CREATE TABLE "données 🙂" (é text);\nALTER TABLE "données 🙂" OWNER TO "rôle 🙂";\nCOMMENT ON TABLE "données 🙂" IS \'🙂\';\n');
    const bytes = Array.from({ length: sql.length }, (_, i) => sql.subarray(i, i + 1));
    expect((await filter({ noOwner: true, noPrivileges: false }, bytes)).text).toBe('CREATE TABLE "données 🙂" (é text);\n\nCOMMENT ON TABLE "données 🙂" IS \'🙂\';\n');
  });
});
