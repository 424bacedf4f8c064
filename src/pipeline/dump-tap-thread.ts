/**
 * Runs a {@link DumpTap} in a worker thread between two real pipes ({@link openPipes}): pg_dump
 * writes one, pzstd reads the other, and the worker copies between them with blocking calls of
 * up to 1 MiB. Used for dumps large enough that the thread's start (~0.1 s) is repaid.
 */
import { closeSync, constants, openSync, writeSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { closeQuietly, type OsPipe } from '../run/os-pipe.js';
import type { DumpTapSummary } from './dump-tap.js';
import type { DumpTapMessage, DumpTapWorkerData } from './dump-tap-worker.js';

export interface DumpTapThread {
  /** The dump bytes read so far. */
  bytes(): number;
  /** Settles when the worker has read the dump to its end and closed both pipes. */
  done: Promise<{ summary: DumpTapSummary; writeError?: string }>;
}

/**
 * Starts the worker on `from.read` (pg_dump's output) and `to.write` (pzstd's input), which are
 * closed here once the worker is done with them (or could not start). The caller keeps (and must
 * close, once the children have them) `from.write` and `to.read`.
 */
export function startDumpTapThread(from: OsPipe, to: OsPipe, wrapped: boolean, signal?: AbortSignal): DumpTapThread {
  const progress = new SharedArrayBuffer(8);
  const view = new Float64Array(progress);
  const stop = new SharedArrayBuffer(4);
  const data: DumpTapWorkerData = { readFd: from.read, writeFd: to.write, wrapped, progress, stop };
  let open = true;
  const release = (): void => {
    if (!open) return;
    open = false;
    signal?.removeEventListener('abort', onAbort);
    closeQuietly(to.write);
    closeQuietly(from.read);
  };
  // When the run stops, the thread must not wait for the dump's end: node joins its threads at
  // exit, and a writer that the teardown does not reach (a wrapper's grandchild) would hold the
  // pipe open. The thread is told to stop, and a blocked read is woken by one byte written
  // through a new write end of the same pipe (opened by /proc/self/fd, as Linux allows).
  const onAbort = (): void => {
    if (!open) return;
    Atomics.store(new Int32Array(stop), 0, 1);
    try {
      const fd = openSync(`/proc/self/fd/${from.read}`, constants.O_WRONLY | constants.O_NONBLOCK);
      try {
        writeSync(fd, Buffer.alloc(1));
      } catch {
        // a full pipe: the thread is not blocked reading
      } finally {
        closeSync(fd);
      }
    } catch {
      // no /proc: the thread stops at its next read
    }
  };
  signal?.addEventListener('abort', onAbort);
  let worker: Worker;
  try {
    worker = new Worker(new URL('./dump-tap-worker.js', import.meta.url), { workerData: data });
  } catch (err) {
    release();
    throw err;
  }
  worker.unref();
  if (signal?.aborted) onAbort();
  const done = new Promise<{ summary: DumpTapSummary; writeError?: string }>((resolve, reject) => {
    worker.on('message', (m: DumpTapMessage) => {
      release();
      if (m.kind === 'done') resolve(m.writeError !== undefined ? { summary: m.summary, writeError: m.writeError } : { summary: m.summary });
      else reject(Object.assign(new Error(`the dump could not be copied to pzstd: ${m.message}`), m.code ? { code: m.code } : {}));
    });
    worker.on('error', (err) => {
      release();
      reject(err);
    });
    worker.on('exit', (code) => {
      release();
      reject(new Error(`the dump's copying thread ended (exit code ${code}) before the dump did`));
    });
  });
  done.catch(() => undefined);
  return { bytes: () => view[0]!, done };
}
