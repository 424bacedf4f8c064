/**
 * The dump tap of the indexed pipeline walks every archive whole, also from a direct pg_dump
 * (not only through a wrapper): a custom archive cut anywhere (header, table of contents, a data
 * block, exactly at a block boundary, the last byte) is not whole, whatever size the chunks
 * have. An archive whose format the reader does not know is stored without an index unless
 * pg_dump runs through a wrapper (strict).
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { scanArchiveFile } from '../../src/pg/archive-offsets.js';
import { DumpTap } from '../../src/pipeline/dump-tap.js';
import { useFixture } from '../harness/fixture.js';

const f = useFixture({ name: 'dump-tap', db: { fixture: 'varied', prefix: 'tap' } });
let archive: Buffer;
let blocks: number[];

beforeAll(async () => {
  const file = f.path('varied.dump');
  await execa(path.join(f.pg.binDir, 'pg_dump'), ['-Fc', '-Z0', '-f', file, '-d', f.db], { env: f.env(), extendEnv: false });
  archive = await fsp.readFile(file);
  const scan = scanArchiveFile(file);
  if (!scan.ok) throw new Error(scan.reason);
  blocks = [...scan.layout.blocks.values()].sort((a, b) => a - b);
  expect(blocks.length).toBeGreaterThan(3);
});

function tapped(bytes: Buffer, chunk: number, strict = false): ReturnType<DumpTap['summary']> {
  const tap = new DumpTap(strict);
  for (let i = 0; i < bytes.length; i += chunk) tap.push(bytes.subarray(i, i + chunk));
  return tap.summary();
}

describe('DumpTap', () => {
  it('a whole archive is whole and indexed, in chunks of any size; its header names the database', () => {
    for (const chunk of [13, 4093, 1 << 20]) {
      const s = tapped(archive, chunk);
      expect(s.wholeProblem, `chunks of ${chunk}`).toBeUndefined();
      expect(s.index).toMatchObject({ dataStart: blocks[0] });
      expect(s.header?.dbname).toBe(f.db);
    }
  });

  it('an archive cut anywhere is not whole (a direct pg_dump: not strict)', () => {
    const cuts = new Set<number>([3, 10, Math.floor(blocks[0]! / 2), blocks[0]! - 1, archive.length - 1, archive.length - 5]);
    for (const b of blocks) {
      cuts.add(b);
      cuts.add(b + 1);
      cuts.add(b + 12);
    }
    for (let k = 1; k < 10; k++) cuts.add(blocks[0]! + Math.floor(((archive.length - blocks[0]!) * k) / 10));
    for (const cut of [...cuts].filter((c) => c > 0 && c < archive.length)) {
      for (const chunk of [997, 65536]) {
        const s = tapped(archive.subarray(0, cut), chunk);
        expect(s.wholeProblem, `cut at ${cut} of ${archive.length}, chunks of ${chunk}`).toMatch(/^the archive (ends inside (the header|the table of contents|a data block)|ends without the data of \d+ of its table-of-contents entries)/);
      }
    }
  });

  it('an archive version the reader does not know: no index, a failure only when strict', () => {
    const newer = Buffer.from(archive);
    newer[6] = 99; // PGDMP, then major 1, minor 99
    const lax = tapped(newer, 65536);
    expect(lax.wholeProblem).toBeUndefined();
    expect(lax.index).toMatchObject({ problem: expect.stringMatching(/table of contents could not be read \(unsupported archive version 1\.99/) });
    expect(tapped(newer, 65536, true).wholeProblem).toMatch(/unsupported archive version 1\.99/);
  });

  it('damage after the table of contents (a block whose type byte is wrong) is not whole', () => {
    const bad = Buffer.from(archive);
    bad[blocks[2]!] = 9;
    expect(tapped(bad, 4096).wholeProblem).toBeDefined();
  });
});
