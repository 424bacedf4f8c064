/**
 * `coffer backup --physical` (issue 14, item 1) against a private PostgreSQL 15 cluster and RGW:
 * what is stored is read back with the standard tools (age | zstd -d | tar), the manifest is
 * checked field by field, and every refusal and cut-short run leaves nothing stored.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { GetObjectCommand, GetObjectTaggingCommand } from '@aws-sdk/client-s3';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseLsn, segmentOfLsn, nextSegmentName } from '../../src/catalog/cluster-layout.js';
import { decodePhysicalManifest, type PhysicalManifest } from '../../src/catalog/physical-manifest.js';
import type { ThrowawayCluster } from '../../src/demo/throwaway-cluster.js';
import { findPhysicalBackup } from '../../src/catalog/physical-catalog.js';
import { openStore } from '../../src/store/open.js';
import { errorLine, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { listAllKeys, listMultipartUploads } from '../harness/rgw.js';
import { serverOwnedDir, sha256, startCluster, untar } from './common.js';

const f = useFixture({ name: 'physical', s3: true });
let c: ThrowawayCluster;

beforeAll(async () => {
  c = await startCluster();
  await c.psql('CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;');
});
afterAll(async () => {
  await c?.stop();
});

/** coffer in the private cluster's libpq environment. */
function run(args: string[], extra: Record<string, string> = {}) {
  return f.run(args, { ...c.env(), ...extra });
}

async function s3Bytes(key: string): Promise<Buffer> {
  const out = await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: key }));
  return Buffer.from(await out.Body!.transformToByteArray());
}

/** Every WAL segment from the manifest's start segment to its stop segment. */
function segments(m: PhysicalManifest): string[] {
  const out = [m.wal!.startSegment];
  while (out[out.length - 1] !== m.wal!.stopSegment) out.push(nextSegmentName(out[out.length - 1]!));
  return out;
}

describe('backup --physical', () => {
  it('to RGW: a standard age | zstd | tar of the cluster, its WAL and backup_manifest, with a manifest that describes it', async () => {
    const note = f.path('migration.sql');
    await fsp.writeFile(note, 'ALTER TABLE t ADD COLUMN w int;\n');
    const r = await run(['backup', '--physical', '--cluster', 'main', '--to', f.repo('phys'), '--recipient', f.recipient, '--fast-checkpoint', '--attach', note, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const [m] = JSON.parse(r.stdout) as PhysicalManifest[];
    const keys = (await listAllKeys(f.s3, f.bucket, 'phys/')).sort();
    expect(keys).toEqual([`phys/${m!.archive.key}`, `phys/${m!.attachments[0]!.key}`, `phys/cluster=main/${m!.tier}/${m!.id}.manifest.json`, `phys/cluster=main/system/${m!.postgres.systemIdentifier}`].sort());
    expect(m!.archive.key).toBe(`cluster=main/monthly/${m!.id}.base.tar.zst.age`);

    // The stored manifest is the one printed, and it passes the shared decoder.
    const stored = decodePhysicalManifest(await s3Bytes(`phys/cluster=main/${m!.tier}/${m!.id}.manifest.json`), 'manifest');
    expect(stored).toEqual(m);
    expect(m!.kind).toBe('basebackup');
    expect(m!.postgres.majorVersion).toBe(15);
    expect(m!.postgres.serverVersionNum).toBe(Number(await c.psql('SHOW server_version_num')));
    expect(m!.postgres.systemIdentifier).toBe(await c.psql('SELECT system_identifier FROM pg_control_system()'));
    expect(m!.encryption.recipients).toEqual([f.recipient]);

    // The WAL span: LSNs parse, the segments are those of the LSNs.
    const w = m!.wal!;
    expect(w.timeline).toBe(1);
    expect(parseLsn(w.stopLsn) > parseLsn(w.startLsn)).toBe(true);
    expect(w.startSegment).toBe(segmentOfLsn(w.startLsn, 1));
    expect(w.stopSegment).toBe(segmentOfLsn(w.stopLsn, 1));

    // The stored object: its size and sha256, an age file the age CLI decrypts.
    const obj = await s3Bytes(`phys/${m!.archive.key}`);
    expect(obj.length).toBe(m!.archive.size);
    expect(sha256(obj)).toBe(m!.archive.sha256);
    const tags = await f.s3.send(new GetObjectTaggingCommand({ Bucket: f.bucket, Key: `phys/${m!.archive.key}` }));
    expect(tags.TagSet).toContainEqual({ Key: 'coffer-tier', Value: 'monthly' });
    const file = f.path('base.tar.zst.age');
    await fsp.writeFile(file, obj);
    const names = (await untar(f.identityFile, file, ['-t'])).toString('utf8').split('\n');
    for (const n of ['PG_VERSION', 'backup_label', 'backup_manifest', 'global/pg_control', ...segments(m!).map((s) => `pg_wal/${s}`)]) expect(names).toContain(n);
    const backupManifest = await untar(f.identityFile, file, ['-xO', 'backup_manifest']);
    expect(sha256(backupManifest)).toBe(m!.backupManifestSha256);
    expect(JSON.parse(backupManifest.toString('utf8'))['PostgreSQL-Backup-Manifest-Version']).toBe(1);

    // The attachment: encrypted, not compressed, byte for byte the file.
    const a = m!.attachments[0]!;
    expect(a.name).toBe('migration.sql');
    expect(a.plainSha256).toBe(sha256(await fsp.readFile(note)));
    const aFile = f.path('attach.age');
    await fsp.writeFile(aFile, await s3Bytes(`phys/${a.key}`));
    expect((await execa('age', ['-d', '-i', f.identityFile, aFile])).stdout).toBe('ALTER TABLE t ADD COLUMN w int;');
  });

  it('to a file repository, listed by `list` with its cluster; --label makes it manual', async () => {
    const repo = f.path('repo');
    const r = await run(['backup', '--physical', '--cluster', 'main', '--to', repo, '--recipient', f.recipient, '--fast-checkpoint', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const [m] = JSON.parse(r.stdout) as PhysicalManifest[];
    const file = path.join(repo, m!.archive.key);
    const names = (await untar(f.identityFile, file, ['-t'])).toString('utf8').split('\n');
    for (const n of ['PG_VERSION', 'backup_label', 'backup_manifest', `pg_wal/${m!.wal!.startSegment}`]) expect(names).toContain(n);
    expect(sha256(await fsp.readFile(file))).toBe(m!.archive.sha256);

    const again = await run(['backup', '--physical', '--cluster', 'main', '--to', repo, '--recipient', f.recipient, '--fast-checkpoint', '--label', 'pre-upgrade', '--json']);
    expect(again.code, again.stderr).toBe(0);
    const [m2] = JSON.parse(again.stdout) as PhysicalManifest[];
    expect(m2!.tier).toBe('manual');

    const list = await run(['list', '--from', repo, '--json']);
    expect(list.code, list.stderr).toBe(0);
    const rows = JSON.parse(list.stdout) as Array<Record<string, unknown>>;
    // Newest first by id; two backups in one second order by their random suffix.
    expect(rows.map((x) => x.id)).toEqual([m2!.id, m!.id].sort().reverse());
    const first = rows.find((x) => x.id === m!.id);
    expect(first).toMatchObject({ cluster: 'main', kind: 'physical', tier: 'monthly', size: m!.archive.size, sha256: m!.archive.sha256, key: m!.archive.key, majorVersion: 15 });
    expect(first).not.toHaveProperty('database');
    expect(rows.find((x) => x.id === m2!.id)).toMatchObject({ label: 'pre-upgrade' });
    const text = await run(['list', '--from', repo, '--cluster', 'main']);
    expect(text.stdout).toMatch(/CLUSTER\s+KIND/);
    expect(text.stdout).toContain(`${m!.wal!.startLsn}-${m!.wal!.stopLsn}`);
    const other = await run(['list', '--from', repo, '--cluster', 'other']);
    expect(other.stdout).toContain('no backups');

    // The catalog: latest and by id; a manifest copied to another backup's key is not a backup.
    const store = await openStore(repo);
    try {
      // latest: the newest id (two backups in one second order by their random suffix)
      expect((await findPhysicalBackup(store, { cluster: 'main', selector: 'latest' })).manifest).toEqual(m2!.id > m!.id ? m2 : m);
      expect((await findPhysicalBackup(store, { cluster: 'main', selector: m!.id })).manifest).toEqual(m);
      await expect(findPhysicalBackup(store, { cluster: 'other', selector: 'latest' })).rejects.toThrow(/no completed physical backup of cluster "other"/);
    } finally {
      store.close();
    }
    const moved = `cluster=main/daily/${m!.id.slice(0, -8)}00000000.manifest.json`;
    await fsp.mkdir(path.join(repo, 'cluster=main', 'daily'), { recursive: true });
    await fsp.copyFile(path.join(repo, `cluster=main/monthly/${m!.id}.manifest.json`), path.join(repo, moved));
    const swapped = await run(['list', '--from', repo, '--json']);
    expect((JSON.parse(swapped.stdout) as unknown[]).length).toBe(2);
    expect(swapped.stderr).toContain('describes another backup');
  });

  it('refuses a backup of another PostgreSQL system under a --cluster name that holds one (both identifiers named); nothing of it is stored; its own name works', async () => {
    const repo = f.path('two-systems');
    const first = await run(['backup', '--physical', '--cluster', 'shared', '--to', repo, '--recipient', f.recipient, '--fast-checkpoint', '--json']);
    expect(first.code, first.stderr).toBe(0);
    const [m] = JSON.parse(first.stdout) as PhysicalManifest[];
    const other = await startCluster();
    try {
      const listing = async (): Promise<string[]> => (await fsp.readdir(path.join(repo, 'cluster=shared', m!.tier))).sort();
      const before = await listing();
      const r = await f.run(['backup', '--physical', '--cluster', 'shared', '--to', repo, '--recipient', f.recipient, '--fast-checkpoint'], other.env());
      expect(r.code, r.stderr).toBe(2);
      const sysid = (await other.psql('SELECT system_identifier FROM pg_control_system()')).trim();
      expect(errorLine(r.stderr)).toContain(`this server belongs to PostgreSQL system ${sysid}, but --cluster shared holds system ${m!.postgres.systemIdentifier}; not stored`);
      expect(r.stderr).toContain('give it a --cluster name of its own');
      expect(await listing()).toEqual(before);
      // The first backup recorded its system; the other system's real WAL segments are refused
      // (exit 5, nothing stored), the first one's stored, as the marker says; without the marker
      // (an archive from before markers) the newest backup's manifest says the same.
      const marker = path.join(repo, 'cluster=shared', 'system');
      expect(await fsp.readdir(marker)).toEqual([m!.postgres.systemIdentifier]);
      // A copy of each server's current segment (a live one may change while it is read).
      const segmentOf = async (cl: ThrowawayCluster): Promise<string> => {
        const name = (await cl.psql('SELECT pg_walfile_name(pg_current_wal_lsn())')).trim();
        const dir = f.path(`seg-${cl.port}`);
        await fsp.mkdir(dir, { recursive: true });
        await fsp.copyFile(path.join(cl.dataDir, 'pg_wal', name), path.join(dir, name));
        return path.join(dir, name);
      };
      const theirs = await segmentOf(other);
      const walDir = path.join(repo, 'cluster=shared', 'wal');
      const stored = async (): Promise<string[]> => (await fsp.readdir(walDir).catch(() => [] as string[])).sort();
      for (const withMarker of [true, false]) {
        if (!withMarker) await fsp.rename(marker, `${marker}.aside`);
        const push = await f.run(['wal-push', '--cluster', 'shared', '--to', repo, '--recipient', f.recipient, theirs]);
        expect(push.code, push.stderr).toBe(5);
        expect(errorLine(push.stderr)).toContain(`WAL segment ${path.basename(theirs)} belongs to PostgreSQL system ${sysid}, but --cluster shared holds system ${m!.postgres.systemIdentifier}${withMarker ? '' : ` (backup `}`);
        expect(await stored()).toEqual([]);
        const again = await f.run(['backup', '--physical', '--cluster', 'shared', '--to', repo, '--recipient', f.recipient, '--fast-checkpoint'], other.env());
        expect(again.code, again.stderr).toBe(2);
      }
      await fsp.rename(`${marker}.aside`, marker);
      const ours = await f.run(['wal-push', '--cluster', 'shared', '--to', repo, '--recipient', f.recipient, await segmentOf(c)]);
      expect(ours.code, ours.stderr).toBe(0);
      expect(await stored()).toHaveLength(1);
      const own = await f.run(['backup', '--physical', '--cluster', 'other', '--to', repo, '--recipient', f.recipient, '--fast-checkpoint'], other.env());
      expect(own.code, own.stderr).toBe(0);
      const theirsOwn = await f.run(['wal-push', '--cluster', 'other', '--to', repo, '--recipient', f.recipient, theirs]);
      expect(theirsOwn.code, theirsOwn.stderr).toBe(0);
      // the same system again under its name: accepted
      const again = await run(['backup', '--physical', '--cluster', 'shared', '--to', repo, '--recipient', f.recipient, '--fast-checkpoint']);
      expect(again.code, again.stderr).toBe(0);
    } finally {
      await other.stop();
    }
  });

  it('refuses a role without REPLICATION, naming ALTER ROLE and pg_hba.conf; nothing is stored', async () => {
    await c.psql('CREATE ROLE plain_reader LOGIN');
    const repo = f.path('norepl');
    const r = await run(['backup', '--physical', '--cluster', 'main', '--to', repo, '--recipient', f.recipient], { PGUSER: 'plain_reader' });
    expect(r.code, r.stderr).toBe(3);
    expect(errorLine(r.stderr)).toMatch(/role "plain_reader" has neither REPLICATION nor SUPERUSER/);
    expect(errorLine(r.stderr)).toContain('ALTER ROLE "plain_reader" REPLICATION');
    expect(errorLine(r.stderr)).toContain('pg_hba.conf');
    await expect(fsp.readdir(repo)).rejects.toThrow();
  });

  it('refuses a cluster with an extra tablespace, naming it; nothing is stored', async () => {
    const dir = await serverOwnedDir(path.join(path.dirname(c.dataDir), 'spc_extra'));
    await c.psql(`CREATE TABLESPACE spc_extra LOCATION '${dir}'`);
    try {
      const r = await run(['backup', '--physical', '--cluster', 'main', '--to', f.repo('spc'), '--recipient', f.recipient]);
      expect(r.code, r.stderr).toBe(2);
      expect(errorLine(r.stderr)).toContain(`tablespaces outside its data directory: spc_extra (${dir})`);
      expect(r.stderr).toContain('--data-dir');
      expect(await listAllKeys(f.s3, f.bucket, 'spc/')).toEqual([]);
    } finally {
      await c.psql('DROP TABLESPACE spc_extra');
    }
  });

  it('fails a --pg-basebackup-command that cuts the tar short and exits 0; nothing is stored, no upload left', async () => {
    const script = f.path('short-basebackup.sh');
    await fsp.writeFile(script, `#!/bin/sh\n"${c.binDir}/pg_basebackup" "$@" | head -c 300000\nexit 0\n`, { mode: 0o755 });
    const r = await run(['backup', '--physical', '--cluster', 'main', '--to', f.repo('short'), '--recipient', f.recipient, '--fast-checkpoint', '--pg-basebackup-command', script]);
    expect(r.code, r.stderr).toBe(5);
    expect(errorLine(r.stderr)).toMatch(/pg_basebackup's output is not a whole tar archive: it ends after 300000 bytes .*nothing was stored/);
    expect(await listAllKeys(f.s3, f.bucket, 'short/')).toEqual([]);
    expect(await listMultipartUploads(f.s3, f.bucket)).toEqual([]);
  });

  it('a run stopped by SIGTERM while the tar streams exits 143 and leaves nothing: no object, no upload', async () => {
    // pg_basebackup at 32 kB/s (its --max-rate): the run is surely mid-stream when stopped.
    const script = f.path('slow-basebackup.sh');
    await fsp.writeFile(script, `#!/bin/sh\n[ "$1" = --version ] && exec "${c.binDir}/pg_basebackup" "$@"\nexec "${c.binDir}/pg_basebackup" --max-rate=32k "$@"\n`, { mode: 0o755 });
    const p = startCoffer(['backup', '--physical', '--cluster', 'main', '--to', f.repo('term'), '--recipient', f.recipient, '--fast-checkpoint', '--pg-basebackup-command', script], { env: f.env(c.env()) });
    let log = '';
    p.stderr!.on('data', (b: Buffer) => (log += b.toString()));
    const deadline = Date.now() + 20_000;
    while (!log.includes('physical backup started') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 1000));
    p.kill('SIGTERM');
    const stopped = Date.now();
    const r = await p;
    expect(r.exitCode, log).toBe(143);
    expect(Date.now() - stopped).toBeLessThan(15_000);
    expect(await listAllKeys(f.s3, f.bucket, 'term/')).toEqual([]);
    expect(await listMultipartUploads(f.s3, f.bucket)).toEqual([]);
  });

  it('says what to install when pg_basebackup is missing, and needs --cluster', async () => {
    const r = await run(['backup', '--physical', '--cluster', 'main', '--to', f.path('missing'), '--recipient', f.recipient, '--pg-basebackup-command', '/nonexistent/pg_basebackup']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/not found.*postgresql-client/);
    const n = await run(['backup', '--physical', '--to', f.path('missing'), '--recipient', f.recipient]);
    expect(n.code).toBe(2);
    expect(errorLine(n.stderr)).toContain('--cluster NAME');
  });
});
