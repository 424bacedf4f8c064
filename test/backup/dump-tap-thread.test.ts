/**
 * Issue 18: a large dump is carried from pg_dump to pzstd by a worker thread between real pipes
 * (src/pipeline/dump-tap-thread.ts), not by node's streams over socket pairs. The test point
 * `tap-thread-at=1` makes every backup here take that path (by default only databases of
 * 256 MiB and more do); a pg_dump wrapper records what its stdout is, to prove it.
 *
 * - the same archive index as node's streams, byte for byte where it does not depend on time;
 *   the backup restores whole and by table (a selective restore through that index);
 * - a dump cut short by a wrapper that exits 0, swept over seeded cut points: exit 5, nothing
 *   listed; a pg_dump killed at seeded points: the backup fails, nothing listed;
 * - a pzstd that stops reading half-way (EPIPE for the thread): the run fails with pzstd's
 *   reason and does not hang (pg_dump is drained);
 * - SIGTERM during a threaded backup: exit 143, nothing listed, no process or pipe left behind.
 */
import { createReadStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { decodeIndex } from '../../src/catalog/archive-index.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { openDecryptStream } from '../../src/crypto/age.js';
import { readIdentityFile } from '../../src/crypto/keys.js';
import { scanArchiveFile } from '../../src/pg/archive-offsets.js';
import { errorLine, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { dataFingerprint, dropDatabase, uniqueDbName } from '../harness/pg.js';
import { seededRandom } from '../reliability/common.js';

const f = useFixture({ name: 'tap-thread', db: { fixture: 'vault', prefix: 'vault_tt', fillMB: 8 } });
const pg = f.pg;
const THREAD = { COFFER_TEST_FAULTS: 'tap-thread-at=1' };
let readyDump: string;
let tmpdir: string;

beforeAll(async () => {
  readyDump = f.path('ready.dump');
  const d = await execa(path.join(pg.binDir, 'pg_dump'), ['-Fc', '-Z0', '-f', readyDump, '-d', f.db], { env: f.env(), extendEnv: false });
  expect(d.exitCode).toBe(0);
  tmpdir = f.path('tmp');
  await fsp.mkdir(tmpdir);
});

async function script(name: string, body: string): Promise<string> {
  const file = f.path(name);
  await fsp.writeFile(file, `#!/bin/bash\n${body}`, { mode: 0o755 });
  return file;
}

/** A pg_dump wrapper that records the kind of its stdout (fifo: the threaded path; socket: node's streams), then runs `body`. */
async function recordingWrapper(name: string, body: string): Promise<{ wrapper: string; kind: () => Promise<string> }> {
  const note = f.path(`${name}.stdout-kind`);
  const wrapper = await script(name, `if [ "$1" = "--version" ]; then exec '${pg.binDir}/pg_dump' --version; fi\nstat -L -c %F /proc/$$/fd/1 > '${note}'\n${body}\n`);
  return { wrapper, kind: async () => (await fsp.readFile(note, 'utf8')).trim() };
}

/** Waits until the wrapper runs (it noted its stdout), and some of the dump has flowed. */
async function dumpFlowing(rec: { kind: () => Promise<string> }): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (await rec.kind().catch(() => '')) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 700));
}

async function listed(repo: string): Promise<string[]> {
  const r = await f.run(['list', '--from', repo, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as Array<{ id: string }>).map((x) => x.id);
}

/** The decrypted archive index of a backup in a file repository. */
async function indexOf(repo: string, m: BackupManifest): Promise<ReturnType<typeof decodeIndex>> {
  const identities = await readIdentityFile(f.identityFile);
  const file = path.join(repo, m.index!.key);
  const { plaintext } = await openDecryptStream(createReadStream(file), identities);
  const chunks: Buffer[] = [];
  for await (const c of plaintext) chunks.push(c as Buffer);
  return decodeIndex(Buffer.concat(chunks), m.id, m.dump);
}

/**
 * Nothing of a run is left: no pipe directory in TMPDIR, no pg_dump of this database, no pzstd of
 * these runs. A pzstd is these runs' when its environment has their TMPDIR: other test files run
 * backups with pzstd at the same time.
 */
async function expectNothingLeft(): Promise<void> {
  expect(await fsp.readdir(tmpdir)).toEqual([]);
  const ps = await execa('ps', ['-eo', 'pid=,args='], { reject: false });
  const left: string[] = [];
  for (const line of ps.stdout.split('\n')) {
    const [, pid, args] = /^\s*(\d+)\s+(.*)$/.exec(line) ?? [];
    if (!pid || !args) continue;
    if (args.includes('pg_dump') && args.includes(f.db)) left.push(args);
    else if (args.startsWith('pzstd')) {
      const environ = await fsp.readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '');
      if (environ.split('\0').includes(`TMPDIR=${tmpdir}`)) left.push(args);
    }
  }
  expect(left).toEqual([]);
}

describe('the threaded dump tap', () => {
  it('SIGTERM while a wrapper\'s grandchild (which the teardown does not kill) still writes: coffer exits at once, and the grandchild stops', async () => {
    // The wrapper runs its writer in a subshell and waits: SIGTERM to the wrapper leaves the
    // subshell writing into the pipe. Without a way to stop, the thread would read it to its end.
    const marker = `tap-grandchild-${process.pid}`;
    const rec = await recordingWrapper('grandchild-pg_dump.sh', `( exec -a ${marker} bash -c 'while head -c 65536 "$0"; do sleep 0.02; done' '${readyDump}' )\nwait`);
    const repo = f.path('grandchild');
    const p = startCoffer(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', rec.wrapper], { env: f.env({ ...THREAD, TMPDIR: tmpdir }) });
    await dumpFlowing(rec);
    const t0 = Date.now();
    p.kill('SIGTERM');
    const r = await p;
    expect(r.exitCode, r.stderr as string).toBe(143);
    expect(Date.now() - t0).toBeLessThan(20_000);
    expect(await rec.kind()).toBe('fifo');
    expect(await listed(repo)).toEqual([]);
    // The grandchild's next write fails (EPIPE: the pipe has no reader left), and it ends.
    let left: string[] = [];
    for (let i = 0; i < 50; i++) {
      left = (await execa('ps', ['-eo', 'args'], { reject: false })).stdout.split('\n').filter((l) => l.includes(marker));
      if (left.length === 0) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(left).toEqual([]);
  });

  it('stores the same archive index as node streams; the backup restores whole and by table', async () => {
    const rec = await recordingWrapper('rec-pg_dump.sh', `exec '${pg.binDir}/pg_dump' "$@"`);
    const streams = f.path('streams');
    const threaded = f.path('threaded');
    const a = await f.run(['backup', '--to', streams, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', rec.wrapper, '--json'], { TMPDIR: tmpdir });
    expect(a.code, a.stderr).toBe(0);
    expect(await rec.kind()).toBe('socket');
    const b = await f.run(['backup', '--to', threaded, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', rec.wrapper, '--json'], { ...THREAD, TMPDIR: tmpdir });
    expect(b.code, b.stderr).toBe(0);
    expect(await rec.kind()).toBe('fifo');
    const [ma] = JSON.parse(a.stdout) as BackupManifest[];
    const [mb] = JSON.parse(b.stdout) as BackupManifest[];
    expect(mb!.index, 'the threaded backup has an archive index').toBeDefined();
    expect(mb!.dump.dumpBytes).toBe(ma!.dump.dumpBytes);
    const [ia, ib] = [await indexOf(streams, ma!), await indexOf(threaded, mb!)];
    expect(ib.archive).toEqual(ia.archive);
    expect(ib.compressed.frameBytes).toBe(ia.compressed.frameBytes);
    expect(ib.compressed.frames.length).toBe(ia.compressed.frames.length);
    // The index agrees with the archive pg_dump writes (data blocks where a full scan finds them).
    const scan = scanArchiveFile(readyDump);
    if (!scan.ok) throw new Error(scan.reason);
    expect(ib.archive.blocks.map(([id]) => id)).toEqual([...scan.layout.blocks.entries()].sort((x, y) => x[1] - y[1]).map(([id]) => id));
    await expectNothingLeft();

    const whole = uniqueDbName('vault_tt_w');
    const r = await f.run(['restore', '--from', threaded, '--identity', f.identityFile, '--target-db', whole, '--smoke', 'SELECT COUNT(*) FROM vault_status;']);
    expect(r.code, r.stderr).toBe(0);
    const one = uniqueDbName('vault_tt_t');
    const t = await f.run(['restore', '--from', threaded, '--identity', f.identityFile, '--target-db', one, '--table', 'vault_status']);
    expect(t.code, t.stderr).toBe(0);
    expect(t.stderr).toMatch(/selective restore: fetching the selected data/);
    try {
      expect(await dataFingerprint(pg, whole)).toEqual(await dataFingerprint(pg, f.db));
      expect(await pg.psql('SELECT count(*) FROM vault_status', one)).toBe(await pg.psql('SELECT count(*) FROM vault_status', f.db));
    } finally {
      await dropDatabase(pg, whole);
      await dropDatabase(pg, one);
    }
  });

  it('a dump cut short by a wrapper that exits 0 (seeded cut points): exit 5, nothing listed; the whole dump through the same path is stored', async () => {
    const size = (await fsp.stat(readyDump)).size;
    const scan = scanArchiveFile(readyDump);
    if (!scan.ok) throw new Error(scan.reason);
    const blocks = [...scan.layout.blocks.values()].sort((a, b) => a - b);
    const rnd = seededRandom('tap-thread cuts');
    const cuts = new Set([blocks[0]!, blocks[blocks.length - 1]!, size - 1]);
    while (cuts.size < 6) cuts.add(1 + Math.floor(rnd.next() * (size - 2)));
    for (const cut of cuts) {
      const rec = await recordingWrapper(`cut-${cut}.sh`, `exec head -c ${cut} '${readyDump}'`);
      const repo = f.path(`cut-${cut}`);
      const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', rec.wrapper], { ...THREAD, TMPDIR: tmpdir });
      const what = `cut at ${cut} of ${size} (seed ${rnd.seed}): ${r.stderr.slice(-600)}`;
      expect(r.code, what).toBe(5);
      expect(errorLine(r.stderr), what).toMatch(/not a whole dump.*nothing was stored|pg_dump wrote nothing/);
      expect(await rec.kind()).toBe('fifo');
      expect(await listed(repo), what).toEqual([]);
    }
    const rec = await recordingWrapper('cut-none.sh', `exec head -c ${size} '${readyDump}'`);
    const repo = f.path('cut-none');
    const ok = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', rec.wrapper], { ...THREAD, TMPDIR: tmpdir });
    expect(ok.code, ok.stderr).toBe(0);
    expect((await listed(repo)).length).toBe(1);
    await expectNothingLeft();
  });

  it('pg_dump killed at seeded points of its output: the backup fails, nothing listed', async () => {
    const size = (await fsp.stat(readyDump)).size;
    const rnd = seededRandom('tap-thread kills');
    for (let i = 0; i < 4; i++) {
      const at = Math.floor(rnd.next() * size);
      const signal = ['KILL', 'TERM', 'INT'][i % 3]!;
      // Writes `at` bytes of a real dump, then dies by the signal (as pg_dump killed by the OOM killer or an operator would).
      const rec = await recordingWrapper(`kill-${i}.sh`, `head -c ${at} '${readyDump}'\nkill -${signal} $$\nsleep 5`);
      const repo = f.path(`kill-${i}`);
      const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', rec.wrapper], { ...THREAD, TMPDIR: tmpdir });
      const what = `SIG${signal} after ${at} of ${size} bytes (seed ${rnd.seed}): ${r.stderr.slice(-600)}`;
      expect(r.code, what).not.toBe(0);
      expect(errorLine(r.stderr), what).toMatch(/pg_dump/);
      expect(await listed(repo), what).toEqual([]);
    }
    await expectNothingLeft();
  });

  it('pzstd stops reading half-way: the run fails with pzstd\'s reason, without hanging', async () => {
    const bin = f.path('dying-pzstd-bin');
    await fsp.mkdir(bin, { recursive: true });
    const real = (await execa('sh', ['-c', 'command -v pzstd'])).stdout.trim();
    const size = (await fsp.stat(readyDump)).size;
    // Compresses the first part of its input, then exits 3 with a message (its stdin closes: EPIPE for the thread).
    await fsp.writeFile(path.join(bin, 'pzstd'), `#!/bin/bash\nhead -c ${Math.floor(size / 3)} | '${real}' "$@"\necho "pzstd: simulated failure" >&2\nexit 3\n`, { mode: 0o755 });
    const repo = f.path('dying-pzstd');
    const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient], { ...THREAD, TMPDIR: tmpdir, PATH: `${bin}:${process.env.PATH}` });
    expect(r.code, r.stderr).not.toBe(0);
    expect(errorLine(r.stderr)).toMatch(/pzstd/);
    expect(await listed(repo)).toEqual([]);
    await expectNothingLeft();
  });

  it('SIGTERM during a threaded backup: exit 143, nothing listed, nothing left behind', async () => {
    // pg_dump writes slowly (a throttled copy of a real dump), so the signal lands mid-stream.
    const rec = await recordingWrapper('slow-pg_dump.sh', `while :; do head -c 65536 '${readyDump}'; sleep 0.05; done`);
    const repo = f.path('sigterm');
    const p = startCoffer(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--pg-dump-command', rec.wrapper], { env: f.env({ ...THREAD, TMPDIR: tmpdir }) });
    await dumpFlowing(rec);
    p.kill('SIGTERM');
    const r = await p;
    expect(r.exitCode, r.stderr as string).toBe(143);
    expect(await rec.kind()).toBe('fifo');
    expect(await listed(repo)).toEqual([]);
    await new Promise((r) => setTimeout(r, 300));
    await expectNothingLeft();
  });
});
