/**
 * What the physical-backup tests share: a private PostgreSQL cluster (its data directory is
 * backed up whole, and one test stops it), the standard tools reading a stored archive, and the
 * server user's uid/gid for files the server must own.
 */
import { spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { execa } from 'execa';
import { startThrowawayCluster, type ThrowawayCluster } from '../../src/demo/throwaway-cluster.js';

export function sha256(b: Buffer | string): string {
  return createHash('sha256').update(b).digest('hex');
}

/** uid/gid of the server's OS user (`postgres` when the tests run as root), or ours. */
export function serverUser(): { uid?: number; gid?: number } {
  if (process.getuid?.() !== 0) return {};
  const id = (flag: string): number => Number(spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' }).stdout);
  return { uid: id('-u'), gid: id('-g') };
}

/** A directory the server user owns (for a tablespace, or a copy to start). */
export async function serverOwnedDir(dir: string): Promise<string> {
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const u = serverUser();
  if (u.uid !== undefined && u.gid !== undefined) await fsp.chown(dir, u.uid, u.gid);
  return dir;
}

/** A private cluster; `stop()` removes it. */
export function startCluster(): Promise<ThrowawayCluster> {
  return startThrowawayCluster({ settings: { max_wal_senders: '4' } });
}

/** Stops the server cleanly (pg_ctl stop -m fast) and keeps its data directory. */
export async function stopServerKeepDir(c: ThrowawayCluster): Promise<void> {
  const r = await execa(`${c.binDir}/pg_ctl`, ['stop', '-D', c.dataDir, '-m', 'fast', '-w', '-t', '30'], { ...serverUser(), cwd: '/', reject: false, extendEnv: false, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  if (r.exitCode !== 0) throw new Error(`pg_ctl stop: ${String(r.stderr)}`);
}

/** `age -d -i IDENTITY FILE | zstd -d` then `tar` with `tarArgs` on it: the standard tools only. */
export async function untar(identityFile: string, file: string, tarArgs: string[]): Promise<Buffer> {
  const r = await execa('bash', ['-c', 'set -o pipefail; age -d -i "$1" "$2" | zstd -d -q | tar "${@:3}"', 'x', identityFile, file, ...tarArgs], { reject: false, encoding: 'buffer', stripFinalNewline: false });
  if (r.exitCode !== 0) throw new Error(`age | zstd | tar ${tarArgs.join(' ')}: ${Buffer.from(r.stderr).toString()}`);
  return Buffer.from(r.stdout);
}
