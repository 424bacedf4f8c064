/**
 * coffer as a PostgreSQL server runs it (archive_command, restore_command): as the server's OS
 * user, which is `postgres` when the tests run as root. That user may not be able to read this
 * checkout (a clone under /root); then a mirror of the package (dist, node_modules,
 * package.json: hard links where possible) under the system temp directory is used instead.
 */
import { spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { COFFER_BIN } from './cli.js';

let mirror: Promise<string> | undefined;

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** uid/gid of the `postgres` OS user when the tests run as root (the throwaway servers run as it), else undefined. */
export function serverOsUser(): { uid: number; gid: number } | undefined {
  if (!isRoot()) return undefined;
  const id = (f: string): number => Number(spawnSync('id', [f, 'postgres'], { encoding: 'utf8' }).stdout.trim());
  return { uid: id('-u'), gid: id('-g') };
}

function readableByServer(file: string): boolean {
  const u = serverOsUser();
  return !u || spawnSync('test', ['-r', file], { uid: u.uid, gid: u.gid }).status === 0;
}

/** The absolute path of a dist/cli/main.js the server's OS user can run. */
export function serverCofferBin(): Promise<string> {
  if (readableByServer(COFFER_BIN)) return Promise.resolve(COFFER_BIN);
  mirror ??= (async () => {
    const root = path.resolve(path.dirname(COFFER_BIN), '../..');
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-pkg-'));
    await fsp.chmod(dir, 0o755);
    for (const name of ['package.json', 'bin', 'dist', 'node_modules']) {
      const linked = spawnSync('cp', ['-al', path.join(root, name), dir]);
      if (linked.status !== 0) spawnSync('cp', ['-a', path.join(root, name), dir]);
    }
    spawnSync('chmod', ['-R', 'a+rX', dir]);
    process.once('exit', () => spawnSync('rm', ['-rf', dir]));
    return path.join(dir, 'dist/cli/main.js');
  })();
  return mirror;
}

/** Gives a file or directory (recursively) to the server's OS user when the tests run as root. */
export async function giveToServer(p: string): Promise<void> {
  const u = serverOsUser();
  if (u) spawnSync('chown', ['-R', `${u.uid}:${u.gid}`, p]);
}

/** `'…'` for /bin/sh. */
export function sh(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
