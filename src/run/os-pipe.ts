/**
 * Real pipes (pipe(2)) for node: what `child_process` gives is a socket pair, whose copies cost
 * several times more CPU per byte than a pipe's, and which only node's event loop can read. A
 * pipe is made from a FIFO in a private directory: opened once without blocking for reading, so
 * that the write end opens at once, then a blocking read end; the FIFO's name is removed before
 * anything is written, so nothing is left on disk, not even after SIGKILL (but for the moment
 * between `mkfifo` and the opens). Both ends are blocking and close-on-exec (node's default):
 * they reach only the child they are given to (`stdio`), and a worker thread reads or writes
 * them with the synchronous fs calls.
 */
import { execFile } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';

export interface OsPipe {
  /** Its read end (a file descriptor of this process). */
  read: number;
  /** Its write end. */
  write: number;
}

/**
 * `n` new pipes. Throws when they cannot be made (no `mkfifo` program, no writable temporary
 * directory, a file system without FIFOs): the caller falls back to node's own streams.
 */
export async function openPipes(n: number, env: NodeJS.ProcessEnv = process.env): Promise<OsPipe[]> {
  const dir = mkdtempSync(path.join(tmpdir(), 'coffer-pipe-'));
  const opened: number[] = [];
  try {
    const names = Array.from({ length: n }, (_, i) => path.join(dir, String(i)));
    await promisify(execFile)('mkfifo', ['-m', '600', ...names], { env: { PATH: env.PATH ?? '/usr/bin:/bin' } });
    const pipes: OsPipe[] = [];
    for (const name of names) {
      const probe = openSync(name, constants.O_RDONLY | constants.O_NONBLOCK);
      opened.push(probe);
      const write = openSync(name, constants.O_WRONLY);
      opened.push(write);
      const read = openSync(name, constants.O_RDONLY);
      opened.push(read);
      closeSync(opened.splice(opened.indexOf(probe), 1)[0]!);
      pipes.push({ read, write });
    }
    opened.length = 0;
    return pipes;
  } finally {
    for (const fd of opened) closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Closes a descriptor this code owns, ignoring an error (EIO, EINTR: it is closed either way). */
export function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // closed all the same
  }
}
