import { createReadStream, createWriteStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { StorageError } from '../errors.js';
import type { GetOptions, ObjectInfo, ObjectStore, PutBytesOptions, PutStreamOptions } from './object-store.js';

const DIR_MODE = 0o700;
const FILE_MODE = 0o600;
/** Temporary files start with this; `list` never shows them. */
export const TEMP_PREFIX = '.coffer-tmp-';

/**
 * A repository in a local directory. Objects are files under `root`, directories 0700, files
 * 0600. A put writes `.coffer-tmp-*` beside the target, fsyncs it, then hard-links it to the
 * final name (which fails if the name exists: write-once) and fsyncs the directory; so a file
 * appears under its name only when complete, and a crash leaves at most a temp file.
 */
export class FsStore implements ObjectStore {
  readonly location: string;
  constructor(readonly root: string) {
    this.location = `file://${root}`;
  }

  private pathOf(key: string): string {
    const parts = key.split('/');
    if (key === '' || parts.some((p) => p === '' || p === '.' || p === '..')) {
      throw new StorageError('Failed', `invalid object key ${JSON.stringify(key)}`);
    }
    return path.join(this.root, ...parts);
  }

  private async ensureDir(dir: string): Promise<void> {
    try {
      await fsp.mkdir(dir, { recursive: true, mode: DIR_MODE });
    } catch (err) {
      throw fsError(err, `create directory ${dir}`);
    }
  }

  async putStream(key: string, body: Readable, options: PutStreamOptions): Promise<{ size: number }> {
    const target = this.pathOf(key);
    await this.ensureDir(path.dirname(target));
    if (await exists(target)) throw new StorageError('Exists', `${this.location}/${key} already exists; refusing to overwrite`);
    const tmp = path.join(path.dirname(target), `${TEMP_PREFIX}${randomBytes(6).toString('hex')}`);
    let size = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        size += chunk.length;
        options.onProgress?.(size);
        cb(null, chunk);
      },
    });
    try {
      const out = createWriteStream(tmp, { flags: 'wx', mode: FILE_MODE });
      await pipeline(body, counter, out, { signal: options.signal });
      await this.commit(tmp, target, key);
      return { size };
    } catch (err) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      if (err instanceof StorageError) throw err;
      if (options.signal.aborted) throw new StorageError('Aborted', `write ${key}: aborted`, { cause: err });
      // Errors of the body (the producer) keep their own type and message.
      if (!isFsError(err)) throw err;
      throw fsError(err, `write ${path.join(this.root, key)}`);
    }
  }

  /** fsync the temp file, link it into place (exclusive), fsync the directory. */
  private async commit(tmp: string, target: string, key: string): Promise<void> {
    const fh = await fsp.open(tmp, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await fsp.link(tmp, target);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new StorageError('Exists', `${this.location}/${key} already exists; refusing to overwrite`);
      }
      throw err;
    } finally {
      await fsp.rm(tmp, { force: true });
    }
    await syncDir(path.dirname(target));
  }

  async putBytes(key: string, data: Uint8Array, options?: PutBytesOptions): Promise<void> {
    const target = this.pathOf(key);
    await this.ensureDir(path.dirname(target));
    const tmp = path.join(path.dirname(target), `${TEMP_PREFIX}${randomBytes(6).toString('hex')}`);
    try {
      options?.signal?.throwIfAborted();
      await fsp.writeFile(tmp, data, { flag: 'wx', mode: FILE_MODE });
      await this.commit(tmp, target, key);
    } catch (err) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      if (err instanceof StorageError) throw err;
      throw fsError(err, `write ${target}`);
    }
  }

  async get(key: string, options?: GetOptions): Promise<{ body: Readable; size: number }> {
    const file = this.pathOf(key);
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, 'r');
    } catch (err) {
      throw fsError(err, `read ${file}`);
    }
    const st = await fh.stat();
    const start = options?.start ?? 0;
    const body = createReadStream('', { fd: fh, start, highWaterMark: 256 * 1024, signal: options?.signal });
    return { body, size: st.size - start };
  }

  async getBytes(key: string): Promise<Buffer> {
    const file = this.pathOf(key);
    try {
      return await fsp.readFile(file);
    } catch (err) {
      throw fsError(err, `read ${file}`);
    }
  }

  async head(key: string): Promise<{ size: number } | undefined> {
    try {
      const st = await fsp.stat(this.pathOf(key));
      return st.isFile() ? { size: st.size } : undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
      throw fsError(err, `stat ${key}`);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    // Walk only the directory that can contain the prefix.
    const slash = prefix.lastIndexOf('/');
    const dirKey = slash >= 0 ? prefix.slice(0, slash) : '';
    const start = dirKey ? path.join(this.root, ...dirKey.split('/')) : this.root;
    const stack: Array<{ dir: string; key: string }> = [{ dir: start, key: dirKey }];
    while (stack.length > 0) {
      const { dir, key } = stack.pop()!;
      let entries: import('node:fs').Dirent[];
      try {
        entries = await fsp.readdir(dir, { withFileTypes: true });
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR') continue;
        throw fsError(err, `list ${dir}`);
      }
      for (const e of entries) {
        if (e.name.startsWith(TEMP_PREFIX)) continue;
        const childKey = key ? `${key}/${e.name}` : e.name;
        const childPath = path.join(dir, e.name);
        if (e.isDirectory()) {
          if (childKey.startsWith(prefix) || prefix.startsWith(`${childKey}/`)) stack.push({ dir: childPath, key: childKey });
        } else if (e.isFile() && childKey.startsWith(prefix)) {
          const st = await fsp.stat(childPath).catch(() => undefined);
          if (st) yield { key: childKey, size: st.size, lastModified: st.mtime };
        }
      }
    }
  }

  async delete(key: string): Promise<void> {
    try {
      await fsp.rm(this.pathOf(key), { force: true });
    } catch (err) {
      throw fsError(err, `delete ${key}`);
    }
  }

  /**
   * Temporaries (`.coffer-tmp-*`) that no live run can own: left by a run that was killed
   * (SIGKILL, out of memory, power loss) and not modified for `minAgeMs`. A live run writes its
   * temporary continuously, so its modification time stays recent. Paths are relative to the
   * repository.
   */
  async staleTemporaries(minAgeMs: number, now = Date.now()): Promise<Array<{ path: string; size: number; modified: Date }>> {
    const out: Array<{ path: string; size: number; modified: Date }> = [];
    const stack = [''];
    while (stack.length > 0) {
      const rel = stack.pop()!;
      let entries: import('node:fs').Dirent[];
      try {
        entries = await fsp.readdir(path.join(this.root, rel), { withFileTypes: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw fsError(err, `list ${path.join(this.root, rel)}`);
      }
      for (const e of entries) {
        const childRel = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) stack.push(childRel);
        else if (e.isFile() && e.name.startsWith(TEMP_PREFIX)) {
          const st = await fsp.stat(path.join(this.root, childRel)).catch(() => undefined);
          if (st && now - st.mtimeMs >= minAgeMs) out.push({ path: childRel, size: st.size, modified: st.mtime });
        }
      }
    }
    return out.sort((a, b) => (a.path < b.path ? -1 : 1));
  }

  /** Removes one temporary found by {@link staleTemporaries}. */
  async removeTemporary(rel: string): Promise<void> {
    if (!path.basename(rel).startsWith(TEMP_PREFIX)) throw new Error(`internal: ${rel} is not a temporary`);
    try {
      await fsp.rm(path.join(this.root, ...rel.split('/')), { force: true });
    } catch (err) {
      throw fsError(err, `delete ${rel}`);
    }
  }

  close(): void {}
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.lstat(p);
    return true;
  } catch {
    return false;
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } catch {
    // Some filesystems refuse fsync on directories; the data file itself is synced.
  } finally {
    await fh.close();
  }
}

function isFsError(err: unknown): boolean {
  return typeof (err as NodeJS.ErrnoException)?.code === 'string' && typeof (err as NodeJS.ErrnoException)?.syscall === 'string';
}

function fsError(err: unknown, what: string): StorageError {
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOENT':
      return new StorageError('NotFound', `${what}: no such file`, { cause: err });
    case 'EACCES':
    case 'EPERM':
      return new StorageError('AccessDenied', `${what}: permission denied`, { cause: err, hint: 'check the directory owner and mode' });
    case 'ENOSPC':
      return new StorageError('Failed', `${what}: no space left on device`, { cause: err, hint: 'free disk space or use another repository' });
    case 'EROFS':
      return new StorageError('AccessDenied', `${what}: read-only file system`, { cause: err });
    default:
      return new StorageError('Failed', `${what}: ${e?.message ?? String(err)}`, { cause: err });
  }
}
