/** Writing secret key files safely (`coffer keygen --out`). */
import { dirname } from 'node:path';
import { writeFileAtomic } from '../atomic-write.js';
import { errnoWords, UsageError } from '../errors.js';
import { makeDirs } from '../mkdirs.js';

/**
 * Create `path` holding `text`, readable and writable by the owner only (mode 0600), and flush
 * it to disk. Never overwrites: an exclusive atomic write (src/atomic-write.ts), so the key file
 * appears complete or not at all. Missing parent directories are created with mode 0700.
 *
 * @throws {UsageError} "<path> already exists; refusing to overwrite a key file", or when the
 *   directory or file cannot be created or written (permission denied, not a directory, …).
 */
export async function writeSecretFileExclusive(path: string, text: string): Promise<void> {
  const dir = dirname(path);
  try {
    await makeDirs(dir, 0o700);
  } catch (err) {
    throw new UsageError(`cannot create directory ${dir} for key file ${path}: ${errnoWords(err)}`);
  }
  try {
    await writeFileAtomic(path, text, { mode: 0o600, exclusive: true });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EEXIST') {
      throw new UsageError(`${path} already exists; refusing to overwrite a key file`, {
        hint: 'choose another path or move the existing file away first',
      });
    }
    throw new UsageError(`cannot ${e.syscall === 'open' || e.syscall === 'link' ? 'create' : 'write'} key file ${path}: ${errnoWords(err)}`);
  }
}
