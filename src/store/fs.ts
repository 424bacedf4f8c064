import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { commitFile, syncDir, TEMP_PREFIX, tempPathIn, writeFileAtomic } from '../atomic-write.js';
import { errnoWords, StorageError } from '../errors.js';
import type { GetOptions, ObjectInfo, ObjectStore, PutBytesOptions, PutStreamOptions } from './object-store.js';
import { makeDirs } from '../mkdirs.js';

const DIR_MODE = 0o700;
const FILE_MODE = 0o600;

/**
 * A repository in a local directory. Objects are files under `root`, directories 0700, files
 * 0600. A put is an exclusive atomic write (src/atomic-write.ts): `.coffer-tmp-*` beside the
 * target, fsynced, hard-linked to the final name (which fails if the name exists: write-once),
 * directory fsynced; so a file appears under its name only when complete, and a crash leaves at
 * most a temporary (`list` never shows them).
 */
/** Files of one directory stat'ed at once while listing. */
const STAT_BATCH = 64;

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

  /**
   * Creates `dir` and its missing parents. Each new directory's name is fsynced in its parent, so
   * that an object committed below it survives a crash (the commit fsyncs only the object's own
   * directory): the first WAL file of a cluster creates `cluster=<name>/wal/`, and archive_command
   * promises that it is durable when it exits 0.
   */
  private async ensureDir(dir: string): Promise<void> {
    let first: string | undefined;
    try {
      first = await makeDirs(dir, DIR_MODE);
    } catch (err) {
      throw fsError(err, `create directory ${dir}`);
    }
    if (first === undefined) return;
    await this.inheritOwner(first, dir);
    const created: string[] = [];
    for (let d = dir; d !== path.dirname(first); d = path.dirname(d)) created.push(path.dirname(d));
    for (const d of created.reverse()) await syncDir(d);
  }

  /**
   * Run as root, the directories just made (`first` down to `dir`) take the owner of the one they
   * were made in: a repository owned by the server's user stays usable by it (a root-run
   * `backup --physical` made `cluster=<name>/` root's, mode 0700, and the server's wal-push could
   * no longer list its WAL). Not root: they are the user's own already. Best effort.
   */
  private async inheritOwner(first: string, dir: string): Promise<void> {
    if (process.getuid?.() !== 0) return;
    try {
      const parent = await fsp.stat(path.dirname(first));
      if (parent.uid === 0 && parent.gid === 0) return;
      for (let d = dir; ; d = path.dirname(d)) {
        await fsp.chown(d, parent.uid, parent.gid);
        if (d === first) break;
      }
    } catch {
      // Best effort (root squashed on NFS may not chown): the directory works for this run as it is.
    }
  }

  async putStream(key: string, body: Readable, options: PutStreamOptions): Promise<{ size: number }> {
    const target = this.pathOf(key);
    await this.ensureDir(path.dirname(target));
    if (await exists(target)) throw new StorageError('Exists', `${this.location}/${key} already exists; refusing to overwrite`);
    const tmp = tempPathIn(path.dirname(target));
    let size = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        size += chunk.length;
        options.onProgress?.(size);
        cb(null, chunk);
      },
    });
    let out: WriteStream | undefined;
    try {
      out = createWriteStream(tmp, { flags: 'wx', mode: FILE_MODE });
      await pipeline(body, counter, out, { signal: options.signal });
      await this.commit(() => commitFile(tmp, target, { exclusive: true }), key);
      return { size };
    } catch (err) {
      // A body that fails at once can end the pipeline while the temporary is still being
      // opened: wait until the stream is closed (its open done), or the file would appear after
      // the removal below and stay.
      const w = out;
      if (w && !w.closed) {
        await new Promise<void>((resolve) => {
          w.once('close', () => resolve());
          w.destroy();
        });
      }
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      if (err instanceof StorageError) throw err;
      if (options.signal.aborted) throw new StorageError('Aborted', `write ${key}: aborted`, { cause: err });
      // Errors of the body (the producer) keep their own type and message.
      if (!isFsError(err)) throw err;
      throw fsError(err, `write ${path.join(this.root, key)}`);
    }
  }

  /** Runs an exclusive commit; a taken name is the store's `Exists`. */
  private async commit(write: () => Promise<void>, key: string): Promise<void> {
    try {
      await write();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new StorageError('Exists', `${this.location}/${key} already exists; refusing to overwrite`);
      }
      throw err;
    }
  }

  async putBytes(key: string, data: Uint8Array, options?: PutBytesOptions): Promise<void> {
    const target = this.pathOf(key);
    await this.ensureDir(path.dirname(target));
    try {
      options?.signal?.throwIfAborted();
      await this.commit(() => writeFileAtomic(target, data, { mode: FILE_MODE, exclusive: true }), key);
    } catch (err) {
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
    const end = Math.min(st.size, options?.end ?? st.size);
    const body = createReadStream('', { fd: fh, start, ...(end > start ? { end: end - 1 } : {}), highWaterMark: 256 * 1024, signal: options?.signal });
    return { body, size: Math.max(0, end - start) };
  }

  async getBytes(key: string): Promise<Buffer> {
    const file = this.pathOf(key);
    try {
      return await fsp.readFile(file);
    } catch (err) {
      throw fsError(err, `read ${file}`);
    }
  }

  async assertPresent(): Promise<void> {
    let st: import('node:fs').Stats;
    try {
      st = await fsp.stat(this.root);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') throw new StorageError('NoSuchBucket', `the repository directory ${this.root} does not exist`, { cause: err, hint: 'check the repository path (--from, --to, COFFER_REPOSITORY), and that the volume it is on is mounted' });
      throw fsError(err, `stat ${this.root}`);
    }
    if (!st.isDirectory()) throw new StorageError('NoSuchBucket', `the repository ${this.root} is not a directory`);
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
      const files: Array<{ key: string; path: string }> = [];
      for (const e of entries) {
        if (e.name.startsWith(TEMP_PREFIX)) continue;
        const childKey = key ? `${key}/${e.name}` : e.name;
        const childPath = path.join(dir, e.name);
        if (e.isDirectory()) {
          if (childKey.startsWith(prefix) || prefix.startsWith(`${childKey}/`)) stack.push({ dir: childPath, key: childKey });
        } else if (e.isFile() && childKey.startsWith(prefix)) {
          files.push({ key: childKey, path: childPath });
        }
      }
      // A directory's files are stat'ed together (a few hundred at most: one day's, tier's or WAL's), not one after the other.
      for (let i = 0; i < files.length; i += STAT_BATCH) {
        const batch = files.slice(i, i + STAT_BATCH);
        const stats = await Promise.all(batch.map((f) => fsp.stat(f.path).catch(() => undefined)));
        for (const [j, st] of stats.entries()) if (st) yield { key: batch[j]!.key, size: st.size, lastModified: st.mtime };
      }
    }
  }

  async delete(key: string): Promise<void> {
    try {
      // unlink, not rm: rm takes a file it cannot unlink (EPERM: immutable, a sticky directory)
      // for a directory and reports its scandir's ENOTDIR instead of the real reason.
      await fsp.unlink(this.pathOf(key));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
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
      await fsp.unlink(path.join(this.root, ...rel.split('/')));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
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

function isFsError(err: unknown): boolean {
  return typeof (err as NodeJS.ErrnoException)?.code === 'string' && typeof (err as NodeJS.ErrnoException)?.syscall === 'string';
}

function fsError(err: unknown, what: string): StorageError {
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOENT':
      return new StorageError('NotFound', `${what}: ${errnoWords(err)}`, { cause: err });
    case 'EACCES':
      return new StorageError('AccessDenied', `${what}: ${errnoWords(err)}`, { cause: err, hint: 'check the directory owner and mode' });
    case 'EPERM':
      return new StorageError('AccessDenied', `${what}: ${errnoWords(err)}`, { cause: err, hint: 'check the directory owner and mode, and the file\'s attributes (lsattr: immutable, append-only)' });
    case 'ENOSPC':
      return new StorageError('Failed', `${what}: ${errnoWords(err)}`, { cause: err, hint: 'free disk space or use another repository' });
    case 'EROFS':
      return new StorageError('AccessDenied', `${what}: ${errnoWords(err)}`, { cause: err });
    default:
      return new StorageError('Failed', `${what}: ${e?.message ?? String(err)}`, { cause: err });
  }
}
