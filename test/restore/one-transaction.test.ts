/**
 * The filter that makes a plain data-only dump one transaction (restore --into-existing):
 * pg_dump's own BEGIN;/COMMIT; lines go, COPY data never changes (a row may read "BEGIN;"),
 * whatever the chunking; the suffix comes only at the end of the input.
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { OneTransaction, dependencyOrder } from '../../src/pipeline/load-data.js';

const DUMP = [
  'SET client_encoding = \'UTF8\';',
  'SELECT pg_catalog.lo_create(\'16413\');',
  'ALTER LARGE OBJECT 16413 OWNER TO alice;',
  'GRANT SELECT ON LARGE OBJECT 16413 TO bob;',
  'COPY public.t (id, note) FROM stdin;',
  '1\tBEGIN;',
  'COMMIT;',
  '2\t\\\\.',
  `3\t${'x'.repeat(5000)}`,
  '\\.',
  '',
  'BEGIN;',
  '',
  "SELECT pg_catalog.lo_open('16413', 131072);",
  "SELECT pg_catalog.lowrite(0, '\\x6869');",
  'SELECT pg_catalog.lo_close(0);',
  '',
  'COMMIT;',
  '',
].join('\n');

async function filtered(chunkSize: number, opts = { noOwner: false, noPrivileges: false }): Promise<string> {
  const input = Buffer.from(DUMP);
  const chunks: Buffer[] = [];
  for (let i = 0; i < input.length; i += chunkSize) chunks.push(input.subarray(i, i + chunkSize));
  const f = new OneTransaction({ ...opts, suffix: 'REFRESH MATERIALIZED VIEW public.mv;\nCOMMIT;\n' });
  const out: Buffer[] = [];
  await pipeline(Readable.from(chunks), f, async (src: AsyncIterable<Buffer>) => {
    for await (const c of src) out.push(c);
  });
  expect(f.dropped).toBe(2);
  return Buffer.concat(out).toString();
}

describe('one transaction', () => {
  it.each([1, 2, 3, 7, 64, 4096, 1 << 20])('chunks of %i bytes', async (n) => {
    const expected = `BEGIN;\n${DUMP.replace('\nBEGIN;\n\nSELECT pg_catalog.lo_open', '\n\nSELECT pg_catalog.lo_open').replace('lo_close(0);\n\nCOMMIT;\n', 'lo_close(0);\n\n')}REFRESH MATERIALIZED VIEW public.mv;\nCOMMIT;\n`;
    expect(await filtered(n)).toBe(expected);
  });

  it('--no-owner / --no-privileges leave out the large objects\' owner and grants', async () => {
    const out = await filtered(10, { noOwner: true, noPrivileges: true });
    expect(out).not.toContain('ALTER LARGE OBJECT');
    expect(out).not.toContain('GRANT SELECT ON LARGE OBJECT');
    expect(out).toContain("SELECT pg_catalog.lo_create('16413');");
  });

  it('materialized views after the ones they read, otherwise in the given order', () => {
    expect(
      dependencyOrder(
        [
          [1, 'public.a_total'],
          [2, 'public.b'],
          [3, 'public.z_base'],
        ],
        [
          [1, 3],
          [2, 1],
        ],
      ),
    ).toEqual(['public.z_base', 'public.a_total', 'public.b']);
  });
});
