/**
 * Files and directories of this run that hold decrypted backup data (a `--jobs` spool, an
 * `--output` file being written). The run's own cleanup removes them; so does a second stop
 * signal, which exits at once without that cleanup ({@link removePlaintextNow}). A SIGKILL
 * leaves them: their names carry the run's pid, and the next run that writes to the same place
 * removes those of runs that are gone ({@link removeOrphans}), and says so.
 */
import { rmSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

const held = new Set<string>();

/** Registers `p` (a file or a directory) until the returned release is called. */
export function holdPlaintext(p: string): () => void {
  held.add(p);
  return () => void held.delete(p);
}

/** Removes every held path now, synchronously (the process is about to exit). */
export function removePlaintextNow(): void {
  for (const p of held) {
    try {
      rmSync(p, { recursive: true, force: true });
    } catch {
      // best effort: the process exits next
    }
  }
  held.clear();
}

/** Whether a process with this pid exists (EPERM: it does, another user's). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Removes the entries of `dir` whose name matches `pattern` (its first group: the pid of the run
 * that made it) when that process is gone. Returns the paths removed.
 */
export async function removeOrphans(dir: string, pattern: RegExp): Promise<string[]> {
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  const removed: string[] = [];
  for (const name of names) {
    const pid = Number(pattern.exec(name)?.[1]);
    if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid || alive(pid)) continue;
    const p = path.join(dir, name);
    await fsp.rm(p, { recursive: true, force: true });
    removed.push(p);
  }
  return removed;
}
