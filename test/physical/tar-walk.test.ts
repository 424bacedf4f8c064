/**
 * The tar walk (src/physical/tar-walk.ts) on archives GNU tar writes (gnu, ustar and pax
 * formats, long names), fed at every awkward chunk size; cut short or damaged at many positions.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { TarWalk, type TarWalkResult } from '../../src/physical/tar-walk.js';
import { sha256 } from './common.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coffer-tarwalk-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const longName = `${'d'.repeat(120)}/${'f'.repeat(130)}`;
const manifest = Buffer.from(`{"PostgreSQL-Backup-Manifest-Version": 1}\n${'x'.repeat(70_000)}\n`);
fs.mkdirSync(path.join(dir, 'src', 'global'), { recursive: true });
fs.mkdirSync(path.join(dir, 'src', path.dirname(longName)), { recursive: true });
fs.writeFileSync(path.join(dir, 'src', 'PG_VERSION'), '15\n');
fs.writeFileSync(path.join(dir, 'src', 'global', 'pg_control'), Buffer.alloc(8192, 7));
fs.writeFileSync(path.join(dir, 'src', 'backup_manifest'), manifest);
fs.writeFileSync(path.join(dir, 'src', longName), 'long');
fs.writeFileSync(path.join(dir, 'src', 'empty'), '');

function tarOf(format: string): Buffer {
  return execFileSync('tar', ['-C', path.join(dir, 'src'), `--format=${format}`, '-cf', '-', '.']);
}

function walk(b: Buffer, chunk: number): TarWalkResult {
  const w = new TarWalk({ watch: [longName, 'empty'], keep: { PG_VERSION: 16, 'global/pg_control': 8 }, hash: ['backup_manifest'] });
  for (let i = 0; i < b.length; i += chunk) w.push(b.subarray(i, i + chunk));
  return w.end();
}

describe('TarWalk', () => {
  for (const format of ['gnu', 'ustar', 'pax']) {
    it(`walks a ${format} archive whole at chunk sizes 1, 511, 512, 513, 64 KiB ± 1`, () => {
      // ustar cannot hold the long name: leave it out there.
      const b = format === 'ustar' ? execFileSync('tar', ['-C', path.join(dir, 'src'), '--format=ustar', '-cf', '-', './PG_VERSION', './global', './backup_manifest', './empty']) : tarOf(format);
      for (const chunk of [1, 511, 512, 513, 65535, 65536, 65537, b.length]) {
        const r = walk(b, chunk);
        expect(r.problem).toBeUndefined();
        expect(r.kept.get('PG_VERSION')?.toString()).toBe('15\n');
        expect(r.kept.get('global/pg_control')).toEqual(Buffer.alloc(8, 7));
        expect(r.hashes.get('backup_manifest')).toBe(sha256(manifest));
        expect(r.seen.has('empty')).toBe(true);
        if (format !== 'ustar') expect(r.seen.has(longName)).toBe(true);
      }
    });
  }

  it('says where a cut-short archive ends, at every 512-byte boundary and in between', () => {
    const b = tarOf('gnu');
    const whole = walk(b, 4096);
    expect(whole.problem).toBeUndefined();
    // The archive's content ends before the two zero blocks (and tar's record padding).
    const end = b.length - [...b].reverse().findIndex((x) => x !== 0);
    for (let cut = 0; cut < end + 1024; cut += 509) {
      const r = walk(b.subarray(0, cut), 1000);
      expect(r.problem, `cut at ${cut}`).toMatch(cut === 0 ? /empty/ : /without the end-of-archive blocks/);
    }
  });

  it('fails at once on a damaged header or data after the end', () => {
    const b = Buffer.from(tarOf('gnu'));
    const damaged = Buffer.from(b);
    damaged[3] = damaged[3]! ^ 0xff;
    expect(() => walk(damaged, 512)).toThrow(/checksum does not match/);
    expect(() => walk(Buffer.concat([b, Buffer.from('junk')]), 512)).toThrow(/data after the end-of-archive blocks/);
    expect(() => walk(Buffer.from('not a tar at all'.repeat(64)), 512)).toThrow(/not a tar stream/);
  });
});
