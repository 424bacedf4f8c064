/**
 * Issue 20: a backup that stored nothing must never succeed, and verify/restore/drill must
 * prove a backup is whole.
 *
 * - Quick producers (a wrapper that prints a ready dump at once, a tiny database with 101
 *   recipients, children that all exit before coffer reads them): every backup either holds
 *   the whole dump (restored: every table and row) or fails with nothing listed.
 * - Producers whose output is not a dump (nothing, or not a custom archive) fail before the
 *   manifest, exit non-zero, nothing listed.
 * - Empty plaintexts, custom archives truncated anywhere (inside the header, the TOC, a data
 *   block, exactly at a block boundary) and manifests that disagree with their object: verify,
 *   restore and drill exit 5 and restore nothing.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { generateIdentity } from '../../src/crypto/age.js';
import { scanArchiveFile } from '../../src/pg/archive-offsets.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { drillNames, errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { createDatabase, dataFingerprint, databaseExists, dropDatabase, listDatabases, uniqueDbName } from '../harness/pg.js';

/** The procedure's reference database (f.db): vault_status and friends (small: a quick pg_dump). */
const f = useFixture({ name: 'complete', db: { fixture: 'vault', prefix: 'vault_c' } });
const pg = f.pg;
let readyDump: string;
let fastWrapper: string;


beforeAll(async () => {
  // A wrapper like `docker compose exec -T db pg_dump` for a small database: the dump is
  // ready at once (here: printed from a file), and pg_dump's exit follows immediately.
  readyDump = f.path('ready.dump');
  const d = await execa(path.join(pg.binDir, 'pg_dump'), ['-Fc', '-Z0', '-f', readyDump, '-d', f.db], { env: f.env(), extendEnv: false });
  expect(d.exitCode).toBe(0);
  fastWrapper = await script('fast-pg_dump.sh', `if [ "$1" = "--version" ]; then exec '${pg.binDir}/pg_dump' --version; fi\nexec cat '${readyDump}'\n`);
});

async function script(name: string, body: string): Promise<string> {
  const file = f.path(name);
  await fsp.writeFile(file, `#!/bin/sh\n${body}`, { mode: 0o755 });
  return file;
}

/** A --pg-bin directory: links to the real client programs, and a pg_dump script running `body` (its `--version` is the real one's). */
async function pgBinWith(name: string, body: string): Promise<string> {
  const dir = f.path(name);
  await fsp.mkdir(dir, { recursive: true });
  for (const prog of await fsp.readdir(pg.binDir)) if (prog !== 'pg_dump') await fsp.symlink(path.join(pg.binDir, prog), path.join(dir, prog));
  await fsp.writeFile(path.join(dir, 'pg_dump'), `#!/bin/sh\nif [ "$1" = "--version" ]; then exec '${pg.binDir}/pg_dump' --version; fi\n${body}\n`, { mode: 0o755 });
  return dir;
}

async function listed(repo: string): Promise<string[]> {
  const r = await f.run(['list', '--from', repo, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as Array<{ id: string }>).map((x) => x.id);
}

/** Restores the repository's latest backup into a new database and compares it with `vault`. */
async function expectRestoresWhole(repo: string): Promise<void> {
  const target = uniqueDbName('vault_c_r');
  const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target, '--smoke', 'SELECT COUNT(*) FROM vault_status;']);
  expect(r.code, r.stderr).toBe(0);
  try {
    expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, f.db));
  } finally {
    await dropDatabase(pg, target);
  }
  const v = await f.run(['verify', '--from', repo, '--identity', f.identityFile, '--json']);
  expect(v.code, v.stderr).toBe(0);
  const [res] = JSON.parse(v.stdout) as Array<{ tables: number; archiveBytes: number }>;
  expect(res!.tables).toBeGreaterThan(0);
}

describe('quick producers store the whole dump, or fail', () => {
  // Once repeated five times to catch a race by chance (the children exit before coffer reads
  // them); the delayed-reader cases below now provoke that state every time, so this one run is
  // the real-timing control of the same wrapper.
  it('a wrapper that prints a ready dump at once (zstd)', async () => {
    const repo = f.path('fast');
    const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', fastWrapper, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const [m] = JSON.parse(r.stdout) as BackupManifest[];
    const size = (await fsp.stat(readyDump)).size;
    expect(m!.dump.dumpBytes).toBe(size);
    expect(m!.postgres.tables).toBeGreaterThan(0);
    await expectRestoresWhole(repo);
  });

  // The age header's size does not depend on the compressor: 101 stanzas once (zstd), and the
  // other two compressors through the same --recipients-file path with three recipients.
  it.each([
    [101, 'zstd:3'],
    [3, 'gzip:1'],
    [3, 'none'],
  ] as const)('%i recipients with the real pg_dump of a small database (more awaits before the stream is read), --compress %s', async (n, compress) => {
    const recipients = [f.recipient];
    for (let i = 1; i < n; i++) recipients.push((await generateIdentity()).recipient);
    const file = f.path(`r${n}-${compress.replace(':', '')}.txt`);
    await fsp.writeFile(file, `${recipients.join('\n')}\n`);
    {
      const repo = f.path(`r${n}-${compress.replace(':', '')}`);
      const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipients-file', file, '--compress', compress]);
      expect(r.code, r.stderr).toBe(0);
      await expectRestoresWhole(repo);
      // The Debian age CLI reads it too (one of the stanzas is ours).
      const obj = (await fsp.readdir(path.join(repo, f.db), { recursive: true })).find((n) => String(n).endsWith('.age'))!;
      const out = await execa('age', ['-d', '-i', f.identityFile, path.join(repo, f.db, String(obj))], { encoding: 'buffer', stripFinalNewline: false });
      expect(out.stdout.length).toBeGreaterThan(1000);
    }
  });

  it.each([
    ['a wrapper', 'zstd:1'],
    ['pg_dump', 'zstd:1'],
    ['a wrapper', 'none'],
  ] as const)('every child exits before its output is read (a delayed reader): the output is kept (%s, %s)', async (which, compress) => {
    const pgDump = which === 'pg_dump' ? path.join(pg.binDir, 'pg_dump') : fastWrapper;
    {
      const repo = f.path(`delayed-${path.basename(pgDump)}-${compress.replace(':', '')}`);
      const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', pgDump, '--compress', compress], { COFFER_TEST_FAULTS: 'delay-reader-ms=1500' });
      expect(r.code, r.stderr).toBe(0);
      await expectRestoresWhole(repo);
    }
  });

  it('a compressor that finishes at once (a wrapper on PATH that compresses all before writing): zstd (--no-index) and pzstd (the index)', async () => {
    const bin = f.path('instant-zstd-bin');
    await fsp.mkdir(bin, { recursive: true });
    for (const prog of ['zstd', 'pzstd']) {
      const real = (await execa('sh', ['-c', `command -v ${prog}`])).stdout.trim();
      // Reads all input, compresses it into memory, then writes it in one go and exits.
      await fsp.writeFile(path.join(bin, prog), `#!/bin/bash\nout=$(mktemp)\n'${real}' "$@" > "$out"\nrc=$?\ncat "$out"\nrm -f "$out"\nexit $rc\n`, { mode: 0o755 });
    }
    for (const args of [['--no-index'], []]) {
      const repo = f.path(`instant-zstd${args.join('')}`);
      const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', fastWrapper, ...args], { PATH: `${bin}:${process.env.PATH}` });
      expect(r.code, r.stderr).toBe(0);
      await expectRestoresWhole(repo);
    }
  });
});

describe('a producer whose output is not a dump fails before the manifest', () => {
  const cases: Array<[string, string, string[], RegExp]> = [
    ['prints nothing and exits 0', 'exit 0', [], /pg_dump wrote nothing|zstd wrote nothing/],
    ['prints nothing and exits 0 (no compression)', 'exit 0', ['--compress', 'none'], /pg_dump wrote nothing/],
    ['prints text instead of a custom archive', 'echo "Error: No such container: db"; exit 0', [], /not "PGDMP"/],
    ['prints text instead of a custom archive (gzip)', 'echo "the input device is not a TTY"; exit 0', ['--compress', 'gzip:1'], /not "PGDMP"/],
  ];
  it.each(cases)('a wrapper that %s: exit 5, nothing listed', async (name, body, extra, cause) => {
    const wrapper = await script(`bad-${name.replace(/\W+/g, '-')}.sh`, `if [ "$1" = "--version" ]; then exec '${pg.binDir}/pg_dump' --version; fi\n${body}\n`);
    const repo = f.path(`bad-${name.replace(/\W+/g, '-')}`);
    const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', wrapper, ...extra]);
    expect(r.code, r.stderr).toBe(5);
    expect(errorLine(r.stderr)).toMatch(cause);
    expect(errorLine(r.stderr)).toMatch(/nothing was stored/);
    expect(await listed(repo)).toEqual([]);
    // Nothing that looks like a backup either: no manifest, no dump object.
    const files = await fsp.readdir(repo, { recursive: true }).catch(() => []);
    expect(files.filter((f) => /\.(age|json)$/.test(String(f)))).toEqual([]);
  });
});

describe('a wrapper that cuts the dump short and still exits 0: the backup fails, nothing listed', () => {
  // `docker compose exec -T` has been known to lose the end of a command's output. The dump
  // then starts well (PGDMP, a table of contents) and the wrapper exits 0: only reading the
  // whole archive back tells. Cut points: inside the TOC, at its end, at block boundaries (the
  // TOC announces data that never comes), inside data, one byte short.
  it('custom archives cut anywhere, with zstd, gzip and no compression', async () => {
    const archive = await fsp.readFile(readyDump);
    const scan = scanArchiveFile(readyDump);
    if (!scan.ok) throw new Error(scan.reason);
    const blocks = [...scan.layout.blocks.values()].sort((a, b) => a - b);
    const tocEnd = blocks[0]!;
    const cuts = [Math.floor(tocEnd / 2), tocEnd, blocks[1]!, blocks[blocks.length - 1]!, blocks[blocks.length - 1]! + 7, Math.floor((tocEnd + archive.length) / 2), archive.length - 1];
    const modes: string[][] = [[], ['--compress', 'none'], ['--compress', 'gzip:1']];
    const runs: Array<{ cut: number; wrapper: string; extra: string[] }> = [];
    for (const cut of new Set(cuts)) {
      const wrapper = await script(`cut-${cut}.sh`, `if [ "$1" = "--version" ]; then exec '${pg.binDir}/pg_dump' --version; fi\nexec head -c ${cut} '${readyDump}'\n`);
      // zstd (the default) at every cut; the other two where the TOC ends and at the last block.
      for (const extra of cut === tocEnd || cut === blocks[blocks.length - 1] ? modes : [modes[0]!]) runs.push({ cut, wrapper, extra });
    }
    // One after another: run a few at once, the loop took as long (the runs are CPU-bound).
    for (const { cut, wrapper, extra } of runs) {
      const repo = f.path(`cut-${cut}-${extra.join('')}`);
      const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', wrapper, ...extra]);
      const what = `cut at ${cut} of ${archive.length} ${extra.join(' ')}: ${r.stderr.slice(-600)}`;
      expect(r.code, what).toBe(5);
      expect(errorLine(r.stderr), what).toMatch(/not a whole dump.*nothing was stored/);
      expect(await listed(repo), what).toEqual([]);
    }
    // Control: the whole archive through the same wrapper is stored, and restores.
    const whole = await script('cut-none.sh', `if [ "$1" = "--version" ]; then exec '${pg.binDir}/pg_dump' --version; fi\nexec head -c ${archive.length} '${readyDump}'\n`);
    const repo = f.path('cut-whole');
    const ok = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', whole]);
    expect(ok.code, ok.stderr).toBe(0);
    expect((await listed(repo)).length).toBe(1);
  });

  // The same wrapper put in a --pg-bin directory in pg_dump's place (a `docker compose exec`
  // script beside links to the real programs): coffer is not told it is a wrapper. The default
  // (indexed) pipeline walks every archive whole; --no-index and plain SQL read a script's output
  // back whole.
  it('the same cuts through a script in --pg-bin (no --pg-dump-command): default, --no-index, no compression, and SQL', async () => {
    const archive = await fsp.readFile(readyDump);
    const scan = scanArchiveFile(readyDump);
    if (!scan.ok) throw new Error(scan.reason);
    const blocks = [...scan.layout.blocks.values()].sort((a, b) => a - b);
    const tocEnd = blocks[0]!;
    const last = blocks[blocks.length - 1]!;
    const cuts = [10, Math.floor(tocEnd / 2), tocEnd, blocks[1]!, last, last + 7, Math.floor((tocEnd + archive.length) / 2), archive.length - 5, archive.length - 1];
    for (const cut of new Set(cuts)) {
      const bin = await pgBinWith(`cut-bin-${cut}`, `exec head -c ${cut} '${readyDump}'`);
      for (const extra of cut === tocEnd || cut === last ? [[], ['--no-index'], ['--compress', 'none']] : [[], ['--no-index']]) {
        const repo = f.path(`cut-bin-${cut}-${extra.join('')}`);
        const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-bin', bin, ...extra]);
        const what = `cut at ${cut} of ${archive.length} ${extra.join(' ')}: ${r.stderr.slice(-600)}`;
        expect(r.code, what).toBe(5);
        expect(errorLine(r.stderr), what).toMatch(/not a whole dump.*nothing was stored/);
        expect(await listed(repo), what).toEqual([]);
      }
    }
    const sql = f.path('schema-bin.sql');
    await execa(path.join(pg.binDir, 'pg_dump'), ['--schema-only', '-f', sql, '-d', f.db], { env: f.env(), extendEnv: false });
    const text = await fsp.readFile(sql);
    const sqlCut = text.indexOf(Buffer.from('-- PostgreSQL database dump complete')) - 5;
    const sqlBin = await pgBinWith('cut-bin-sql', `exec head -c ${sqlCut} '${sql}'`);
    const sqlRepo = f.path('cut-bin-sql');
    const r = await f.run(['backup', '--to', sqlRepo, '--db', f.db, '--recipient', f.recipient, '--schema-only', '--pg-bin', sqlBin]);
    expect(r.code, r.stderr).toBe(5);
    expect(errorLine(r.stderr)).toMatch(/closing line.*nothing was stored/);
    expect(await listed(sqlRepo)).toEqual([]);
    // Control: a script that passes pg_dump's whole output on, in every mode, is stored and restores.
    const faithful = await pgBinWith('faithful-bin', `exec '${pg.binDir}/pg_dump' "$@"`);
    for (const extra of [[], ['--no-index'], ['--schema-only']]) {
      const repo = f.path(`faithful-bin${extra.join('')}`);
      const ok = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-bin', faithful, ...extra]);
      expect(ok.code, ok.stderr).toBe(0);
      expect((await listed(repo)).length).toBe(1);
      if (extra.length === 0 || extra[0] === '--no-index') await expectRestoresWhole(repo);
    }
  });

  it('plain SQL (schema-only) without pg_dump\'s closing line', async () => {
    const sql = f.path('schema.sql');
    await execa(path.join(pg.binDir, 'pg_dump'), ['--schema-only', '-f', sql, '-d', f.db], { env: f.env(), extendEnv: false });
    const text = await fsp.readFile(sql);
    const cut = text.indexOf(Buffer.from('-- PostgreSQL database dump complete')) - 5;
    expect(cut).toBeGreaterThan(0);
    for (const extra of [[], ['--compress', 'none']]) {
      const wrapper = await script('cut-sql.sh', `if [ "$1" = "--version" ]; then exec '${pg.binDir}/pg_dump' --version; fi\nexec head -c ${cut} '${sql}'\n`);
      const repo = f.path(`cut-sql${extra.join('')}`);
      const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--schema-only', '--pg-dump-command', wrapper, ...extra]);
      expect(r.code, r.stderr).toBe(5);
      expect(errorLine(r.stderr)).toMatch(/closing line.*nothing was stored/);
      expect(await listed(repo)).toEqual([]);
    }
  });
});

describe('verify, restore and drill prove the archive is whole', () => {
  let archive: Buffer;
  let blockStarts: number[];
  let tocEnd: number;

  beforeAll(async () => {
    archive = await fsp.readFile(readyDump);
    const scan = scanArchiveFile(readyDump);
    if (!scan.ok) throw new Error(scan.reason);
    blockStarts = [...scan.layout.blocks.values()].sort((a, b) => a - b);
    tocEnd = blockStarts[0]!;
    expect(blockStarts.length).toBeGreaterThan(2);
  });

  async function encrypted(name: string, plaintext: Buffer): Promise<string> {
    const plain = f.path(`${name}.plain`);
    await fsp.writeFile(plain, plaintext);
    const out = f.path(`${name}.age`);
    await execa('age', ['-r', f.recipient, '-o', out, plain]);
    return out;
  }

  /** restore --file and verify --file both exit 5 with `cause`, and nothing is restored. */
  async function expectRejected(file: string, cause: RegExp): Promise<void> {
    const v = await f.run(['verify', '--file', file, '--identity', f.identityFile]);
    expect(v.code, v.stderr).toBe(5);
    expect(errorLine(v.stderr)).toMatch(cause);
    const target = uniqueDbName('whole_r');
    const r = await f.run(['restore', '--file', file, '--identity', f.identityFile, '--target-db', target]);
    expect(r.code, r.stderr).toBe(5);
    expect(errorLine(r.stderr)).toMatch(cause);
    expect(await databaseExists(pg, target)).toBe(false);
    expect((await listDatabases(pg)).filter((d) => d.startsWith(target))).toEqual([]);
  }

  it('an empty plaintext', async () => {
    await expectRejected(await encrypted('empty', Buffer.alloc(0)), /holds no data/);
  });

  it('zstd of an empty plaintext', async () => {
    const z = await execa('zstd', ['-c', '-q'], { input: '', encoding: 'buffer' });
    await expectRejected(await encrypted('empty-zst', Buffer.from(z.stdout)), /holds no data/);
  });

  it('a custom archive cut anywhere: header, TOC, inside data, at every block boundary', async () => {
    const cuts = new Set<number>([5, 20, Math.floor(tocEnd / 2), tocEnd, tocEnd + 1, archive.length - 1, archive.length - 5]);
    for (const b of blockStarts) {
      cuts.add(b); // exactly at a block boundary: the TOC announces data that never comes
      cuts.add(b + 3);
    }
    for (let k = 1; k < 10; k++) cuts.add(tocEnd + Math.floor(((archive.length - tocEnd) * k) / 10));
    cuts.delete(archive.length);
    for (const cut of [...cuts].filter((c) => c > 0 && c < archive.length).sort((a, b) => a - b)) {
      const file = await encrypted(`cut-${cut}`, archive.subarray(0, cut));
      const v = await f.run(['verify', '--file', file, '--identity', f.identityFile]);
      expect(v.code, `cut at ${cut} of ${archive.length}: ${v.stderr}`).toBe(5);
      const line = errorLine(v.stderr);
      expect(line, `cut at ${cut}`).toMatch(/truncated or damaged|holds no data/);
      // Said once ("the custom archive archive ends inside …" was).
      expect(line, `cut at ${cut}`).not.toMatch(/\b(\w+) \1\b/);
      if (cut > tocEnd && !blockStarts.includes(cut)) expect(line, `cut at ${cut}`).toMatch(/the custom archive ends inside a data block \(\d+ bytes\)/);
    }
    // And restore, at a few of them (each is a whole restore attempt).
    for (const cut of [tocEnd, blockStarts[blockStarts.length - 1]!, archive.length - 1]) {
      await expectRejected(await encrypted(`restore-cut-${cut}`, archive.subarray(0, cut)), /truncated or damaged/);
    }
  });

  it('the whole archive, as a control, verifies and restores', async () => {
    const file = await encrypted('whole', archive);
    const v = await f.run(['verify', '--file', file, '--identity', f.identityFile]);
    expect(v.code, v.stderr).toBe(0);
    const target = uniqueDbName('whole_ok');
    const r = await f.run(['restore', '--file', file, '--identity', f.identityFile, '--target-db', target]);
    expect(r.code, r.stderr).toBe(0);
    expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, f.db));
    await dropDatabase(pg, target);
  });

  /** verify, restore and drill of the repository's latest backup: each exit 5 with `cause`, nothing restored. */
  async function expectRejectedEverywhere(repo: string, cause: RegExp): Promise<void> {
    const v = await f.run(['verify', '--from', repo, '--identity', f.identityFile]);
    expect(v.code, v.stderr).toBe(5);
    expect(errorLine(v.stderr)).toMatch(cause);
    const target = uniqueDbName('rejected_r');
    const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target]);
    expect(r.code, r.stderr).toBe(5);
    expect(errorLine(r.stderr)).toMatch(cause);
    expect((await listDatabases(pg)).filter((d) => d.startsWith(target))).toEqual([]);
    const d = await f.run(['drill', '--from', repo, '--identity', f.identityFile]);
    expect(d.code, d.stderr).toBe(5);
    expect(JSON.parse(d.stdout)).toMatchObject({ ok: false });
    const drills = drillNames(d.stderr);
    expect((await listDatabases(pg)).filter((x) => drills.some((n) => x.startsWith(n)))).toEqual([]);
  }

  describe('a manifest that disagrees with its object', () => {
    let repo: string;
    let manifestFile: string;
    let original: BackupManifest;

    beforeAll(async () => {
      repo = f.path('disagree');
      const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--json']);
      expect(r.code, r.stderr).toBe(0);
      original = (JSON.parse(r.stdout) as BackupManifest[])[0]!;
      manifestFile = path.join(repo, original.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json'));
    });

    const edits: Array<[string, (m: BackupManifest) => void, RegExp]> = [
      ['dumpBytes one more', (m) => (m.dump.dumpBytes += 1), /manifest says pg_dump wrote/],
      ['dumpBytes one less', (m) => (m.dump.dumpBytes -= 1), /manifest says pg_dump wrote/],
      ['kind schema-only (plain SQL) for a custom archive', (m) => (m.kind = 'schema-only'), /manifest says plain SQL|says the backup is schema-only, but its dump object is a custom archive/],
    ];
    it.each(edits)('%s: verify, restore and drill exit 5, nothing restored', async (_name, edit, cause) => {
      const m = structuredClone(original);
      edit(m);
      await fsp.writeFile(manifestFile, `${JSON.stringify(m, null, 2)}\n`);
      try {
        await expectRejectedEverywhere(repo, cause);
        // Chosen by id (no catalog check of the kind): the archive check fires.
        const byId = await f.run(['verify', '--from', repo, '--backup', original.id, '--identity', f.identityFile]);
        expect(byId.code, byId.stderr).toBe(5);
        expect(errorLine(byId.stderr)).toMatch(/manifest says plain SQL|manifest says pg_dump wrote/);
      } finally {
        await fsp.writeFile(manifestFile, `${JSON.stringify(original, null, 2)}\n`);
      }
    });

    // The object itself replaced by a valid age file of a bad archive, and the manifest's size
    // and sha256 made to match it: only the archive check can tell.
    const bodies: Array<[string, () => Promise<Buffer>, RegExp]> = [
      ['an empty plaintext', async () => Buffer.alloc(0), /holds no data/],
      ['a custom archive truncated inside its data', async () => (await fsp.readFile(readyDump)).subarray(0, Math.floor((await fsp.stat(readyDump)).size * 0.7)), /truncated or damaged/],
      // A whole archive, but of another database (its header names it): not a backup of this one.
      ['a whole archive of the postgres database', async () => Buffer.from((await execa(path.join(pg.binDir, 'pg_dump'), ['-Fc', '-Z0', '-d', 'postgres'], { env: f.env(), extendEnv: false, encoding: 'buffer' })).stdout), /the archive is a dump of database "postgres", not of "vault_c/],
    ];
    it.each(bodies)('%s, with a manifest that matches the object: verify, restore and drill exit 5', async (name, body, cause) => {
      const dumpFile = path.join(repo, original.dump.key);
      const saved = await fsp.readFile(dumpFile);
      const plain = f.path(`body-${name.length}.plain`);
      await fsp.writeFile(plain, await body());
      const zst = await execa('zstd', ['-q', '-c', plain], { encoding: 'buffer' });
      await fsp.writeFile(`${plain}.zst`, zst.stdout);
      await execa('age', ['-r', f.recipient, '-o', dumpFile, `${plain}.zst`]);
      const obj = await fsp.readFile(dumpFile);
      const m = structuredClone(original);
      m.dump.size = obj.length;
      m.dump.sha256 = (await import('node:crypto')).createHash('sha256').update(obj).digest('hex');
      m.dump.dumpBytes = 0; // unknown: the size check must not be what fires
      await fsp.writeFile(manifestFile, `${JSON.stringify(m, null, 2)}\n`);
      try {
        await expectRejectedEverywhere(repo, cause);
      } finally {
        await fsp.writeFile(dumpFile, saved);
        await fsp.writeFile(manifestFile, `${JSON.stringify(original, null, 2)}\n`);
      }
    });

    it('a table count that differs from the archive\'s (a table created during the backup) is a note, not a failure', async () => {
      const m = structuredClone(original);
      m.postgres.tables = 7;
      await fsp.writeFile(manifestFile, `${JSON.stringify(m, null, 2)}\n`);
      try {
        const v = await f.run(['verify', '--from', repo, '--identity', f.identityFile, '--json']);
        expect(v.code, v.stderr).toBe(0);
        expect(JSON.parse(v.stdout)).toMatchObject([{ note: expect.stringMatching(/the database had 7 when the backup started/) }]);
      } finally {
        await fsp.writeFile(manifestFile, `${JSON.stringify(original, null, 2)}\n`);
      }
    });

    it('a wrapper that dumps another database (a whole archive, with no tables): the backup fails, default, --no-index and uncompressed; the control of the empty database is whole', async () => {
      const emptyRepo = f.path('no-tables');
      const emptyDump = f.path('no-tables.dump');
      const empty = await createDatabase(pg, uniqueDbName('vault_c_empty'), 'empty');
      try {
        await execa(path.join(pg.binDir, 'pg_dump'), ['-Fc', '-Z0', '-f', emptyDump, '-d', empty], { env: f.env(), extendEnv: false });
        // A wrapper that dumps another (empty) database: a complete archive, whose header names it.
        const wrong = await script('wrong-db.sh', `if [ "$1" = "--version" ]; then exec '${pg.binDir}/pg_dump' --version; fi\nexec cat '${emptyDump}'\n`);
        for (const extra of [[], ['--no-index'], ['--compress', 'none']]) {
          const repo = `${emptyRepo}${extra.join('')}`;
          const b = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', wrong, ...extra]);
          expect(b.code, b.stderr).toBe(5);
          expect(errorLine(b.stderr)).toMatch(new RegExp(`not a backup of the database: the archive is a dump of database "${empty}", not of "${f.db}"; nothing was stored`));
          expect(await listed(repo)).toEqual([]);
        }
        // The control: a backup of the empty database itself is whole, verifies and drills.
        const ctl = f.path('empty-db');
        expect((await f.run(['backup', '--to', ctl, '--db', empty, '--recipient', f.recipient])).code).toBe(0);
        const cv = await f.run(['verify', '--from', ctl, '--identity', f.identityFile, '--json']);
        expect(cv.code, cv.stderr).toBe(0);
        expect(JSON.parse(cv.stdout)).toMatchObject([{ tables: 0, note: null }]);
        const cd = await f.run(['drill', '--from', ctl, '--identity', f.identityFile]);
        expect(cd.code, cd.stderr).toBe(0);
      } finally {
        await dropDatabase(pg, empty);
      }
    });
  });
});
