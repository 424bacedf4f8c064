/**
 * The backup's globals (pg_dumpall --globals-only) rewritten for a server that already has roles:
 * statements read with quotes, comments and dollar quotes understood; a role the server has is
 * left out of every statement that would change it.
 */
import { describe, expect, it } from 'vitest';
import { classify, globalsScript, splitSql } from '../../src/pg/globals.js';

const HOSTILE = `new "o'ne"; ✓ -- $$ /* x`;
const q = (n: string): string => `"${n.replace(/"/g, '""')}"`;

/** pg_dumpall 15.14+'s shape, with a hostile role name. */
const DUMP = `--
-- PostgreSQL database cluster dump
--

\\restrict abc123

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

CREATE ROLE keeper;
ALTER ROLE keeper WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:a==$b=:c=';
COMMENT ON ROLE keeper IS 'it''s; me';
CREATE ROLE ${q(HOSTILE)};
ALTER ROLE ${q(HOSTILE)} WITH NOSUPERUSER LOGIN PASSWORD 'md5x''; ALTER ROLE keeper SUPERUSER; --';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$4096:p';

--
-- User Configurations
--

--
-- User Config "${HOSTILE.replace(/\n/g, ' ')}"
--

ALTER ROLE keeper SET work_mem TO '3MB';
ALTER ROLE ${q(HOSTILE)} SET search_path TO 'a', 'b c';

--
-- Role memberships
--

GRANT keeper TO ${q(HOSTILE)} WITH ADMIN OPTION GRANTED BY postgres;
GRANT keeper TO postgres GRANTED BY postgres;

--
-- Role privileges on configuration parameters
--

GRANT SET ON PARAMETER work_mem TO keeper;
GRANT SET ON PARAMETER work_mem TO ${q(HOSTILE)};
GRANT SET ON PARAMETER work_mem TO PUBLIC;

\\unrestrict abc123

--
-- PostgreSQL database cluster dump complete
--
`;

describe('globals statements', () => {
  it('splits at semicolons outside quotes, comments and dollar quotes; meta-commands are lines', () => {
    const segs = splitSql(`-- a; comment\nCREATE ROLE "a;b";\n\\restrict k\n/* ; */ SELECT $x$;$x$, 'x;''y', E'\\';', "q"";" ;\nSELECT 1`);
    expect(segs.filter((s) => s.kind === 'statement').map((s) => s.text)).toEqual(['CREATE ROLE "a;b";', `SELECT $x$;$x$, 'x;''y', E'\\';', "q"";" ;`, 'SELECT 1']);
    expect(segs.filter((s) => s.kind === 'meta').map((s) => s.text)).toEqual(['\\restrict k\n']);
    expect(segs.map((s) => s.text).join('')).toBe(`-- a; comment\nCREATE ROLE "a;b";\n\\restrict k\n/* ; */ SELECT $x$;$x$, 'x;''y', E'\\';', "q"";" ;\nSELECT 1`);
  });

  it('reads the role of each statement, quoted or bare (folded to lower case)', () => {
    expect(classify(`CREATE ROLE ${q(HOSTILE)};`)).toEqual({ kind: 'create-role', role: HOSTILE });
    expect(classify('CREATE ROLE Keeper;')).toEqual({ kind: 'create-role', role: 'keeper' });
    expect(classify(`ALTER ROLE ${q(HOSTILE)} SET search_path TO 'a';`)).toEqual({ kind: 'role', role: HOSTILE });
    expect(classify(`COMMENT ON ROLE "Ä" IS 'x';`)).toEqual({ kind: 'role', role: 'Ä' });
    expect(classify(`SECURITY LABEL FOR selinux ON ROLE r IS 'x';`)).toEqual({ kind: 'role', role: 'r' });
    expect(classify(`GRANT "g,1", g2 TO ${q(HOSTILE)} WITH INHERIT TRUE GRANTED BY postgres;`)).toEqual({ kind: 'membership', roles: ['g,1', 'g2'], members: [HOSTILE] });
    expect(classify('GRANT SET, ALTER SYSTEM ON PARAMETER work_mem TO a, PUBLIC;')).toEqual({ kind: 'parameter-privilege', grantees: ['a', 'PUBLIC'] });
    expect(classify('GRANT CREATE ON TABLESPACE t TO a;')).toEqual({ kind: 'other' });
    expect(classify('DROP ROLE IF EXISTS a;')).toEqual({ kind: 'drop-role' });
    expect(classify('ALTER ROLE ALL SET work_mem TO 1;')).toEqual({ kind: 'unknown-role' });
    expect(classify('ALTER ROLE a \\! rm -rf x\n;')).toEqual({ kind: 'unknown-role' });
    expect(classify("SET client_encoding = 'UTF8';")).toEqual({ kind: 'other' });
  });

  it('a role the server has is kept as it is; a missing one is created with all of it, each later statement only if its CREATE succeeded', () => {
    const plan = globalsScript(DUMP, new Set(['postgres', 'keeper']), 'v_');
    expect(plan.kept).toEqual(['keeper', 'postgres']);
    expect(plan.created).toEqual([HOSTILE]);
    expect(plan.membershipsLeftOut).toEqual(['keeper to postgres']);
    expect(plan.leftOut).toEqual(['GRANT SET ON PARAMETER work_mem TO PUBLIC;']);
    const s = plan.script;
    expect(s).not.toMatch(/\b(keeper|postgres) WITH|CREATE ROLE (keeper|postgres)|ROLE keeper SET|COMMENT ON ROLE keeper|TO keeper;|\\(un)?restrict/);
    expect(s).toContain(`CREATE ROLE ${q(HOSTILE)};\n\\if :ERROR\n\\set v_0 false\n\\else\n\\set v_0 true\n\\endif\n`);
    expect(s).toContain(`\\if :v_0\nALTER ROLE ${q(HOSTILE)} WITH NOSUPERUSER LOGIN PASSWORD 'md5x''; ALTER ROLE keeper SUPERUSER; --';\n\\endif`);
    expect(s).toContain(`\\if :v_0\nALTER ROLE ${q(HOSTILE)} SET search_path TO 'a', 'b c';\n\\endif`);
    expect(s).toContain(`\\if :v_0\nGRANT keeper TO ${q(HOSTILE)} WITH ADMIN OPTION GRANTED BY postgres;\n\\endif`);
    expect(s).toContain(`\\if :v_0\nGRANT SET ON PARAMETER work_mem TO ${q(HOSTILE)};\n\\endif`);
    expect(s).toContain("SET standard_conforming_strings = on;");
  });

  it('into an empty server everything is created (the backup as it is, without its meta-commands)', () => {
    const plan = globalsScript(DUMP, new Set(), 'v_');
    expect(plan.kept).toEqual([]);
    expect(plan.created).toEqual(['keeper', HOSTILE, 'postgres']);
    expect(plan.script).toContain("\\if :v_0\nALTER ROLE keeper SET work_mem TO '3MB';\n\\endif");
    expect(plan.script).toContain('\\if :v_0\n\\if :v_2\nGRANT keeper TO postgres GRANTED BY postgres;\n\\endif\n\\endif');
  });
});
