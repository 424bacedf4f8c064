/** Writing secret key files safely (`coffer keygen --out`). */
import { mkdir, open, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { UsageError } from '../errors.js';

/**
 * Create `path` holding `text`, readable and writable by the owner only (mode 0600), and flush
 * it to disk. Never overwrites: the file is opened with `wx`. Missing parent directories are
 * created with mode 0700. If writing fails after the file was created, it is removed.
 *
 * @throws {UsageError} "<path> already exists; refusing to overwrite a key file", or when the
 *   directory or file cannot be created or written (permission denied, not a directory, …).
 */
export async function writeSecretFileExclusive(path: string, text: string): Promise<void> {
  const dir = dirname(path);
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new UsageError(`cannot create directory ${dir} for key file ${path}: ${codeOf(err)}`);
  }
  let handle;
  try {
    handle = await open(path, 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new UsageError(`${path} already exists; refusing to overwrite a key file`, {
        hint: 'choose another path or move the existing file away first',
      });
    }
    throw new UsageError(`cannot create key file ${path}: ${codeOf(err)}`);
  }
  try {
    // The umask can only remove bits from 0600, but be explicit about the result.
    await handle.chmod(0o600);
    await handle.writeFile(text, 'utf8');
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => undefined);
    await rm(path, { force: true }).catch(() => undefined);
    throw new UsageError(`cannot write key file ${path}: ${codeOf(err)}`);
  }
  await handle.close();
  // Make the new directory entry durable too (best effort: not every filesystem allows it).
  try {
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    /* ignore */
  }
}

function codeOf(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'ENOTDIR') return 'a parent is not a directory';
  if (code === 'ENOSPC') return 'no space left on device';
  return code ?? (err instanceof Error ? err.message : String(err));
}
