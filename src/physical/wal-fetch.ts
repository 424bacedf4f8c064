/**
 * `coffer wal-fetch`: PostgreSQL's restore_command. Finds `%f` among the cluster's archived WAL,
 * downloads, decrypts and decompresses it, checks the plaintext's sha256 against the one in its
 * key, and writes `%p` atomically (a temporary in the same directory, fsync, rename, directory
 * fsync), so PostgreSQL never reads part of a file.
 *
 * Exit codes, and why (PostgreSQL 15, src/backend/access/transam/xlogarchive.c,
 * RestoreArchivedFile): PostgreSQL runs restore_command with system() and, when it fails, calls
 * `ereport(wait_result_is_any_signal(rc, true) ? FATAL : DEBUG2, "could not restore file …")`
 * and then treats the file as absent: the end of the archive, after which recovery ENDS and the
 * server starts — on partial data, if the file was in fact there but could not be read.
 * `wait_result_is_any_signal(rc, true)` (src/common/wait_error.c) is true for a child killed by
 * a signal and for an exit status above 125; an exit status of 128 + SIGTERM (143) is read as a
 * fast shutdown (proc_exit(1)). Hence:
 * - **1**: the file is not in the archive (the normal end of recovery; PostgreSQL also asks for
 *   files that never existed, such as the next timeline's history file). One info line.
 * - **200** ({@link ExitCode.walFetchFailed}): anything else: a damaged or truncated object, a
 *   wrong identity, two different copies of the name, S3 unreachable, bad flags, a bug. The
 *   startup process stops with FATAL and the server does not open for connections; fix the
 *   cause and start it again (recovery resumes).
 * - 130 / 143: stopped by SIGINT / SIGTERM (also above 125).
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { commitFile, tempPathIn } from '../atomic-write.js';
import { isWalFileName } from '../catalog/cluster-layout.js';
import { errnoWords, IntegrityError, NotArchivedError, StorageError, UsageError } from '../errors.js';
import type { ObjectStore } from '../store/object-store.js';
import { decodeWalFile } from './wal-codec.js';
import { storedCopies } from './wal-push.js';

export interface WalFetchRequest {
  store: ObjectStore;
  cluster: string;
  /** `%f`. */
  name: string;
  /** `%p`: where to write it (relative paths against `cwd`). */
  target: string;
  identities: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  signal: AbortSignal;
}

export interface WalFetchResult {
  name: string;
  key: string;
  size: number;
  target: string;
}

/** Restores one WAL file (see the module doc). @throws {NotArchivedError} when it is not in the archive. */
export async function walFetch(req: WalFetchRequest): Promise<WalFetchResult> {
  if (!isWalFileName(req.name)) {
    throw new UsageError(`${JSON.stringify(req.name)} is not a WAL file name`, { hint: "restore_command = 'coffer wal-fetch --cluster NAME --from REPO --identity FILE %f %p'" });
  }
  const copies = await storedCopies(req.store, req.cluster, req.name, req.signal);
  // Not archived, or a repository that is not there (an unmounted directory): only the first
  // may end the recovery.
  if (copies.length === 0) await req.store.assertPresent?.({ signal: req.signal });
  if (copies.length === 0) throw new NotArchivedError(`${req.name} is not in the archive of cluster ${JSON.stringify(req.cluster)} (${req.store.location})`);
  const hashes = [...new Set(copies.map((c) => c.sha256))];
  if (hashes.length > 1) {
    throw new IntegrityError(`the archive holds ${hashes.length} different copies of ${req.name} for cluster ${JSON.stringify(req.cluster)}; refusing to choose`, {
      hint: `two servers archived under one --cluster; find out which copy belongs to this server's history (${copies.map((c) => c.key).join(', ')})`,
    });
  }
  const { key, sha256 } = copies[0]!;
  let stored: Buffer;
  try {
    stored = await req.store.getBytes(key, { signal: req.signal });
  } catch (err) {
    // Listed a moment ago: a NotFound now is no "end of archive" (expired or deleted under us).
    if (err instanceof StorageError && err.code === 'NotFound') throw new StorageError('Failed', `${key} was listed but cannot be read: ${err.message}`, { cause: err });
    throw err;
  }
  const plain = await decodeWalFile(stored, req.identities, sha256, key, { env: req.env, signal: req.signal });

  const target = path.resolve(req.cwd, req.target);
  const tmp = tempPathIn(path.dirname(target));
  try {
    await fsp.writeFile(tmp, plain, { flag: 'wx', mode: 0o600 });
    await commitFile(tmp, target, {});
  } catch (err) {
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw new StorageError('Failed', `write ${target}: ${errnoWords(err)}`, { cause: err, hint: 'restore_command runs in the data directory: pass %p as it is, and check that the directory is writable by the server' });
  }
  return { name: req.name, key, size: plain.length, target };
}
