/**
 * `mkdir -p` without node's `recursive` mode, which never returns where mkdir fails with ENOENT
 * under a parent that exists (procfs, sysfs: `--to /proc/repo` hung a backup forever, and no
 * signal could end the call). Each missing directory is made on its own, so an error is the
 * file system's own, at once.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

/** Makes `dir` and its missing parents with `mode`; returns the first directory made (undefined when `dir` existed), as `mkdir(dir, { recursive: true })` does. */
export async function makeDirs(dir: string, mode?: number): Promise<string | undefined> {
  const missing: string[] = [];
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    try {
      if ((await fsp.stat(d)).isDirectory()) break;
      throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${dir}'`), { code: 'ENOTDIR', errno: -20, syscall: 'mkdir', path: d });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || path.dirname(d) === d) throw err;
      missing.push(d);
    }
  }
  let first: string | undefined;
  for (const d of missing.reverse()) {
    try {
      await fsp.mkdir(d, mode === undefined ? {} : { mode });
      first ??= d;
    } catch (err) {
      // Made meanwhile by another run: fine, if it is a directory (the next mkdir, or the caller's use, says otherwise).
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  return first;
}
