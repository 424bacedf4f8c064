/**
 * `restore --physical` of the two kinds of physical backup, and its refusals: a cold volume
 * archive of a stopped cluster restores into a new directory that starts and answers the smoke
 * query; a base backup damaged anywhere (a seeded sweep of byte flips over the whole object)
 * fails with exit 5 and leaves nothing; binaries of another major version are refused, naming
 * both; a time without a zone is refused.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startThrowawayCluster, type ThrowawayCluster } from '../../src/demo/throwaway-cluster.js';
import { baseEnv, errorLine, runCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { giveToServer } from '../harness/server-coffer.js';

const f = useFixture({ name: 'phys-restore' });

let src: ThrowawayCluster;
let env: Record<string, string>;
beforeAll(async () => {
  await fsp.chmod(f.tmp, 0o755);
  await giveToServer(f.identityFile);
  src = await startThrowawayCluster();
  env = baseEnv({ ...src.env() });
  await src.psql("CREATE TABLE vault_status (id int PRIMARY KEY, note text); INSERT INTO vault_status SELECT g, md5(g::text) FROM generate_series(1, 500) g;");
}, 60_000);
afterAll(async () => {
  await src?.stop();
});

async function gone(dir: string): Promise<boolean> {
  return (await fsp.readdir(dir).catch(() => [])).length === 0;
}

describe('a cold volume archive (the operations document, section 6)', () => {
  it('of a stopped cluster restores into a new directory that starts and answers the smoke query; a running one is refused', async () => {
    const repo = f.path('vol');
    const running = await runCoffer(['backup', '--data-dir', src.dataDir, '--cluster', 'vault', '--to', repo, '--recipient', f.recipient], { env });
    expect(running.code).toBe(2);
    expect(errorLine(running.stderr)).toMatch(/PID \d+|pid \d+/i);

    // stop it cleanly (the data directory stays), archive it, start it again for the other tests
    const asServer = process.getuid?.() === 0 ? { uid: Number((await execa('id', ['-u', 'postgres'])).stdout), gid: Number((await execa('id', ['-g', 'postgres'])).stdout) } : {};
    await execa(path.join(src.binDir, 'pg_ctl'), ['stop', '-D', src.dataDir, '-m', 'fast', '-w'], { ...asServer, cwd: '/' });
    const script = f.path('2026-11-30-extend-expiry.sql');
    await fsp.writeFile(script, 'UPDATE vault_status SET note = note || \'!\';\n');
    try {
      const b = await runCoffer(['backup', '--data-dir', src.dataDir, '--cluster', 'vault', '--to', repo, '--recipient', f.recipient, '--attach', script], { env });
      expect(b.code, b.stderr).toBe(0);
    } finally {
      await execa(path.join(src.binDir, 'pg_ctl'), ['start', '-D', src.dataDir, '-l', `${src.dataDir}/../postgres.log`, '-w'], { ...asServer, cwd: '/', stdin: 'ignore' });
    }
    // WAL archived after it (one file pushed here): named in a warning, not replayed without a target.
    const walFile = f.path('000000010000000000000042');
    await fsp.writeFile(walFile, Buffer.alloc(16 << 20));
    const pushed = await runCoffer(['wal-push', '--cluster', 'vault', '--to', repo, '--recipient', f.recipient, walFile], { env });
    expect(pushed.code, pushed.stderr).toBe(0);
    const to = f.path('vol-restored');
    const r = await runCoffer(['restore', '--physical', '--cluster', 'vault', '--from', repo, '--identity', f.identityFile, '--to-dir', to, '--verify', '--smoke', 'SELECT COUNT(*) FROM vault_status', '--attachments-dir', f.path('attached'), '--json'], { env: baseEnv() });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/archived WAL was stored after this volume archive \(1 file\(s\), the newest 000000010000000000000042 .*restore with --target-time or --target-lsn/);
    const s = JSON.parse(r.stdout) as { kind: string; recovery: unknown; verified: { smoke: Array<{ result: string }>; state: string } };
    expect(s.kind).toBe('volume');
    expect(s.recovery).toBeNull();
    expect(s.verified.state).toBe('started');
    expect(s.verified.smoke[0]!.result).toBe('500');
    expect(await fsp.readFile(f.path('attached', path.basename(script)), 'utf8')).toBe(await fsp.readFile(script, 'utf8'));
  });
});

describe('a damaged base backup', () => {
  const repo = (): string => f.path('base');
  let object: string;
  let size: number;
  beforeAll(async () => {
    const b = await runCoffer(['backup', '--physical', '--cluster', 'main', '--to', repo(), '--recipient', f.recipient], { env });
    expect(b.code, b.stderr).toBe(0);
    const dir = path.join(repo(), 'cluster=main');
    const tier = (await fsp.readdir(dir)).find((d) => d !== 'wal')!;
    const name = (await fsp.readdir(path.join(dir, tier))).find((n) => n.endsWith('.base.tar.zst.age'))!;
    object = path.join(dir, tier, name);
    size = (await fsp.stat(object)).size;
  }, 60_000);

  it('fails with exit 5 wherever one byte is flipped, and leaves no directory (seeded sweep)', async () => {
    const original = await fsp.readFile(object);
    // positions: the age header, the first chunk, then spread over the object to its last byte
    let seed = 0x5eed;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    const positions = [10, 200, 70_000, size - 1, ...Array.from({ length: 6 }, () => Math.floor(rnd() * size))];
    try {
      for (const [i, pos] of positions.entries()) {
        const damaged = Buffer.from(original);
        damaged[pos]! ^= 1 << (i % 8);
        await fsp.writeFile(object, damaged);
        const to = f.path(`damaged-${i}`);
        const r = await runCoffer(['restore', '--physical', '--cluster', 'main', '--from', repo(), '--identity', f.identityFile, '--to-dir', to], { env: baseEnv() });
        expect({ pos, code: r.code }, r.stderr).toEqual({ pos, code: 5 });
        expect(await gone(to)).toBe(true);
      }
    } finally {
      await fsp.writeFile(object, original);
    }
  });

  it('a full disk while unpacking exits 4 (storage), saying so, and leaves the volume empty: space for a tenth, half and nine tenths of the directory', async () => {
    const dir = path.join(repo(), 'cluster=main');
    const tier = (await fsp.readdir(dir)).find((d) => d !== 'wal')!;
    const manifest = (await fsp.readdir(path.join(dir, tier))).find((n) => n.endsWith('.manifest.json'))!;
    const plainBytes = (JSON.parse(await fsp.readFile(path.join(dir, tier, manifest), 'utf8')) as { archive: { plainBytes: number } }).archive.plainBytes;
    for (const fraction of [0.1, 0.5, 0.9]) {
      const mnt = f.path(`full-${fraction}`);
      await fsp.mkdir(mnt);
      await execa('mount', ['-t', 'tmpfs', '-o', `size=${Math.ceil((plainBytes * fraction) / 4096) * 4}k,mode=0700`, 'tmpfs', mnt]);
      try {
        const r = await runCoffer(['restore', '--physical', '--cluster', 'main', '--from', repo(), '--identity', f.identityFile, '--to-dir', mnt], { env: baseEnv() });
        expect({ fraction, code: r.code }, r.stderr).toEqual({ fraction, code: 4 });
        expect(errorLine(r.stderr)).toMatch(/unpack into .*: no space left on device/);
        expect(r.stderr).toMatch(/free disk space under/);
        expect(await fsp.readdir(mnt)).toEqual([]);
      } finally {
        await execa('umount', [mnt]);
      }
    }
  });

  it('refuses an impossible --target-time (exit 2) before anything is unpacked', async () => {
    for (const t of ['2026-11-31T10:33:14Z', '2026-02-30T00:00:00Z', '2027-02-29T00:00:00Z']) {
      const to = f.path(`bad-date-${t.slice(0, 10)}`);
      const r = await runCoffer(['restore', '--physical', '--cluster', 'main', '--from', repo(), '--identity', f.identityFile, '--to-dir', to, '--target-time', t], { env: baseEnv() });
      expect(r.code, r.stderr).toBe(2);
      expect(errorLine(r.stderr)).toMatch(/is not a time: .* has no day/);
      expect(await gone(to)).toBe(true);
    }
  });

  it('refuses server binaries of another major version, naming both, and creates nothing', async () => {
    const fake = f.path('pg16');
    await fsp.mkdir(fake);
    await fsp.writeFile(path.join(fake, 'postgres'), '#!/bin/sh\necho "postgres (PostgreSQL) 16.4"\n', { mode: 0o755 });
    const to = f.path('other-major');
    const r = await runCoffer(['restore', '--physical', '--cluster', 'main', '--from', repo(), '--identity', f.identityFile, '--to-dir', to, '--pg-bin', fake], { env: baseEnv() });
    expect(r.code).toBe(2);
    expect(errorLine(r.stderr)).toMatch(/PostgreSQL 15.*PostgreSQL 16/);
    expect(await gone(to)).toBe(true);
  });

  it('refuses a target time without a zone, and a restore point with another target', async () => {
    const to = f.path('tz');
    const r = await runCoffer(['restore', '--physical', '--cluster', 'main', '--from', repo(), '--identity', f.identityFile, '--to-dir', to, '--target-time', '2026-11-30 10:00:00'], { env: baseEnv() });
    expect(r.code).toBe(2);
    expect(errorLine(r.stderr)).toMatch(/no time zone/);
    const both = await runCoffer(['restore', '--physical', '--cluster', 'main', '--from', repo(), '--identity', f.identityFile, '--to-dir', to, '--target-name', 'x', '--target-lsn', '0/1'], { env: baseEnv() });
    expect(both.code).toBe(2);
    const logical = await runCoffer(['restore', '--to-dir', to, '--target-db', 'x', '--from', repo(), '--identity', f.identityFile], { env: baseEnv() });
    expect(logical.code).toBe(2);
    expect(errorLine(logical.stderr)).toMatch(/--to-dir needs --physical/);
  });
});
