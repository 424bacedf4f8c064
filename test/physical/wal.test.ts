/**
 * wal-push (archive_command) and wal-fetch (restore_command) against both stores, and a real
 * PostgreSQL 15 cluster archiving through coffer to RGW, recovering from it, and stopping with a
 * FATAL (never opening) when an archived segment is damaged.
 */
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { execa } from 'execa';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseWalKey, walPrefix } from '../../src/catalog/cluster-layout.js';
import { startThrowawayCluster } from '../../src/demo/throwaway-cluster.js';
import { COFFER_BIN, errorLine, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { serverOsUser } from '../harness/server-coffer.js';
import { listAllKeys } from '../harness/rgw.js';

const f = useFixture({ name: 'wal', s3: true });

const SEG1 = '000000010000000000000001';

/** A WAL-like file: compressible pages with some random bytes (2 MiB; real segments are covered below). */
function walBytes(seed: number): Buffer {
  const b = Buffer.alloc(2 * 1024 * 1024);
  for (let i = 0; i < b.length; i += 8192) {
    b.writeUInt32LE(seed, i);
    randomBytes(512).copy(b, i + 64);
  }
  return b;
}

/** Writes a WAL segment's long page header naming `sysid` into `b` (its size as the segment size, 8 KiB pages), little-endian. */
function withLongHeader(b: Buffer, sysid: bigint): Buffer {
  b.fill(0, 0, 40);
  b.writeUInt16LE(0xd110, 0); // xlp_magic (PostgreSQL 15)
  b.writeUInt16LE(0x0002, 2); // xlp_info: XLP_LONG_HEADER
  b.writeUInt32LE(1, 4); // xlp_tli
  b.writeBigUInt64LE(sysid, 24); // xlp_sysid
  b.writeUInt32LE(b.length, 32); // xlp_seg_size
  b.writeUInt32LE(8192, 36); // xlp_xlog_blcksz
  return b;
}

type Repo = { kind: 'file' | 's3'; url: () => string; keys: (prefix: string) => Promise<string[]>; read: (key: string) => Promise<Buffer>; write: (key: string, data: Buffer) => Promise<void> };

const repos: Repo[] = [
  {
    kind: 'file',
    url: () => f.path('repo'),
    keys: async (prefix) => onlyName(prefix, await fileKeys(prefix)),
    read: (key) => fsp.readFile(f.path('repo', ...key.split('/'))),
    write: (key, data) => fsp.writeFile(f.path('repo', ...key.split('/')), data),
  },
  {
    kind: 's3',
    url: () => f.repo('wal'),
    keys: async (prefix) => onlyName(prefix, (await listAllKeys(f.s3, f.bucket, `wal/${prefix}`)).map((k) => k.slice('wal/'.length))),
    read: async (key) => Buffer.from(await (await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: `wal/${key}` }))).Body!.transformToByteArray()),
    write: async (key, data) => void (await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: `wal/${key}`, Body: data }))),
  },
];

/** Keys under a `walPrefix(cluster, file)` of that file only (the prefix also matches `<file>.partial…`). */
function onlyName(prefix: string, keys: string[]): string[] {
  const file = /([^/]*)\.$/.exec(prefix)?.[1];
  return file === undefined ? keys : keys.filter((k) => parseWalKey(k)?.file === file);
}

/** The files of the file repository under a prefix inside one directory (temporaries included: they must never match). */
async function fileKeys(prefix: string): Promise<string[]> {
  const parts = prefix.split('/');
  const last = parts.pop()!;
  const names = await fsp.readdir(f.path('repo', ...parts)).catch(() => [] as string[]);
  return names.filter((n) => n.startsWith(last)).map((n) => `${parts.join('/')}/${n}`);
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.each(repos)('wal-push / wal-fetch ($kind repository)', (repo) => {
  const push = (cluster: string, file: string, extra: string[] = [], env: Record<string, string> = {}) =>
    f.run(['wal-push', '--cluster', cluster, '--to', repo.url(), '--recipient', f.recipient, ...extra, file], env);
  const fetch = (cluster: string, name: string, target: string, identity = f.identityFile) => f.run(['wal-fetch', '--cluster', cluster, '--from', repo.url(), '--identity', identity, name, target]);

  it('archive_command contract: identical re-push exits 0 writing nothing; a different file under the name exits 5 and the original stays; other names exit 2', async () => {
    const dir = f.path(`${repo.kind}-contract`);
    await fsp.mkdir(dir);
    const file = path.join(dir, SEG1);
    const original = walBytes(1);
    await fsp.writeFile(file, original);
    const first = await push('c1', file);
    expect(first.code, first.stderr).toBe(0);
    const keys = await repo.keys(walPrefix('c1', SEG1));
    expect(keys).toEqual([`cluster=c1/wal/${SEG1}.${sha(original)}.zst.age`]);
    const stored = await repo.read(keys[0]!);

    const again = await push('c1', file, [], {});
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain('already archived');
    expect(await repo.keys(walPrefix('c1', SEG1))).toEqual(keys);

    // %p %f form, and a .partial of the same segment is another name (not a copy of it).
    await fsp.writeFile(path.join(dir, `${SEG1}.partial`), walBytes(3));
    const partial = await f.run(['wal-push', '--cluster', 'c1', '--to', repo.url(), '--recipient', f.recipient, path.join(dir, `${SEG1}.partial`), `${SEG1}.partial`]);
    expect(partial.code, partial.stderr).toBe(0);

    await fsp.writeFile(file, walBytes(2));
    const different = await push('c1', file);
    expect(different.code).toBe(5);
    expect(errorLine(different.stderr)).toMatch(new RegExp(`already holds a different ${SEG1} for cluster "c1".*nothing overwritten`));
    expect(await repo.keys(walPrefix('c1', SEG1))).toEqual(keys);
    expect((await repo.read(keys[0]!)).equals(stored)).toBe(true);

    await fsp.writeFile(path.join(dir, 'postgresql.conf'), 'x');
    const bad = await push('c1', path.join(dir, 'postgresql.conf'));
    expect(bad.code).toBe(2);
    expect(errorLine(bad.stderr)).toMatch(/not a WAL file name/);
    const mismatch = await f.run(['wal-push', '--cluster', 'c1', '--to', repo.url(), '--recipient', f.recipient, file, '000000010000000000000009']);
    expect(mismatch.code).toBe(2);
    // Named as a segment, but not one: the wrong size (a segment is a power of two, 1 MiB–1 GiB), timeline 0.
    const odd: Array<[string, number]> = [['00000001000000000000000A', 338], ['00000001000000000000000B', 3 << 20], ['00000001000000000000000C.partial', 1000], ['00000000000000000000000D', 2 << 20]];
    for (const [name, size] of odd) {
      await fsp.writeFile(path.join(dir, name), Buffer.alloc(size));
      const r = await push('c1', path.join(dir, name));
      expect(r.code, `${name}: ${r.stderr}`).toBe(2);
      expect(await repo.keys(walPrefix('c1', name))).toEqual([]);
    }
  });

  it('wal-fetch: byte-equal round trip (history files too); absent exits 1 quietly; wrong identity, damage and two copies exit 200 with one clear line', async () => {
    const dir = f.path(`${repo.kind}-fetch`);
    await fsp.mkdir(dir);
    const seg = walBytes(7);
    await fsp.writeFile(path.join(dir, SEG1), seg);
    await fsp.writeFile(path.join(dir, '00000002.history'), '1\t0/3000000\tno recovery target specified\n');
    for (const n of [SEG1, '00000002.history']) expect((await push('c2', path.join(dir, n))).code).toBe(0);

    const out = path.join(dir, 'out');
    await fsp.mkdir(out);
    const ok = await fetch('c2', SEG1, path.join(out, 'RECOVERYXLOG'));
    expect(ok.code, ok.stderr).toBe(0);
    expect((await fsp.readFile(path.join(out, 'RECOVERYXLOG'))).equals(seg)).toBe(true);
    const hist = await fetch('c2', '00000002.history', path.join(out, 'RECOVERYHISTORY'));
    expect(hist.code, hist.stderr).toBe(0);
    expect(await fsp.readFile(path.join(out, 'RECOVERYHISTORY'), 'utf8')).toContain('no recovery target');
    // Only the target, no temporary left beside it.
    expect((await fsp.readdir(out)).sort()).toEqual(['RECOVERYHISTORY', 'RECOVERYXLOG']);

    const absent = await fetch('c2', '00000003.history', path.join(out, 'x'));
    expect(absent.code).toBe(1);
    expect(absent.stderr).not.toContain('"level":"error"');
    expect(absent.stderr).toContain('not in the archive');
    // A repository that is not there (an unmounted directory, a missing bucket) is not "not in
    // the archive": exit 1 would end a recovery early, on what was restored so far.
    const gone = repo.kind === 'file' ? f.path('not-mounted', 'repo') : `s3://no-such-bucket-${randomBytes(4).toString('hex')}/wal`;
    for (const name of [SEG1, '00000003.history']) {
      const r = await f.run(['wal-fetch', '--cluster', 'c2', '--from', gone, '--identity', f.identityFile, name, path.join(out, 'z')]);
      expect(r.code, r.stderr).toBe(200);
    }
    expect(await fsp.readdir(out)).not.toContain('z');

    const other = f.path(`${repo.kind}-other-id.txt`);
    const keygen = await f.run(['keygen', '--out', other]);
    expect(keygen.code, keygen.stderr).toBe(0);
    const wrongKey = await fetch('c2', SEG1, path.join(out, 'y'), other);
    expect(wrongKey.code).toBe(200);
    expect(errorLine(wrongKey.stderr)).toMatch(/no identity matches/);
    const badFlag = await f.run(['wal-fetch', '--cluster', 'c2', '--from', repo.url(), '--identity', f.identityFile, '--no-such-flag', SEG1, path.join(out, 'z')]);
    expect(badFlag.code).toBe(200);

    // One flipped byte in the middle of the stored object.
    const [key] = await repo.keys(walPrefix('c2', SEG1));
    const damaged = Buffer.from(await repo.read(key!));
    damaged[Math.floor(damaged.length / 2)]! ^= 0x01;
    await repo.write(key!, damaged);
    const broken = await fetch('c2', SEG1, path.join(out, 'd'));
    expect(broken.code).toBe(200);
    expect(errorLine(broken.stderr)).toMatch(new RegExp(`${SEG1}.*authentication failed`));
    expect((await fsp.readdir(out)).sort()).toEqual(['RECOVERYHISTORY', 'RECOVERYXLOG']);

    // A second, different copy stored under the name (two servers under one cluster name).
    await fsp.writeFile(path.join(dir, '000000010000000000000002'), walBytes(8));
    expect((await push('c2', path.join(dir, '000000010000000000000002'))).code).toBe(0);
    const [k2] = await repo.keys(walPrefix('c2', '000000010000000000000002'));
    const twinKey = k2!.replace(/\.[0-9a-f]{64}\./, `.${'0'.repeat(64)}.`);
    await repo.write(twinKey, await repo.read(k2!));
    const twins = await fetch('c2', '000000010000000000000002', path.join(out, 't'));
    expect(twins.code).toBe(200);
    expect(errorLine(twins.stderr)).toMatch(/2 different copies of 000000010000000000000002/);
  });

  // The damage sweep once, through the file repository (the S3 read path is the same decoder).
  if (repo.kind === 'file') {
    it('wal-fetch exits 200 and writes nothing wherever the stored object is damaged: header, first chunk, middle, last chunk, last byte, cut short', async () => {
      const dir = f.path('sweep');
      await fsp.mkdir(dir);
      await fsp.writeFile(path.join(dir, SEG1), walBytes(11));
      expect((await push('sweep', path.join(dir, SEG1))).code).toBe(0);
      const [key] = await repo.keys(walPrefix('sweep', SEG1));
      const good = await repo.read(key!);
      const n = good.length;
      const cases: Array<[string, Buffer]> = [10, 300, Math.floor(n / 2), n - 100, n - 1].map((at) => {
        const b = Buffer.from(good);
        b[at]! ^= 0x10;
        return [`flip @${at}`, b];
      });
      cases.push(['cut at the middle', good.subarray(0, Math.floor(n / 2))], ['cut one byte short', good.subarray(0, n - 1)]);
      const out = path.join(dir, 'out');
      await fsp.mkdir(out);
      try {
        for (const [what, bytes] of cases) {
          await repo.write(key!, bytes);
          const r = await fetch('sweep', SEG1, path.join(out, 'RECOVERYXLOG'));
          expect({ what, code: r.code }, r.stderr).toEqual({ what, code: 200 });
          expect(await fsp.readdir(out)).toEqual([]);
        }
      } finally {
        await repo.write(key!, good);
      }
    });
  }

  it('one system per --cluster: a segment whose long header names another system is refused (exit 5, nothing stored) at each position; so is every push once two are recorded', async () => {
    const dir = f.path(`${repo.kind}-systems`);
    await fsp.mkdir(dir);
    const A = 7441859105219391234n;
    const B = 7441859105219391235n;
    const seg = (n: number) => `0000000100000000000000${n.toString(16).toUpperCase().padStart(2, '0')}`;
    const write = async (name: string, sysid: bigint | undefined, seed: number): Promise<string> => {
      const b = walBytes(seed);
      if (sysid !== undefined) withLongHeader(b, sysid);
      await fsp.writeFile(path.join(dir, name), b);
      return path.join(dir, name);
    };
    const markers = async (): Promise<string[]> => (await repo.keys('cluster=sys/system/')).map((k) => k.split('/').pop()!).sort();
    const stored = async (name: string): Promise<number> => (await repo.keys(walPrefix('sys', name))).length;

    expect((await push('sys', await write(seg(1), A, 1))).code).toBe(0);
    expect(await markers()).toEqual([A.toString()]);
    // Another system: first, next, later, and the .partial of a stored segment's name.
    for (const name of [seg(2), seg(3), seg(9), `${seg(1)}.partial`]) {
      const r = await push('sys', await write(name, B, 2));
      expect(r.code, `${name}: ${r.stderr}`).toBe(5);
      expect(errorLine(r.stderr)).toContain(`WAL segment ${name} belongs to PostgreSQL system ${B}, but --cluster sys holds system ${A}; not stored`);
      expect(await stored(name), name).toBe(0);
    }
    // The recorded system goes on; files without a system identifier (history, backup history, no long header) are not checked.
    expect((await push('sys', await write(seg(2), A, 3))).code).toBe(0);
    await fsp.writeFile(path.join(dir, '00000002.history'), '1\t0/3000000\tno recovery target specified\n');
    expect((await push('sys', path.join(dir, '00000002.history'))).code).toBe(0);
    expect((await push('sys', await write(seg(4), undefined, 4))).code).toBe(0);
    expect(await markers()).toEqual([A.toString()]);
    // A name of its own takes the other system, and records it there.
    expect((await push('sys-b', await write(seg(5), B, 5))).code).toBe(0);
    // Two systems recorded (two first pushes racing): every push of either stops, naming both.
    await repo.write(`cluster=sys/system/${B}`, Buffer.alloc(0));
    for (const sysid of [A, B]) {
      const r = await push('sys', await write(seg(6), sysid, 6));
      expect(r.code, r.stderr).toBe(5);
      expect(errorLine(r.stderr)).toContain(`--cluster sys records several systems (${A}, ${B})`);
      expect(await stored(seg(6))).toBe(0);
    }
  });

  it('a SIGKILLed wal-push leaves nothing visible under the key, at every stage; the retried push then stores it once', async () => {
    const dir = f.path(`${repo.kind}-kill`);
    await fsp.mkdir(dir);
    const file = path.join(dir, SEG1);
    const data = walBytes(11);
    await fsp.writeFile(file, data);
    const env = f.env();
    for (const stage of ['listed', 'encoded']) {
      const p = startCoffer(['wal-push', '--cluster', 'k', '--to', repo.url(), '--recipient', f.recipient, file], { env: { ...env, COFFER_TEST_FAULTS: `stall-wal-push=${stage}` } });
      await new Promise<void>((resolve) => p.stderr!.on('data', (b: Buffer) => b.toString().includes(`stalled at ${stage}`) && resolve()));
      p.kill('SIGKILL');
      const r = await p;
      expect(r.signal).toBe('SIGKILL');
      expect(await repo.keys(walPrefix('k', SEG1)), stage).toEqual([]);
    }
    // Killed at random moments of a whole run (reading, zstd, encrypting, inside putBytes).
    for (const ms of [250, 500]) {
      const p = startCoffer(['wal-push', '--cluster', `k${ms}`, '--to', repo.url(), '--recipient', f.recipient, file], { env });
      await new Promise((r) => setTimeout(r, ms));
      p.kill('SIGKILL');
      const r = await p;
      const keys = await repo.keys(walPrefix(`k${ms}`, SEG1));
      // Either nothing, or (when it finished before the kill) the whole object.
      if (keys.length > 0) {
        expect(keys).toHaveLength(1);
        const back = await fetch(`k${ms}`, SEG1, path.join(dir, `back-${ms}`));
        expect(back.code, `${ms} ms: ${back.stderr}`).toBe(0);
      } else expect(r.signal).toBe('SIGKILL');
    }
    // Killed after the object was stored, before exit 0: the object is whole; PostgreSQL's retry exits 0.
    const p = startCoffer(['wal-push', '--cluster', 'k', '--to', repo.url(), '--recipient', f.recipient, file], { env: { ...env, COFFER_TEST_FAULTS: 'stall-wal-push=stored' } });
    await new Promise<void>((resolve) => p.stderr!.on('data', (b: Buffer) => b.toString().includes('stalled at stored') && resolve()));
    p.kill('SIGKILL');
    await p;
    const retry = await push('k', file);
    expect(retry.code, retry.stderr).toBe(0);
    expect(await repo.keys(walPrefix('k', SEG1))).toHaveLength(1);
    const back = await fetch('k', SEG1, path.join(dir, 'back'));
    expect(back.code, back.stderr).toBe(0);
    expect((await fsp.readFile(path.join(dir, 'back'))).equals(data)).toBe(true);
    if (repo.kind === 'file') {
      // Temporaries of the killed runs are never listed as objects (coffer prune removes stale ones).
      expect((await repo.keys('cluster=k/wal/')).every((k) => parseWalKey(k) !== undefined)).toBe(true);
    }
  });
  // Two pushes of one name racing, ordered by fault holds at every pair of positions: after the
  // listing (nothing stored yet) and after the write (before the re-listing). Exactly one copy
  // stays: the first stored; its push exits 0, the other exits 5 and removes what it wrote.
  describe('racing pushes of one name leave exactly one copy, the first stored', () => {
    type Step = ['start' | 'release', 'A' | 'B', string] | ['wait', 'A' | 'B', string] | ['exit', 'A' | 'B'];
    const cases: Array<{ name: string; holds: Record<'A' | 'B', string>; steps: Step[]; winner: 'A' | 'B' | 'either' }> = [
      { name: 'both listed, A writes first', holds: { A: 'listed', B: 'listed' }, steps: [['start', 'A', ''], ['wait', 'A', 'listed'], ['start', 'B', ''], ['wait', 'B', 'listed'], ['release', 'A', 'listed'], ['exit', 'A'], ['release', 'B', 'listed'], ['exit', 'B']], winner: 'A' },
      { name: 'both listed, B writes first', holds: { A: 'listed', B: 'listed' }, steps: [['start', 'A', ''], ['wait', 'A', 'listed'], ['start', 'B', ''], ['wait', 'B', 'listed'], ['release', 'B', 'listed'], ['exit', 'B'], ['release', 'A', 'listed'], ['exit', 'A']], winner: 'B' },
      { name: 'B stored and not yet re-listed when A writes and re-lists', holds: { A: 'listed', B: 'stored' }, steps: [['start', 'A', ''], ['wait', 'A', 'listed'], ['start', 'B', ''], ['wait', 'B', 'stored'], ['release', 'A', 'listed'], ['exit', 'A'], ['release', 'B', 'stored'], ['exit', 'B']], winner: 'B' },
      { name: 'both stored before either re-lists (A re-lists first)', holds: { A: 'listed+stored', B: 'listed+stored' }, steps: [['start', 'A', ''], ['wait', 'A', 'listed'], ['start', 'B', ''], ['wait', 'B', 'listed'], ['release', 'A', 'listed'], ['wait', 'A', 'stored'], ['release', 'B', 'listed'], ['wait', 'B', 'stored'], ['release', 'A', 'stored'], ['exit', 'A'], ['release', 'B', 'stored'], ['exit', 'B']], winner: 'either' },
      { name: 'both stored before either re-lists (B re-lists first)', holds: { A: 'listed+stored', B: 'listed+stored' }, steps: [['start', 'A', ''], ['wait', 'A', 'listed'], ['start', 'B', ''], ['wait', 'B', 'listed'], ['release', 'B', 'listed'], ['wait', 'B', 'stored'], ['release', 'A', 'listed'], ['wait', 'A', 'stored'], ['release', 'B', 'stored'], ['exit', 'B'], ['release', 'A', 'stored'], ['exit', 'A']], winner: 'either' },
    ];
    for (const [i, c] of cases.entries()) {
      it(c.name, async () => {
        const dir = f.path(`${repo.kind}-race-${i}`);
        await fsp.mkdir(dir, { recursive: true });
        const data = { A: walBytes(100 + i), B: walBytes(200 + i) };
        const cluster = `race${i}`;
        const procs: Partial<Record<'A' | 'B', ReturnType<typeof startCoffer>>> = {};
        const stderr: Record<'A' | 'B', string> = { A: '', B: '' };
        const codes: Partial<Record<'A' | 'B', number>> = {};
        for (const step of c.steps) {
          const who = step[1];
          if (step[0] === 'start') {
            await fsp.mkdir(path.join(dir, who), { recursive: true });
            await fsp.writeFile(path.join(dir, who, SEG1), data[who]);
            const p = startCoffer(['wal-push', '--cluster', cluster, '--to', repo.url(), '--recipient', f.recipient, path.join(dir, who, SEG1)], {
              env: { ...f.env(), COFFER_TEST_FAULTS: `hold-wal-push=${c.holds[who]}`, COFFER_TEST_RELEASE: path.join(dir, `release-${who}`) },
            });
            p.stderr!.on('data', (b: Buffer) => (stderr[who] += b.toString()));
            procs[who] = p;
          } else if (step[0] === 'wait') {
            for (let n = 0; !stderr[who].includes(`held at ${step[2]}`); n++) {
              if (n > 3000) throw new Error(`${who} never held at ${step[2]}: ${stderr[who]}`);
              await new Promise((r) => setTimeout(r, 20));
            }
          } else if (step[0] === 'release') await fsp.writeFile(path.join(dir, `release-${who}.${step[2]}`), '');
          else codes[who] = (await procs[who]!).exitCode ?? -1;
          // (a second apart on S3, whose listing times are whole seconds: "first stored" is then unambiguous)
          if (step[0] === 'release' && repo.kind === 's3') await new Promise((r) => setTimeout(r, 1100));
        }
        const keys = await repo.keys(walPrefix(cluster, SEG1));
        expect(keys, `${stderr.A}\n${stderr.B}`).toHaveLength(1);
        const kept = parseWalKey(keys[0]!)!.sha256 === sha(data.A) ? 'A' : 'B';
        if (c.winner !== 'either') expect(kept).toBe(c.winner);
        const loser = kept === 'A' ? 'B' : 'A';
        expect(codes[kept], stderr[kept]).toBe(0);
        expect(codes[loser], stderr[loser]).toBe(5);
        expect(errorLine(stderr[loser])).toMatch(/a concurrent push stored another copy.*its own copy was removed/);
        const back = await fetch(cluster, SEG1, path.join(dir, 'back'));
        expect(back.code, back.stderr).toBe(0);
        expect((await fsp.readFile(path.join(dir, 'back'))).equals(data[kept])).toBe(true);
      });
    }

    // The stored time is not when a copy became visible (a file's mtime is its write, before the
    // exclusive link): A stores and exits 0 alone; B, listed before A stored, then stores a copy
    // whose stored time is earlier than A's. B wins by the rule, but A's push has exited 0: B
    // waits for A's copy to go, it stays, B yields and removes its own.
    it.runIf(repo.kind === 'file')('a push that exited 0 alone keeps its copy even when the later copy carries the earlier stored time', async () => {
      const dir = f.path(`${repo.kind}-race-alone`);
      await fsp.mkdir(path.join(dir, 'A'), { recursive: true });
      await fsp.mkdir(path.join(dir, 'B'), { recursive: true });
      const data = { A: walBytes(400), B: walBytes(401) };
      await fsp.writeFile(path.join(dir, 'A', SEG1), data.A);
      await fsp.writeFile(path.join(dir, 'B', SEG1), data.B);
      let errB = '';
      const b = startCoffer(['wal-push', '--cluster', 'racealone', '--to', repo.url(), '--recipient', f.recipient, path.join(dir, 'B', SEG1)], {
        env: { ...f.env(), COFFER_TEST_FAULTS: 'hold-wal-push=listed', COFFER_TEST_RELEASE: path.join(dir, 'release-B') },
      });
      b.stderr!.on('data', (x: Buffer) => (errB += x.toString()));
      while (!errB.includes('held at listed')) await new Promise((r) => setTimeout(r, 20));
      const a = await push('racealone', path.join(dir, 'A', SEG1));
      expect(a.code, a.stderr).toBe(0);
      const [keyA] = await repo.keys(walPrefix('racealone', SEG1));
      const later = new Date(Date.now() + 60_000);
      await fsp.utimes(f.path('repo', ...keyA!.split('/')), later, later);
      await fsp.writeFile(path.join(dir, 'release-B.listed'), '');
      const rb = await b;
      expect(rb.exitCode, errB).toBe(5);
      expect(errorLine(errB)).toMatch(/a concurrent push stored another copy.*its own copy was removed/);
      expect(await repo.keys(walPrefix('racealone', SEG1))).toEqual([keyA]);
    });

    it('identical copies racing both succeed, one object', async () => {
      const dir = f.path(`${repo.kind}-race-same`);
      await fsp.mkdir(dir, { recursive: true });
      const data = walBytes(300);
      for (const who of ['A', 'B']) {
        await fsp.mkdir(path.join(dir, who), { recursive: true });
        await fsp.writeFile(path.join(dir, who, SEG1), data);
      }
      const run = (who: string) =>
        startCoffer(['wal-push', '--cluster', 'racesame', '--to', repo.url(), '--recipient', f.recipient, path.join(dir, who, SEG1)], { env: { ...f.env(), COFFER_TEST_FAULTS: 'hold-wal-push=listed', COFFER_TEST_RELEASE: path.join(dir, 'release') } });
      const a = run('A');
      const b = run('B');
      let err = '';
      a.stderr!.on('data', (x: Buffer) => (err += x.toString()));
      b.stderr!.on('data', (x: Buffer) => (err += x.toString()));
      while ((err.match(/held at listed/g) ?? []).length < 2) await new Promise((r) => setTimeout(r, 20));
      await fsp.writeFile(path.join(dir, 'release.listed'), '');
      const [ra, rb] = await Promise.all([a, b]);
      expect([ra.exitCode, rb.exitCode], err).toEqual([0, 0]);
      expect(await repo.keys(walPrefix('racesame', SEG1))).toHaveLength(1);
    });
  });
});

describe('wal-push --async (file repository)', () => {
  it('the worker stores announced segments ahead; each foreground call exits 0 once its own file is stored; a different copy fails through the worker', async () => {
    const walDir = f.path('async', 'pg_wal');
    await fsp.mkdir(path.join(walDir, 'archive_status'), { recursive: true });
    const names = ['000000010000000000000011', '000000010000000000000012', '000000010000000000000013'];
    for (const [i, n] of names.entries()) {
      await fsp.writeFile(path.join(walDir, n), walBytes(20 + i));
      await fsp.writeFile(path.join(walDir, 'archive_status', `${n}.ready`), '');
    }
    const spool = f.path('async', 'spool');
    const repoDir = f.path('async', 'repo');
    const push = (n: string) => f.run(['wal-push', '--async', '--spool-dir', spool, '--cluster', 'as', '--to', repoDir, '--recipient', f.recipient, path.join(walDir, n)]);
    const first = await push(names[0]!);
    expect(first.code, first.stderr).toBe(0);
    // The worker took all three announced segments, not only the one asked for.
    await waitUntil(async () => (await fsp.readdir(spool)).filter((n) => n.endsWith('.ok')).length >= 2, 30_000);
    for (const n of names.slice(1)) {
      await fsp.rm(path.join(walDir, 'archive_status', `${names[0]}.ready`), { force: true });
      const r = await push(n);
      expect(r.code, r.stderr).toBe(0);
    }
    const stored = (await fsp.readdir(path.join(repoDir, 'cluster=as', 'wal'))).map((k) => parseWalKey(`cluster=as/wal/${k}`)!.file).sort();
    expect(stored).toEqual(names);
    // A different file under an archived name: the worker's failure reaches the foreground (non-zero), nothing is overwritten.
    await fsp.writeFile(path.join(walDir, names[0]!), walBytes(99));
    const different = await push(names[0]!);
    expect(different.code).toBe(4);
    expect(errorLine(different.stderr)).toMatch(/async worker could not archive .*already holds a different/);
    expect((await fsp.readdir(path.join(repoDir, 'cluster=as', 'wal'))).length).toBe(3);
  });
});

describe('bin/coffer-wal-push-async, the shell front end (file repository)', () => {
  const FRONT = path.resolve(path.dirname(COFFER_BIN), '../../bin/coffer-wal-push-async');
  it('answers from the worker without node when .ok names this very file; waits for a segment in flight; a stale .ok, a dead worker or an open spool go to node', async () => {
    const walDir = f.path('front', 'pg_wal');
    await fsp.mkdir(path.join(walDir, 'archive_status'), { recursive: true });
    const names = ['000000010000000000000021', '000000010000000000000022', '000000010000000000000023', '000000010000000000000024'];
    const announce = async (n: string, seed: number) => {
      await fsp.writeFile(path.join(walDir, n), walBytes(seed));
      await fsp.writeFile(path.join(walDir, 'archive_status', `${n}.ready`), '');
    };
    for (const [i, n] of names.slice(0, 3).entries()) await announce(n, 40 + i);
    const spool = f.path('front', 'spool');
    const repoDir = f.path('front', 'repo');
    // COFFER_NODE=/bin/false: a call the shell cannot answer itself fails (exit 1) instead of starting node.
    const front = (n: string, node: string) =>
      execa('sh', [FRONT, spool, path.join(walDir, n), '--cluster', 'fe', '--to', repoDir, '--recipient', f.recipient], { env: { ...f.env(), COFFER_NODE: node }, extendEnv: false, reject: false, cwd: walDir });
    const stored = async () => (await fsp.readdir(path.join(repoDir, 'cluster=fe', 'wal')).catch(() => [] as string[])).map((k) => parseWalKey(`cluster=fe/wal/${k}`)!.file).sort();

    // No worker yet: the shell hands the call to coffer, which starts the worker.
    const noNode = await front(names[0]!, '/bin/false');
    expect(noNode.exitCode).toBe(1);
    const first = await front(names[0]!, process.execPath);
    expect(first.exitCode, String(first.stderr)).toBe(0);
    await fsp.rm(path.join(walDir, 'archive_status', `${names[0]}.ready`));
    await waitUntil(async () => (await stored()).length === 3, 30_000);
    // The worker stored the announced segments ahead: the next calls are answered by the shell alone.
    for (const n of names.slice(1, 3)) {
      const r = await front(n, '/bin/false');
      expect(r.exitCode, String(r.stderr)).toBe(0);
      expect(await exists(path.join(spool, `${n}.ok`))).toBe(false);
      await fsp.rm(path.join(walDir, 'archive_status', `${n}.ready`));
    }
    // A segment announced while the worker runs: the shell waits for it (no node) and exits 0 once it is stored.
    await announce(names[3]!, 43);
    const waited = await front(names[3]!, '/bin/false');
    expect(waited.exitCode, String(waited.stderr)).toBe(0);
    expect(await stored()).toEqual(names);

    // A stale .ok (for the earlier version of a file written again under its name) is not this file's answer.
    const oldVersion = spawnSync('stat', ['-L', '-c', '%d %i %s %.9Y', path.join(walDir, names[0]!)], { encoding: 'utf8' }).stdout;
    await new Promise((r) => setTimeout(r, 20));
    await fsp.writeFile(path.join(walDir, names[0]!), walBytes(99));
    await fsp.writeFile(path.join(spool, `${names[0]}.ok`), oldVersion, { mode: 0o600 });
    const stale = await front(names[0]!, '/bin/false');
    expect(stale.exitCode).toBe(1);
    const different = await front(names[0]!, process.execPath);
    expect(different.exitCode).toBe(4);
    expect(errorLine(String(different.stderr))).toMatch(/async worker could not archive .*already holds a different/);
    expect(await stored()).toEqual(names);

    // A spool directory others can write to: not trusted by the shell, refused by coffer (exit 2).
    await fsp.writeFile(path.join(spool, `${names[1]}.ok`), spawnSync('stat', ['-L', '-c', '%d %i %s %.9Y', path.join(walDir, names[1]!)], { encoding: 'utf8' }).stdout);
    await fsp.chmod(spool, 0o777);
    try {
      expect((await front(names[1]!, '/bin/false')).exitCode).toBe(1);
      const open = await front(names[1]!, process.execPath);
      expect(open.exitCode).toBe(2);
      expect(errorLine(String(open.stderr))).toMatch(/spool directory .* is not a directory owned by this user and closed to others/);
    } finally {
      await fsp.chmod(spool, 0o700);
    }
  });

  it('answers only for the options the worker was started with: changed options restart it, another cluster is refused, a stale worker.pid is not a worker', async () => {
    const walDir = f.path('bind', 'pg_wal');
    await fsp.mkdir(path.join(walDir, 'archive_status'), { recursive: true });
    const names = ['000000010000000000000031', '000000010000000000000032', '000000010000000000000033'];
    for (const [i, n] of names.entries()) await fsp.writeFile(path.join(walDir, n), walBytes(60 + i));
    const spool = f.path('bind', 'spool');
    const call = (n: string, node: string, cluster: string, repo: string) =>
      execa('sh', [FRONT, spool, path.join(walDir, n), '--cluster', cluster, '--to', repo, '--recipient', f.recipient], { env: { ...f.env(), COFFER_NODE: node }, extendEnv: false, reject: false, cwd: walDir });
    const storedIn = async (repo: string, cluster: string) => (await fsp.readdir(path.join(repo, `cluster=${cluster}`, 'wal')).catch(() => [] as string[])).map((k) => parseWalKey(`cluster=${cluster}/wal/${k}`)!.file).sort();
    const repoA = f.path('bind', 'repo-a');
    const repoB = f.path('bind', 'repo-b');

    // A pid that is no worker (this test's own process) in worker.pid: coffer starts a real worker.
    await fsp.mkdir(spool, { mode: 0o700 });
    await fsp.writeFile(path.join(spool, 'worker.pid'), `${process.pid}\n`);
    const first = await call(names[0]!, process.execPath, 'bd', repoA);
    expect(first.exitCode, String(first.stderr)).toBe(0);
    expect(await storedIn(repoA, 'bd')).toEqual([names[0]]);
    const workerA = Number((await fsp.readFile(path.join(spool, 'worker.pid'), 'utf8')).trim());
    expect(workerA).not.toBe(process.pid);

    // The repository changed (the archive_command was edited): the shell does not trust the running
    // worker, coffer stops it and starts one for the new options; the file lands in the new repository.
    await fsp.writeFile(path.join(walDir, 'archive_status', `${names[1]}.ready`), '');
    expect((await call(names[1]!, '/bin/false', 'bd', repoB)).exitCode).toBe(1);
    const moved = await call(names[1]!, process.execPath, 'bd', repoB);
    expect(moved.exitCode, String(moved.stderr)).toBe(0);
    // (the old worker may have pushed the announced segment to the old repository before it stopped: harmless)
    expect(await storedIn(repoB, 'bd')).toEqual([names[1]]);
    expect(Number((await fsp.readFile(path.join(spool, 'worker.pid'), 'utf8')).trim())).not.toBe(workerA);
    await fsp.rm(path.join(walDir, 'archive_status', `${names[1]}.ready`));

    // Another cluster through the same spool while this one's worker runs: refused (exit 2), nothing stored for it.
    const other = await call(names[2]!, process.execPath, 'elsewhere', repoB);
    expect(other.exitCode).toBe(2);
    expect(errorLine(String(other.stderr))).toMatch(/spool directory .* is in use by the archiving of another cluster \(cluster "bd"\)/);
    expect(await storedIn(repoB, 'elsewhere')).toEqual([]);
    // …and the shell still answers the first cluster's next segment alone.
    await fsp.writeFile(path.join(walDir, 'archive_status', `${names[2]}.ready`), '');
    const next = await call(names[2]!, '/bin/false', 'bd', repoB);
    expect(next.exitCode, String(next.stderr)).toBe(0);
    expect(await storedIn(repoB, 'bd')).toEqual(names.slice(1));
  });
});

describe('a PostgreSQL 15 cluster archiving through coffer to S3', () => {
  it('archives switched segments through the async front end (failed_count 0); a recovery meeting a damaged segment stops with FATAL and never opens; status names a missing segment', async () => {
    const repo = f.repo('pitr');
    const rgw = f.rgw!;
    const s3vars = `AWS_ACCESS_KEY_ID=${rgw.admin.accessKeyId} AWS_SECRET_ACCESS_KEY=${rgw.admin.secretAccessKey} AWS_ENDPOINT_URL_S3=${rgw.endpoint} AWS_REGION=${rgw.region} COFFER_LOG_FORMAT=json`;
    const coffer = `${s3vars} ${process.execPath} ${COFFER_BIN}`;
    // The restored directory and the spool live outside the cluster's own (a.stop() removes that).
    const user = serverUser();
    const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-walr-'));
    if (user.uid !== undefined) await fsp.chown(root, user.uid, user.gid!);
    // Archiving through the --async worker and its shell front end (the README's form for busy servers).
    const front = `${s3vars} COFFER_NODE=${process.execPath} ${path.resolve(path.dirname(COFFER_BIN), '../../bin/coffer-wal-push-async')}`;
    const a = await startThrowawayCluster({
      settings: { wal_level: 'replica', archive_mode: 'on', archive_command: `${front} ${path.join(root, 'spool')} %p --cluster pg --to ${repo} --recipient ${f.recipient}`, max_wal_senders: '2' },
    });
    let bStarted = false;
    const bData = path.join(root, 'restored');
    const bSock = path.join(root, 'sb');
    const pgCtl = path.join(a.binDir, 'pg_ctl');
    try {
      await a.psql('CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;');
      const bb = await execa(path.join(a.binDir, 'pg_basebackup'), ['-D', bData, '-Fp', '-X', 'fetch', '-c', 'fast', '-h', a.host, '-p', String(a.port), '-U', 'postgres'], { ...user, reject: false, env: { PATH: process.env.PATH! } });
      expect(bb.exitCode, String(bb.stderr)).toBe(0);
      let last = '';
      for (let i = 0; i < 2; i++) {
        await a.psql(`INSERT INTO t SELECT g, md5(g::text) FROM generate_series(${2000 + i * 1000}, ${2999 + i * 1000}) g`);
        last = (await a.psql('SELECT pg_walfile_name(pg_current_wal_lsn())')).trim();
        await a.psql('SELECT pg_switch_wal();');
      }
      // Wait until the archiver has stored everything up to the last switched segment.
      let st = '';
      for (let i = 0; i < 200; i++) {
        st = await a.psql("SELECT archived_count || ' ' || failed_count || ' ' || coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if (st.split(' ')[2]! >= last) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const [, failed, lastArchived] = st.split(' ');
      expect(failed, st).toBe('0');
      expect(lastArchived! >= last, st).toBe(true);
      await a.stop();
      // The segments went through the worker.
      expect(await fsp.readFile(path.join(root, 'spool', 'worker.log'), 'utf8')).toMatch(new RegExp(`archived ${last}`));

      const status = await f.run(['status', '--from', repo, '--cluster', 'pg', '--json']);
      expect(status.code, status.stderr).toBe(0);
      const summary = JSON.parse(status.stdout) as { segments: number; gaps: unknown[]; newestSegment: { file: string } };
      expect(summary.segments).toBeGreaterThanOrEqual(3);
      expect(summary.gaps).toEqual([]);
      expect(summary.newestSegment.file >= last).toBe(true);
      const segKeys = (await listAllKeys(f.s3, f.bucket, `pitr/${walPrefix('pg')}`)).filter((k) => /\/[0-9A-F]{24}\.[0-9a-f]{64}\.zst\.age$/.test(k)).sort();

      // Interop: age -d -i ID | zstd -d gives the segment back (16 MiB, its name inside the header).
      const obj = Buffer.from(await (await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: segKeys[0]! }))).Body!.transformToByteArray());
      const plain = spawnSync('sh', ['-c', `age -d -i ${f.identityFile} | zstd -d -q -c`], { input: obj, maxBuffer: 64 * 1024 * 1024 });
      expect(plain.status, String(plain.stderr)).toBe(0);
      expect(plain.stdout.length).toBe(16 * 1024 * 1024);
      expect(sha(plain.stdout)).toBe(parseWalKey(segKeys[0]!.slice('pitr/'.length))!.sha256);

      // Recovery from the base backup through wal-fetch, with the last segment's object damaged.
      const id = path.join(root, 'identity.txt');
      await fsp.copyFile(f.identityFile, id);
      if (user.uid !== undefined) await fsp.chown(id, user.uid, user.gid!);
      await fsp.mkdir(bSock, { mode: 0o700 });
      if (user.uid !== undefined) await fsp.chown(bSock, user.uid, user.gid!);
      const port = a.port; // free again: the archiving cluster is stopped
      await fsp.appendFile(
        path.join(bData, 'postgresql.auto.conf'),
        `port = ${port}\nunix_socket_directories = '${bSock}'\narchive_mode = off\nhot_standby = off\nrestore_command = '${coffer} wal-fetch --cluster pg --from ${repo} --identity ${id} %f %p'\n`,
      );
      await fsp.writeFile(path.join(bData, 'recovery.signal'), '');
      if (user.uid !== undefined) await execa('chown', ['-R', `${user.uid}:${user.gid}`, bData]);
      const damagedKey = segKeys.find((k) => k.includes(`/${last}.`))!;
      expect(damagedKey).toBeDefined();
      const good = Buffer.from(await (await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: damagedKey }))).Body!.transformToByteArray());
      const bad = Buffer.from(good);
      bad[bad.length - 100]! ^= 0x40;
      await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: damagedKey, Body: bad }));

      const log = path.join(root, 'restored.log');
      // pg_ctl -w would return at "standby" status, as soon as recovery starts: watch the postmaster instead.
      const start = async (logFile = log): Promise<void> => {
        const r = await execa(pgCtl, ['start', '-D', bData, '-l', logFile, '-W'], { ...user, reject: false, env: { PATH: process.env.PATH!, LC_ALL: 'C' }, stdin: 'ignore', cwd: root });
        expect(r.exitCode, String(r.stderr)).toBe(0);
      };
      const isReady = (): boolean => spawnSync(path.join(a.binDir, 'pg_isready'), ['-q', '-h', bSock, '-p', String(port)]).status === 0;
      const pidFile = path.join(bData, 'postmaster.pid');
      bStarted = true;
      await start();
      // The startup process's FATAL takes the postmaster down: postmaster.pid goes away.
      const logText = (): Promise<string> => fsp.readFile(log, 'utf8').catch(() => '');
      await waitUntil(async () => /FATAL|ready to accept connections/.test(await logText()), 60_000);
      await waitUntil(async () => !(await exists(pidFile)), 30_000);
      const text = await fsp.readFile(log, 'utf8');
      expect(await exists(pidFile), text).toBe(false);
      expect(text).toMatch(new RegExp(`FATAL:  could not restore file "${last}" from archive: child process exited with exit code 200`));
      expect(text).toMatch(/authentication failed/);
      expect(text).not.toMatch(/database system is ready to accept connections/);
      expect(isReady()).toBe(false);

      await execa(pgCtl, ['stop', '-D', bData, '-m', 'immediate', '-w'], { ...user, reject: false, env: { PATH: process.env.PATH! } });
      bStarted = false;

      // A middle segment deleted from the archive: status exits 7 naming it.
      const middle = segKeys[Math.floor(segKeys.length / 2)]!;
      await f.s3.send(new DeleteObjectCommand({ Bucket: f.bucket, Key: middle }));
      const gap = await f.run(['status', '--from', repo, '--cluster', 'pg']);
      expect(gap.code).toBe(7);
      const missing = /\/([0-9A-F]{24})\./.exec(middle)![1]!;
      expect(errorLine(gap.stderr)).toContain(`segment ${missing} is missing on timeline 1`);
      expect(gap.stdout).toContain(`GAP timeline 1: 1 segment(s) missing, ${missing}`);
    } finally {
      if (bStarted) await execa(pgCtl, ['stop', '-D', bData, '-m', 'immediate', '-w'], { ...user, reject: false, env: { PATH: process.env.PATH! } });
      await a.stop();
      await fsp.rm(root, { recursive: true, force: true });
    }
  });
});

/** The OS user the throwaway server runs as (postgres when we are root). */
function serverUser(): { uid?: number; gid?: number } {
  return serverOsUser() ?? {};
}

async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}

async function waitUntil(cond: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
