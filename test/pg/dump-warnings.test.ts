/** pg_dump's stderr warnings, one line each, whatever the chunking of the stream. */
import { describe, expect, it } from 'vitest';
import { DumpWarnings } from '../../src/pg/dump-warnings.js';

const STDERR = [
  'pg_dump: detail: a detail of no warning',
  'pg_dump: warning: there are circular foreign-key constraints among these tables:',
  'pg_dump: detail: a',
  'pg_dump: detail: b',
  'pg_dump: hint: You might not be able to restore the dump without using --disable-triggers or temporarily dropping the constraints.',
  'pg_dump: hint: Consider using a full dump instead of a --data-only dump to avoid this problem.',
  'pg_dump: warning: typtype of data type "x" appears to be invalid',
  'something else entirely',
  'pg_dumpall: warning: roles cannot be dumped',
  '',
].join('\n');

const EXPECTED = [
  'pg_dump: warning: there are circular foreign-key constraints among these tables: a, b (hint: You might not be able to restore the dump without using --disable-triggers or temporarily dropping the constraints.) (hint: Consider using a full dump instead of a --data-only dump to avoid this problem.)',
  'pg_dump: warning: typtype of data type "x" appears to be invalid',
  'pg_dumpall: warning: roles cannot be dumped',
];

describe('pg_dump warnings', () => {
  it('one line per warning with its details and hints; other lines ignored', () => {
    const seen: string[] = [];
    const w = new DumpWarnings((l) => seen.push(l));
    w.push(Buffer.from(STDERR));
    expect(w.end()).toEqual(EXPECTED);
    expect(seen).toEqual(EXPECTED);
  });

  it('the same, fed a byte at a time, without a final newline', () => {
    const w = new DumpWarnings();
    const bytes = Buffer.from(STDERR.trimEnd());
    for (let i = 0; i < bytes.length; i++) w.push(bytes.subarray(i, i + 1));
    expect(w.end()).toEqual(EXPECTED);
  });

  it('keeps at most 100 and says how many more there were', () => {
    const w = new DumpWarnings();
    w.push(Buffer.from(Array.from({ length: 103 }, (_, i) => `pg_dump: warning: number ${i}\n`).join('')));
    const all = w.end();
    expect(all).toHaveLength(101);
    expect(all[100]).toBe('(3 more warnings not recorded)');
  });
});
