/**
 * Ranged, index-backed selective restores, against real PostgreSQL, RGW (through a counting
 * proxy), age and pg_restore: a database with one large table (~160 MB of dump, incompressible)
 * between small ones, backed up once with its archive index (the default).
 *
 * - Restoring one small table downloads a few percent of the object, counted by coffer and,
 *   independently, by the proxy between coffer and RGW; the table equals the source's.
 * - Every byte a selective restore reads is authenticated: damage at positions swept across the
 *   ranges it reads fails it (exit 5, nothing created); damage elsewhere does not matter to it,
 *   and coffer verify reports it.
 * - The backup still reads with the standard tools: age -d | zstd -d | pg_restore.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { dataFingerprint, dropDatabase, fillLargeTable, listDatabases, type Fingerprint } from '../harness/pg.js';
import { errorLine, runCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { ArchiveOffsetScanner, hasDataBlock, scanArchiveFile } from '../../src/pg/archive-offsets.js';
import { DataBlockFinder } from '../../src/catalog/archive-index.js';
import { generateIdentity } from '../../src/crypto/age.js';
import { unionLength } from '../harness/spans.js';

const f = useFixture({ name: 'ranged', s3: true, db: 'empty' });
const pg = f.pg;

const CHUNK = 64 * 1024;
const SEALED = CHUNK + 16;

interface IndexJson {
  age: { headerLength: number };
  compressed: { bytes: number; frameBytes: number; frames: number[] };
  archive: { bytes: number; dataStart: number; blocks: Array<[number, number]> };
}

let s3Repo: string;
let fileRepo: string;
let s3Manifest: BackupManifest;
let fileManifest: BackupManifest;
let source: Fingerprint;
let index: IndexJson;
let dumpFile: string;

interface Summary {
  storedBytes: number;
  selection: { tables: string[]; download: { bytes: number; of: number; requests: number; indexBytes: number; transferred: number } | 'whole' };
}

function restore(target: string, args: string[], repo: string, env = f.env()) {
  return runCoffer(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target, '--json', ...args], { env });
}

async function leftovers(target: string): Promise<string[]> {
  return (await listDatabases(pg)).filter((d) => d === target || d.startsWith(`${target}__`));
}

/** The dump id of a table's data (TABLE DATA entry) from `pg_restore -l` of the plain archive. */
function dataId(table: string): number {
  const list = execFileSync(path.join(pg.binDir, 'pg_restore'), ['-l', dumpFile], { encoding: 'utf8' });
  const line = list.split('\n').find((l) => new RegExp(`^\\d+; \\d+ \\d+ TABLE DATA public ${table} `).test(l));
  if (!line) throw new Error(`no TABLE DATA for ${table}`);
  return Number(line.split(';')[0]);
}

/** The object bytes a restore of the block `id` must read: its frames' chunks. */
function objectRangeOf(id: number): [number, number] {
  const blocks = index.archive.blocks;
  const i = blocks.findIndex((b) => b[0] === id);
  const start = blocks[i]![1];
  const end = i + 1 < blocks.length ? blocks[i + 1]![1] : index.archive.bytes;
  return framesToObject(Math.floor(start / index.compressed.frameBytes), Math.floor((end - 1) / index.compressed.frameBytes));
}

function framesToObject(f0: number, f1: number): [number, number] {
  const c = index.compressed;
  const cs = c.frames[f0]!;
  const ce = f1 + 1 < c.frames.length ? c.frames[f1 + 1]! : c.bytes;
  const payload = index.age.headerLength + 16;
  return [payload + Math.floor(cs / CHUNK) * SEALED, Math.min(payload + (Math.floor((ce - 1) / CHUNK) + 1) * SEALED, fileManifest.dump.size)];
}


async function flipByte(file: string, at: number): Promise<() => Promise<void>> {
  const fh = await fsp.open(file, 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, at);
  const orig = b[0]!;
  b[0] = orig ^ 0x5a;
  await fh.write(b, 0, 1, at);
  await fh.close();
  return async () => {
    const h = await fsp.open(file, 'r+');
    await h.write(Buffer.from([orig]), 0, 1, at);
    await h.close();
  };
}

beforeAll(async () => {
  // Data blocks in this order: a_small, large_fill (160 MB of hex in the dump), z_small, then the large objects.
  await pg.psql(
    `CREATE TABLE a_small (id int PRIMARY KEY, v text);
     INSERT INTO a_small SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
     CREATE TABLE z_small (id int PRIMARY KEY, v text, at date);
     INSERT INTO z_small SELECT g, repeat(md5(g::text), 3), DATE '2026-01-01' + g % 300 FROM generate_series(1, 5000) g;
     -- A large object of binary bytes, zeros and the start of a block mark among them.
     SELECT lo_from_bytea(0, decode(repeat('00', 70000) || '0100000000' || repeat('00', 70000), 'hex'));`,
    f.db,
  );
  await fillLargeTable(pg, f.db, 80);
  source = await dataFingerprint(pg, f.db);
  s3Repo = f.repo('ranged');
  fileRepo = f.path('repo');
  s3Manifest = await f.backup(s3Repo, f.db);
  fileManifest = await f.backup(fileRepo, f.db);
  const indexFile = path.join(fileRepo, fileManifest.index!.key);
  index = JSON.parse(execFileSync('age', ['-d', '-i', f.identityFile, indexFile], { encoding: 'utf8' })) as IndexJson;
  // The plain archive, by the standard tools (pg_restore -l names the dump ids).
  dumpFile = f.path('plain.dump');
  const r = spawnSync('sh', ['-c', `age -d -i "$1" "$2" | zstd -d -q -c > "$3"`, 'sh', f.identityFile, path.join(fileRepo, fileManifest.dump.key), dumpFile]);
  expect(r.status, r.stderr.toString()).toBe(0);
}, 300_000);

describe('ranged selective restore', () => {
  it('the backup has an archive index (encrypted beside the dump) that maps every data block; age -d | zstd -d | pg_restore reads it whole', async () => {
    for (const m of [s3Manifest, fileManifest]) {
      expect(m.index?.key).toMatch(/\.index\.json\.age$/);
      expect(m.warnings ?? []).toEqual([]);
    }
    expect(index.archive.bytes).toBe(fileManifest.dump.dumpBytes);
    expect(index.compressed.frames.length).toBeGreaterThan(40);
    expect(index.archive.blocks.length).toBe(4); // three tables and the large objects
    // The blocks the backup found without walking rows are where a walk of every chunk finds them.
    const scanned = scanArchiveFile(dumpFile);
    if (!scanned.ok) throw new Error(scanned.reason);
    expect(index.archive.blocks).toEqual([...scanned.layout.blocks.entries()].sort((a, b) => a[1] - b[1]));
    expect(index.archive.dataStart).toBe(index.archive.blocks[0]![1]);
    // The finder alone, fed the archive in pieces of any size (one byte at a time around every block start).
    const bytes = await fsp.readFile(dumpFile);
    const toc = new ArchiveOffsetScanner();
    toc.push(bytes.subarray(0, index.archive.dataStart + 1));
    const expected = toc.entries().filter(hasDataBlock).map((e) => ({ dumpId: e.dumpId, blobs: e.desc === 'BLOBS' }));
    let seed = 3;
    for (let trial = 0; trial < 12; trial++) {
      const finder = new DataBlockFinder(expected, index.archive.dataStart);
      for (let off = index.archive.dataStart; off < bytes.length; ) {
        seed = (seed * 48271) % 2147483647;
        const near = index.archive.blocks.some(([, b]) => off >= b - 12 && off < b + 8);
        const n = near ? 1 : 1 + (seed % (trial < 6 ? 70_000 : 3_000_000));
        finder.push(bytes.subarray(off, Math.min(bytes.length, off + n)));
        off += n;
      }
      expect(finder.blocks(), `trial ${trial}`).toEqual(index.archive.blocks);
    }
    // The standard tools: the whole database back.
    const plain = f.dropAtEnd(`${f.db}_plain`);
    await pg.psql(`CREATE DATABASE ${plain};`);
    const r = spawnSync(path.join(pg.binDir, 'pg_restore'), ['--no-owner', '-d', plain, dumpFile], { env: { ...process.env, ...pg.env() } });
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(await dataFingerprint(pg, plain)).toEqual(source);
    await dropDatabase(pg, plain);
  });

  it('one small table (S3, through a counting proxy): a few percent of the object, the same count at the client and at the proxy; the table equals the source', async () => {
    const proxy = await f.faultProxy();
    for (const table of ['z_small', 'a_small']) {
      const before = proxy.events.length;
      const target = f.dropAtEnd(`${f.db}_${table}`);
      const r = await restore(target, ['--table', table], s3Repo, f.env({}, proxy.endpoint));
      expect(r.code, r.stderr).toBe(0);
      const s = JSON.parse(r.stdout) as Summary;
      expect(s.selection.tables).toEqual([`public.${table}`]);
      const d = s.selection.download;
      if (d === 'whole') throw new Error('downloaded whole');
      // The backup's objects (the manifests were read to find the backup, as for any restore).
      const gets = proxy.events.slice(before).filter((e) => e.op === 'GetObject' && (e.path.endsWith(s3Manifest.dump.key) || e.path.endsWith(s3Manifest.index!.key)));
      // Every byte received (overlapping reads included) at both ends; the download is the distinct bytes of the dump object.
      const proxied = gets.reduce((n, e) => n + e.responseBytes, 0);
      expect(proxied).toBe(d.transferred);
      const spans = gets.filter((e) => e.path.endsWith(s3Manifest.dump.key)).map((e): [number, number] => {
        const start = Number(/^bytes=(\d+)-/.exec(e.range ?? '')?.[1] ?? 0);
        return [start, start + e.responseBytes];
      });
      expect(d.bytes).toBe(unionLength(spans));
      expect(d.indexBytes).toBe(s3Manifest.index!.size);
      expect(s.storedBytes).toBe(s3Manifest.dump.size);
      // Every read of the dump object is ranged; together they are at most 5 % of it.
      const dumpGets = gets.filter((e) => e.path.endsWith(s3Manifest.dump.key));
      expect(dumpGets.length).toBeGreaterThan(0);
      expect(dumpGets.every((e) => /^bytes=\d+-\d+$/.test(e.range ?? ''))).toBe(true);
      expect(d.bytes / s3Manifest.dump.size).toBeLessThanOrEqual(0.05);
      expect(await dataFingerprint(pg, target)).toEqual({ [`public.${table}`]: source[`public.${table}`] });
      await dropDatabase(pg, target);
    }
  });

  it('damage inside the ranges a restore reads fails it (exit 5, nothing created), swept over header, table of contents and the table\'s frames', async () => {
    const file = path.join(fileRepo, fileManifest.dump.key);
    const [zs, ze] = objectRangeOf(dataId('z_small'));
    const [ts, te] = framesToObject(0, Math.floor((index.archive.dataStart - 1) / index.compressed.frameBytes));
    const h = index.age.headerLength;
    const positions: Array<[string, number]> = [
      ['a recipient stanza', 30],
      ['the header MAC', h - 10],
      ['the payload nonce', h + 3],
      ['the first chunk (archive header, TOC)', ts + 100],
      ['the last chunk of the TOC frames', te - 1],
      ["the first chunk of z_small's frames", zs],
      ["the middle of z_small's frames", Math.floor((zs + ze) / 2)],
      [`the last byte of z_small's frames${ze === fileManifest.dump.size ? " (the object's final chunk)" : ''}`, ze - 1],
    ];
    for (const [what, at] of positions) {
      const undo = await flipByte(file, at);
      const target = `${f.db}_dmg`;
      try {
        const r = await restore(target, ['--table', 'z_small'], fileRepo);
        expect(r.code, `${what} (byte ${at}): ${r.stderr}`).toBe(5);
        expect(errorLine(r.stderr), what).toMatch(/authentication failed|modified or corrupted|damaged|header|no identity matches/);
        expect(await leftovers(target), what).toEqual([]);
      } finally {
        await undo();
      }
    }
  });

  it('damage outside them does not matter to a selective restore; coffer verify reports it', async () => {
    const file = path.join(fileRepo, fileManifest.dump.key);
    const [zs] = objectRangeOf(dataId('z_small'));
    const [, te] = framesToObject(0, Math.floor((index.archive.dataStart - 1) / index.compressed.frameBytes));
    // Spread over the large table's frames that neither read needs (a fixed-seed sweep).
    let seed = 7;
    const positions = [te + 1, zs - 1];
    for (let i = 0; i < 3; i++) {
      seed = (seed * 48271) % 2147483647;
      positions.push(te + 1 + (seed % (zs - te - 2)));
    }
    for (const at of positions) {
      const undo = await flipByte(file, at);
      try {
        const target = f.dropAtEnd(`${f.db}_out`);
        const r = await restore(target, ['--table', 'z_small'], fileRepo);
        expect(r.code, `byte ${at}: ${r.stderr}`).toBe(0);
        expect(await dataFingerprint(pg, target)).toEqual({ 'public.z_small': source['public.z_small'] });
        await dropDatabase(pg, target);
        if (at === positions[2]) {
          const v = await f.run(['verify', '--from', fileRepo, '--identity', f.identityFile, '--backup', fileManifest.id]);
          expect(v.code, v.stderr).toBe(5);
        }
      } finally {
        await undo();
      }
    }
  });

  it('a damaged index is not trusted: the restore says so and downloads the whole backup; --download-whole and --no-index backups do too', async () => {
    const indexFile = path.join(fileRepo, fileManifest.index!.key);
    const undo = await flipByte(indexFile, 200);
    try {
      const target = f.dropAtEnd(`${f.db}_idx`);
      const r = await restore(target, ['--table', 'a_small'], fileRepo);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/archive index of backup .* does not match its manifest.*reads the whole backup instead/);
      expect((JSON.parse(r.stdout) as Summary).selection.download).toBe('whole');
      await dropDatabase(pg, target);
    } finally {
      await undo();
    }
    // verify reads the whole backup and checks the index against it: intact, then damaged.
    const ok = await f.run(['verify', '--from', fileRepo, '--identity', f.identityFile, '--backup', fileManifest.id, '--json']);
    expect(ok.code, ok.stderr).toBe(0);
    expect((JSON.parse(ok.stdout) as Array<{ index: string }>)[0]!.index).toBe('matches');
    const undo2 = await flipByte(indexFile, 100);
    try {
      const v = await f.run(['verify', '--from', fileRepo, '--identity', f.identityFile, '--backup', fileManifest.id]);
      expect(v.code, v.stderr).toBe(5);
      expect(errorLine(v.stderr)).toMatch(/archive index of backup .* does not match its manifest/);
    } finally {
      await undo2();
    }
    const whole = f.dropAtEnd(`${f.db}_whole`);
    const w = await restore(whole, ['--table', 'a_small', '--download-whole'], fileRepo);
    expect(w.code, w.stderr).toBe(0);
    expect((JSON.parse(w.stdout) as Summary).selection.download).toBe('whole');
    expect(await dataFingerprint(pg, whole)).toEqual({ 'public.a_small': source['public.a_small'] });
    await dropDatabase(pg, whole);

    const small = f.path('noindex');
    const db = await f.database({ prefix: 'noidx' });
    await pg.psql('CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);', db);
    const m = await f.backup(small, db, ['--no-index']);
    expect(m.index).toBeUndefined();
    expect((await fsp.readdir(path.dirname(path.join(small, m.dump.key)))).some((n) => n.includes('.index.'))).toBe(false);
    const target = f.dropAtEnd(`${db}_r`);
    const r = await restore(target, ['--table', 't'], small);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as Summary).selection.download).toBe('whole');
    expect(await pg.psql('SELECT count(*) FROM t;', target)).toBe('2');

    // An age header longer than the first ranged read (220 recipients, ~22 KB): read again, longer.
    const recipients = [f.recipient];
    for (let i = 1; i < 220; i++) recipients.push((await generateIdentity()).recipient);
    const file = f.path('many-recipients.txt');
    await fsp.writeFile(file, `${recipients.join('\n')}\n`);
    const many = f.path('many');
    const b = await f.run(['backup', '--to', many, '--db', db, '--recipients-file', file, '--json']);
    expect(b.code, b.stderr).toBe(0);
    const mm = (JSON.parse(b.stdout) as BackupManifest[])[0]!;
    const header = (await fsp.readFile(path.join(many, mm.dump.key))).indexOf('\n---');
    expect(header).toBeGreaterThan(16 * 1024);
    const target2 = f.dropAtEnd(`${db}_m`);
    const r2 = await restore(target2, ['--table', 't'], many);
    expect(r2.code, r2.stderr).toBe(0);
    expect((JSON.parse(r2.stdout) as Summary).selection.download).not.toBe('whole');
    expect(await pg.psql('SELECT count(*) FROM t;', target2)).toBe('2');
  });
});
