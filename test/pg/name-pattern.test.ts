/**
 * pg_dump's table patterns, ported from PostgreSQL's processSQLNamePattern: the expected
 * regular expressions are what psql 15 generates for `\dt PATTERN` (psql -E), which shares the
 * function with pg_dump.
 */
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { exactTablePattern, patternToRegex, tablePatternCondition } from '../../src/pg/name-pattern.js';

const name = (re: string): string => `c.relname OPERATOR(pg_catalog.~) '${re.replace(/'/g, "''")}' COLLATE pg_catalog.default`;
const schema = (re: string): string => `n.nspname OPERATOR(pg_catalog.~) '${re.replace(/'/g, "''")}' COLLATE pg_catalog.default`;
const VISIBLE = 'pg_catalog.pg_table_is_visible(c.oid)';

describe('pg_dump table patterns', () => {
  it.each([
    ['m', [name('^(m)$'), VISIBLE]],
    ['M_2025', [name('^(m_2025)$'), VISIBLE]],
    ['"M_2025"', [name('^(M_2025)$'), VISIBLE]],
    ['public.m*', [name('^(m.*)$'), schema('^(public)$')]],
    ['*.m_20??', [name('^(m_20..)$')]],
    ['a$b', [name('^(a\\$b)$'), VISIBLE]],
    ['"a.b"."c""d"', [name('^(c"d)$'), schema('^(a\\.b)$')]],
    ['int[]', [name('^(int\\[])$'), VISIBLE]],
    ['(a|b)', [name('^((a|b))$'), VISIBLE]],
    ['"(a|b)"', [name('^(\\(a\\|b\\))$'), VISIBLE]],
    ['db.public.m', [name('^(m)$'), schema('^(public)$')]],
    ['x.', [name('^()$'), schema('^(x)$')]],
    ["it's", [name("^(it's)$"), VISIBLE]],
  ])('%s', (pattern, conds) => {
    expect(tablePatternCondition(pattern, 'db')).toBe(conds.join(' AND '));
  });

  it('a database part must be the database being backed up; more than two dots is an error', () => {
    expect(patternToRegex('db.public.m').database).toBe('db');
    expect(() => tablePatternCondition('other.public.m', 'db')).toThrow(UsageError);
    expect(() => tablePatternCondition('other.public.m', 'db')).toThrow(/cross-database references are not implemented/);
    expect(() => tablePatternCondition('a.b.c.d', 'db')).toThrow(/too many dotted names/);
  });

  it('an exact pattern matches one table whatever its name holds', () => {
    expect(exactTablePattern('public', 'Measurement 2025')).toBe('"public"."Measurement 2025"');
    expect(exactTablePattern('s"x', 'a.b*$')).toBe('"s""x"."a.b*$"');
    const r = patternToRegex(exactTablePattern('s"x', 'a.b*$'));
    expect(r).toEqual({ schema: '^(s"x)$', name: '^(a\\.b\\*\\$)$', dots: 1 });
  });
});
