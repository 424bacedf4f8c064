/**
 * The worker thread of a {@link ThreadedDumpTap}: copies pg_dump's output from one pipe to
 * pzstd's input pipe with blocking reads and writes of up to 1 MiB, feeding a {@link DumpTap}
 * on the way. Node's streams over the socket pairs of `child_process` cost about four times as
 * much CPU per byte (bench: compression, "node counting hop"), which on two cores slowed a large
 * backup by a seventh.
 *
 * It reads until EOF (every writer of the pipe, pg_dump and its wrapper, has exited or closed
 * it), then says so; the main thread, which opened both descriptors, closes them (pzstd then
 * sees its EOF). When pzstd stops reading (EPIPE: it died; its exit status says why) the rest of
 * the dump is read and dropped, so that pg_dump is never left blocked on a full pipe.
 */
import { readSync, writeSync } from 'node:fs';
import { isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { DumpTap } from './dump-tap.js';

export interface DumpTapWorkerData {
  readFd: number;
  writeFd: number;
  wrapped: boolean;
  /** Float64Array view: [0] the dump bytes read so far (for progress). */
  progress: SharedArrayBuffer;
  /** Int32Array view: [0] set to 1 when the run stopped (the thread then stops copying). */
  stop: SharedArrayBuffer;
}

/** What the worker posts once: its summary, or its failure. */
export type DumpTapMessage = { kind: 'done'; summary: ReturnType<DumpTap['summary']>; writeError?: string } | { kind: 'failed'; message: string; code?: string };

/** The copy loop (this module does nothing when it is imported on the main thread). */
function run(data: DumpTapWorkerData, port: MessagePort): void {
  const post = (m: DumpTapMessage): void => port.postMessage(m);
  const progress = new Float64Array(data.progress);
  const stop = new Int32Array(data.stop);
  const tap = new DumpTap(data.wrapped);
  const buf = Buffer.allocUnsafe(1024 * 1024);
  let writing = true;
  let writeError: string | undefined;
  try {
    for (;;) {
      const n = readSync(data.readFd, buf, 0, buf.length, null);
      if (Atomics.load(stop, 0) === 1) throw Object.assign(new Error('the run stopped'), { code: 'ECANCELED' });
      if (n === 0) break;
      const chunk = buf.subarray(0, n);
      tap.push(chunk);
      progress[0] = tap.bytes;
      if (!writing) continue;
      try {
        for (let off = 0; off < n; ) off += writeSync(data.writeFd, chunk, off, n - off);
      } catch (err) {
        writeError = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
        writing = false;
      }
    }
    post({ kind: 'done', summary: tap.summary(), ...(writeError !== undefined ? { writeError } : {}) });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    post({ kind: 'failed', message: e.message, ...(e.code ? { code: e.code } : {}) });
  }
}

const given = workerData as Partial<DumpTapWorkerData> | null;
if (!isMainThread && parentPort && typeof given?.readFd === 'number') run(given as DumpTapWorkerData, parentPort);
