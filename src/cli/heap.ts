/**
 * How V8 collects coffer's garbage, set before anything else is loaded (main.ts imports this
 * module first).
 *
 * coffer streams gigabytes through a heap of 10-20 MB: every chunk read from a socket or a pipe,
 * and every chunk decrypted, is an ArrayBuffer outside the heap. V8 starts an incremental mark
 * of the old generation every ~100 ms of such a stream, and runs it in steps and with write
 * barriers on every object store while it lasts. A restore of bench/run.mjs's database (a
 * 2.1 GB archive, 2 cores shared with PostgreSQL, zstd and pg_restore) ran ~110 such marks and
 * ~100 scavenges, and spent 6.3-7.7 s of node CPU. Without incremental marking it ran ~160
 * atomic collections of the small heap (a few ms each), node's CPU fell by 2-2.5 s, and its
 * peak RSS rose by 10-17 MiB (122 to 132-139 MiB). `--no-incremental-marking` is read each time
 * V8 decides whether to start a mark, so setting it at run time takes effect.
 */
import { setFlagsFromString } from 'node:v8';

setFlagsFromString('--no-incremental-marking');
