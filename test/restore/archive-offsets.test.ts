/**
 * Data offsets for piped custom-format archives (src/pg/archive-offsets.ts), against real
 * pg_dump output: a dump written to a pipe, patched, must carry exactly the offsets pg_dump
 * writes itself when its output is a file; anything the scanner cannot follow is left alone.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { childEnv, createDatabase, dataFingerprint, dropDatabase, pgFromInject, quoteIdent, uniqueDbName } from '../harness/pg.js';
import { baseEnv, pgEnv, runCoffer, writeIdentityFile } from '../harness/cli.js';
import { ArchiveOffsetScanner, patchArchiveOffsets, scanArchiveFile, type ArchiveLayout, type ScanResult } from '../../src/pg/archive-offsets.js';

const pgInfo = inject('pg')!;
const pg = pgFromInject(pgInfo);

let tmp: string;
let source: string;
/** pg_dump -Fc -Z0 db | cat > piped (no offsets) */
let piped: string;
/** pg_dump -Fc -Z0 -f seekable (offsets written by pg_dump) */
let seekable: string;

const pgBin = (tool: string): string => path.join(pgInfo.binDir, tool);
const sha = (file: string): string => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

function layoutOf(r: ScanResult): ArchiveLayout {
  if (!r.ok) throw new Error(`scan failed: ${r.reason}`);
  return r.layout;
}

/** Feeds a buffer to a fresh scanner in pieces of the sizes `sizes()` returns. */
function scanInPieces(data: Buffer, sizes: () => number): ScanResult {
  const s = new ArchiveOffsetScanner();
  for (let i = 0; i < data.length; ) {
    const n = Math.max(1, sizes());
    s.push(data.subarray(i, i + n));
    i += n;
  }
  return s.end();
}

async function copy(from: string, name: string): Promise<string> {
  const to = path.join(tmp, name);
  await fsp.copyFile(from, to);
  return to;
}

/** Patches a copy of `file` as coffer does (scan while streaming, then patch). */
async function patchedCopy(file: string, name: string): Promise<{ file: string; outcome: ReturnType<typeof patchArchiveOffsets> }> {
  const out = await copy(file, name);
  return { file: out, outcome: patchArchiveOffsets(out, scanArchiveFile(out)) };
}

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-offsets-test-'));
  // The varied fixture has large objects (a BLOBS block), an empty table and partitions;
  // a table of small rows gives many chunks per block (pg_dump -Z0 writes one per row).
  source = await createDatabase(pg, undefined, 'varied');
  await pg.psql('CREATE TABLE public.many_rows AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 30000) AS g;', source);
  // Values COPY text must escape: newlines, backslashes, a value that is pg_dump's end-of-data
  // line, tabs, carriage returns, bytes; and rows ending the data with what looks like its end.
  await pg.psql(
    String.raw`CREATE TABLE public.odd_values (id int, t text, b bytea);
     INSERT INTO public.odd_values VALUES (1, E'line one\nline two\n', '\x0a0a5c2e0a'), (2, E'\\.', NULL), (3, E'\\.\n\n\n', E'\\x5c2e'),
       (4, E'tab\there\r\n', ''), (5, '', NULL), (6, NULL, NULL), (7, E'\n', E'\\x0a');
     INSERT INTO public.odd_values SELECT g, repeat(E'x\n', g % 7), NULL FROM generate_series(8, 5000) g;
     CREATE TABLE public.ends_odd (t text); INSERT INTO public.ends_odd VALUES (E'\\.');`,
    source,
  );
  piped = path.join(tmp, 'piped.dump');
  seekable = path.join(tmp, 'seekable.dump');
  const env = childEnv(pg);
  await execa('bash', ['-c', 'set -o pipefail; "$1" -Fc -Z0 -d "$2" | cat > "$3"', 'x', pgBin('pg_dump'), source, piped], { env, extendEnv: false });
  await execa(pgBin('pg_dump'), ['-Fc', '-Z0', '-d', source, '-f', seekable], { env, extendEnv: false });
});

afterAll(async () => {
  if (source) await dropDatabase(pg, source);
  await fsp.rm(tmp, { recursive: true, force: true });
});

describe('archive data offsets', () => {
  it('a piped dump has no offsets; pg_dump -f has them, for the same blocks at the same places', () => {
    const p = layoutOf(scanArchiveFile(piped));
    const s = layoutOf(scanArchiveFile(seekable));
    expect(p.version).toMatch(/^1\.1[4-6]$/);
    expect(p.size).toBe(s.size);
    expect(p.toc.some((e) => e.state === 2)).toBe(false);
    expect(p.blocks.size).toBeGreaterThan(10);
    expect([...p.blocks]).toEqual([...s.blocks]);
    // Every block pg_dump -f points at is where the scanner found it.
    const set = s.toc.filter((e) => e.state === 2);
    expect(set.length).toBe(s.blocks.size);
    for (const e of set) expect(s.blocks.get(e.dumpId)).toBe(e.offset);
  });

  it('patching a piped dump gives the TOC pg_dump writes to a seekable file', async () => {
    const { file, outcome } = await patchedCopy(piped, 'patched.dump');
    const blocks = layoutOf(scanArchiveFile(piped)).blocks.size;
    expect(outcome).toEqual({ patched: blocks });
    const after = layoutOf(scanArchiveFile(file));
    const ref = layoutOf(scanArchiveFile(seekable));
    expect(after.toc).toEqual(ref.toc);
    // Byte for byte the same as pg_dump's own file, but for the creation time in the header
    // (bytes 16–50: 7 ints after magic, version, sizes, format and the compression int).
    const a = await fsp.readFile(file);
    const b = await fsp.readFile(seekable);
    expect(a.subarray(0, 16).equals(b.subarray(0, 16))).toBe(true);
    expect(a.subarray(51).equals(b.subarray(51))).toBe(true);
    // pg_restore reads it the same, large objects and empty table included.
    const list = (f: string): Promise<string> => execa(pgBin('pg_restore'), ['-l', f]).then((r) => r.stdout.split('\n').filter((l) => !l.startsWith(';')).join('\n'));
    const l = await list(file);
    expect(l).toEqual(await list(seekable));
    expect(l).toMatch(/ BLOBS /);
    expect(l).toMatch(/TABLE DATA app empty_table/);
    // Patching again finds nothing to do and leaves the file alone.
    const before = sha(file);
    expect(patchArchiveOffsets(file, scanArchiveFile(file))).toEqual({ skipped: 'the archive already has data offsets' });
    expect(sha(file)).toBe(before);
  });

  it('pg_restore -j 2 of the patched file restores identical data', async () => {
    const { file } = await patchedCopy(piped, 'for-restore.dump');
    const target = uniqueDbName('offsets');
    await pg.psql(`CREATE DATABASE ${quoteIdent(target)};`);
    try {
      await execa(pgBin('pg_restore'), ['--exit-on-error', '-j', '2', '-d', target, file], { env: childEnv(pg), extendEnv: false });
      expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, source));
    } finally {
      await dropDatabase(pg, target);
    }
  });

  it('chunk boundaries do not matter: 1-byte pushes and odd sizes find the same blocks', () => {
    const data = fs.readFileSync(piped);
    const whole = layoutOf(scanInPieces(data, () => data.length));
    expect(layoutOf(scanInPieces(data, () => 1))).toEqual(whole);
    let seed = 7;
    const rand = (max: number) => () => (seed = (seed * 1103515245 + 12345) % 2147483648) % max;
    expect(layoutOf(scanInPieces(data, rand(11)))).toEqual(whole);
    expect(layoutOf(scanInPieces(data, rand(70000)))).toEqual(whole);
  });

  it('the rows of each table, counted in its COPY data as it streams by, are the server\'s count(*), in pieces of any size', async () => {
    const data = fs.readFileSync(piped);
    const whole = new ArchiveOffsetScanner({ countRows: true });
    whole.push(data);
    const layout = layoutOf(whole.end());
    const copies = whole.entries().filter((e) => e.desc === 'TABLE DATA');
    expect(copies.length).toBeGreaterThan(5);
    for (const e of copies) {
      const counted = layout.rows.get(e.dumpId);
      expect(counted, `${e.namespace}.${e.tag}`).toBeDefined();
      // The scanner's strings hold the archive's bytes (latin1); this archive's text is UTF-8.
      const utf8 = (x: string): string => Buffer.from(x, 'latin1').toString('utf8');
      expect(String(counted), `${e.namespace}.${e.tag}`).toBe(await pg.psql(`SELECT count(*) FROM ${quoteIdent(utf8(e.namespace))}.${quoteIdent(utf8(e.tag))}`, source));
    }
    expect(layout.rows.get(copies.find((e) => e.tag === 'odd_values')!.dumpId)).toBe(5000);
    expect(layout.rows.get(copies.find((e) => e.tag === 'ends_odd')!.dumpId)).toBe(1);
    expect(layout.rows.get(copies.find((e) => e.tag === 'empty_table')!.dumpId)).toBe(0);
    // The same entries, database entries, blocks and rows whatever the pieces (whole entries are
    // read at once when a piece holds them, field by field otherwise).
    let seed = 11;
    const rand = (max: number) => () => (seed = (seed * 1103515245 + 12345) % 2147483648) % max;
    for (const sizes of [() => 1, rand(7), rand(300), rand(5000), rand(70000)]) {
      const s = new ArchiveOffsetScanner({ countRows: true });
      for (let i = 0; i < data.length; ) {
        const n = Math.max(1, sizes());
        s.push(data.subarray(i, i + n));
        i += n;
      }
      expect(layoutOf(s.end())).toEqual(layout);
      expect(s.entries()).toEqual(whole.entries());
      expect(s.databaseEntries()).toEqual(whole.databaseEntries());
    }
    // Compressed data blocks and INSERT statements: no rows are counted (the server counts them).
    const env = childEnv(pg);
    for (const [name, args] of [
      ['gzip.dump', ['-Fc']],
      ['inserts.dump', ['-Fc', '-Z0', '--inserts', '--rows-per-insert=3']],
    ] as const) {
      const file = path.join(tmp, name);
      await execa(pgBin('pg_dump'), [...args, '-d', source, '-f', file], { env, extendEnv: false });
      const l = layoutOf(scanArchiveFile(file, { countRows: true }));
      expect(l.blocks.size, name).toBeGreaterThan(5);
      expect(l.rows.size, name).toBe(0);
    }
    // A backup's scanner (the archive index) does not count.
    expect(layoutOf(scanArchiveFile(piped)).rows.size).toBe(0);
  });

  it('truncated, garbage, plain-SQL and foreign inputs are left untouched', async () => {
    const data = await fsp.readFile(piped);
    const whole = layoutOf(scanArchiveFile(piped));
    const firstBlock = Math.min(...whole.blocks.values());
    const cases: Array<[string, Buffer]> = [
      ['empty', Buffer.alloc(0)],
      ['header only', data.subarray(0, 20)],
      ['inside the TOC', data.subarray(0, Math.floor(firstBlock / 2))],
      ['inside a block header', data.subarray(0, firstBlock + 3)],
      ['inside the data', data.subarray(0, Math.floor((firstBlock + data.length) / 2))],
      ['one byte short', data.subarray(0, data.length - 1)],
      ['one byte more', Buffer.concat([data, Buffer.from([1])])],
      ['garbage', Buffer.from(Array.from({ length: 100000 }, (_, i) => (i * 7919) % 251))],
      ['magic then garbage', Buffer.concat([Buffer.from('PGDMP'), Buffer.alloc(5000, 0xee)])],
      ['unknown archive version', Buffer.concat([data.subarray(0, 6), Buffer.from([99]), data.subarray(7)])],
      ['bad block type', Buffer.concat([data.subarray(0, firstBlock), Buffer.from([7]), data.subarray(firstBlock + 1)])],
    ];
    const plain = path.join(tmp, 'plain.sql');
    await execa(pgBin('pg_dump'), ['-Fp', '-d', source, '-f', plain], { env: childEnv(pg), extendEnv: false });
    cases.push(['plain SQL', await fsp.readFile(plain)]);
    for (const [name, bytes] of cases) {
      const file = path.join(tmp, `bad-${name.replace(/ /g, '-')}.dump`);
      await fsp.writeFile(file, bytes);
      const before = sha(file);
      const scan = scanArchiveFile(file);
      expect(scan.ok, name).toBe(false);
      expect(patchArchiveOffsets(file, scan), name).toHaveProperty('skipped');
      expect(sha(file), name).toBe(before);
    }
  });

  it('a file that is not what was scanned is left untouched', async () => {
    const scan = scanArchiveFile(piped);
    // Same size, different TOC bytes: an offset flag that is no longer "not set".
    const changed = await copy(piped, 'changed.dump');
    const field = layoutOf(scan).toc.find((e) => layoutOf(scan).blocks.has(e.dumpId))!.field;
    const fd = fs.openSync(changed, 'r+');
    fs.writeSync(fd, Buffer.from([3]), 0, 1, field);
    fs.closeSync(fd);
    const before = sha(changed);
    expect(patchArchiveOffsets(changed, scan)).toHaveProperty('skipped');
    expect(sha(changed)).toBe(before);
    // A different length.
    const longer = await copy(piped, 'longer.dump');
    await fsp.appendFile(longer, Buffer.from([0]));
    const longerSha = sha(longer);
    expect(patchArchiveOffsets(longer, scan)).toHaveProperty('skipped');
    expect(sha(longer)).toBe(longerSha);
  });

  it('archive versions 1.15 (pg_dump 16) and 1.16 (pg_dump 17+) are followed too', () => {
    // Rewrites the real 1.14 archive in the later layouts: 1.15 stores the compression as
    // one byte instead of an int; 1.16 adds an int (relkind) to each TOC entry after tableam.
    const data = fs.readFileSync(piped);
    const orig = layoutOf(scanArchiveFile(piped));
    for (const minor of [15, 16]) {
      const { bytes, shift } = relayout(data, minor);
      const scan = scanInPieces(bytes, () => 4093);
      const r = layoutOf(scan);
      expect(r.version).toBe(`1.${minor}`);
      expect([...r.blocks]).toEqual([...orig.blocks].map(([id, at]) => [id, at + shift]));
      const file = path.join(tmp, `v${minor}.dump`);
      fs.writeFileSync(file, bytes);
      expect(patchArchiveOffsets(file, scan)).toEqual({ patched: orig.blocks.size });
      const patched = layoutOf(scanArchiveFile(file));
      for (const [id, at] of r.blocks) expect(patched.toc.find((e) => e.dumpId === id)).toMatchObject({ state: 2, offset: at });
    }
  });

  it('coffer restore --jobs 2 adds the offsets to its spool and restores the same data', async () => {
    const { identityFile, recipient } = await writeIdentityFile(tmp, 'coffer-id.txt');
    const repo = path.join(tmp, 'repo');
    const env = baseEnv(pgEnv(pgInfo));
    const b = await runCoffer(['backup', '--to', repo, '--db', source, '--recipient', recipient], { env });
    expect(b.code, b.stderr).toBe(0);
    const target = `${source}_offsets_jobs`;
    const r = await runCoffer(['restore', '--from', repo, '--identity', identityFile, '--target-db', target, '--jobs', '2', '--spool-dir', path.join(tmp, 'spool')], { env });
    try {
      expect(r.code, r.stderr).toBe(0);
      const spooled = r.stderr
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { msg: string; dataOffsets?: number })
        .find((l) => l.msg === 'archive spooled');
      expect(spooled?.dataOffsets).toBe(layoutOf(scanArchiveFile(piped)).blocks.size);
      expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, source));
    } finally {
      await dropDatabase(pg, target);
    }
  });
});

/**
 * A 1.14 archive rewritten as archive version `minor` (15 or 16), read with an independent
 * whole-buffer reader. Returns the bytes and how far the data section moved.
 */
function relayout(src: Buffer, minor: number): { bytes: Buffer; shift: number } {
  let at = 0;
  const out: Buffer[] = [];
  const take = (n: number): Buffer => {
    const b = src.subarray(at, at + n);
    at += n;
    return b;
  };
  const int = (): { raw: Buffer; value: number } => {
    const raw = take(5);
    const v = raw.readUInt32LE(1);
    return { raw, value: raw[0] === 1 ? -v : v };
  };
  const str = (): Buffer => {
    const { raw, value } = int();
    return value < 0 ? raw : Buffer.concat([raw, take(value)]);
  };
  const head = take(11); // PGDMP, vmaj, vmin, vrev, intSize, offSize, format
  expect(head[6]).toBe(14);
  const newHead = Buffer.from(head);
  newHead[6] = minor;
  out.push(newHead);
  const level = int(); // 1.14: compression level as an int; 1.15+: algorithm as a byte
  out.push(Buffer.from([level.value === 0 ? 0 : 1]));
  for (let i = 0; i < 7; i++) out.push(int().raw);
  for (let i = 0; i < 3; i++) out.push(str());
  const count = int();
  out.push(count.raw);
  for (let e = 0; e < count.value; e++) {
    out.push(int().raw, int().raw); // dumpId, hadDumper
    for (let i = 0; i < 4; i++) out.push(str()); // tableoid, oid, tag, desc
    out.push(int().raw); // section
    for (let i = 0; i < 6; i++) out.push(str()); // defn, dropStmt, copyStmt, namespace, tablespace, tableam
    if (minor >= 16) out.push(Buffer.from([0, 0x72, 0, 0, 0])); // relkind 'r'
    for (let i = 0; i < 2; i++) out.push(str()); // owner, "false"
    for (;;) {
      const d = str();
      out.push(d);
      if (d.length === 5 && d[0] === 1) break; // NULL ends the dependencies
    }
    out.push(take(9)); // offset flag + 8 bytes
  }
  const headerAndToc = Buffer.concat(out);
  return { bytes: Buffer.concat([headerAndToc, src.subarray(at)]), shift: headerAndToc.length - at };
}
