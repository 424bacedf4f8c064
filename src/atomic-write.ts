/**
 * The one way coffer writes a local file that someone else reads (a repository object, a key
 * file, the lock file, the metrics file, a drill result): a reader sees the old file or the
 * whole new one, never part of one, and a crash leaves at most a temporary.
 *
 * The data goes into a temporary beside the target (`.coffer-tmp-*`, created exclusively with
 * the requested mode), is fsynced, then renamed over the target, or hard-linked to it when the
 * write is exclusive (which fails with EEXIST if the name exists); then the directory is
 * fsynced so that the new name survives a crash too. Errors are the file system's own
 * (`NodeJS.ErrnoException`): the caller words them (see `errnoWords` in errors.ts).
 */
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

/** Temporaries start with this (a file store's `list` never shows them). */
export const TEMP_PREFIX = '.coffer-tmp-';

/** A fresh temporary's path in `dir`. */
export function tempPathIn(dir: string): string {
  return path.join(dir, `${TEMP_PREFIX}${randomBytes(6).toString('hex')}`);
}

export interface AtomicWriteOptions {
  /** The file's mode, exactly (not reduced by the umask). */
  mode: number;
  /** Never replace an existing file: fails with EEXIST (write-once). */
  exclusive?: boolean;
}

/**
 * Writes `data` to `file` atomically and durably (see the module doc). The temporary is removed
 * whatever happens.
 *
 * @throws the file system's error; EEXIST when `exclusive` and `file` exists.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, opts: AtomicWriteOptions): Promise<void> {
  const tmp = tempPathIn(path.dirname(path.resolve(file)));
  try {
    const fh = await fsp.open(tmp, 'wx', opts.mode);
    try {
      await fh.chmod(opts.mode);
      await fh.writeFile(data);
    } finally {
      await fh.close();
    }
    await commitFile(tmp, file, opts);
  } finally {
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
  }
}

/**
 * Puts a complete temporary (written by a stream) in place: fsync it, rename it over `file` or
 * (exclusive) link it to `file`, remove the temporary, fsync the directory.
 *
 * @throws the file system's error; EEXIST when `exclusive` and `file` exists.
 */
export async function commitFile(tmp: string, file: string, opts: { exclusive?: boolean }): Promise<void> {
  const fh = await fsp.open(tmp, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
  if (opts.exclusive) {
    try {
      await fsp.link(tmp, file);
    } finally {
      await fsp.rm(tmp, { force: true });
    }
  } else {
    await fsp.rename(tmp, file);
  }
  await syncDir(path.dirname(path.resolve(file)));
}

/** fsync a directory, so that names created or removed in it survive a crash (best effort). */
export async function syncDir(dir: string): Promise<void> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(dir, 'r');
  } catch {
    return;
  }
  try {
    await fh.sync();
  } catch {
    // Some filesystems refuse fsync on directories; the data file itself is synced.
  } finally {
    await fh.close();
  }
}
