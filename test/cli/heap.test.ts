/**
 * src/cli/heap.ts, which the CLI imports first, turns V8's incremental marking off (see heap.ts
 * for why: ~2 s of node CPU in a 2.1 GB restore). When V8 starts incremental marks depends on
 * the heap and the allocation rate; `--stress-incremental-marking` makes it start one whenever
 * it may, so a stream of buffers has many without heap.js and must have none with it. Both
 * runs are children (the flag is process-wide); the run without heap.js shows this Node does
 * mark incrementally, so the other run's zero means something.
 */
import { execa } from 'execa';
import * as fsp from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { COFFER_BIN } from '../harness/cli.js';

const HEAP_JS = fileURLToPath(new URL('../../dist/cli/heap.js', import.meta.url));

/** Streams 256 MiB of 64 KiB buffers through two transforms; prints the counts of GC kinds. */
const WORKLOAD = `
import { PerformanceObserver, constants } from 'node:perf_hooks';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
if (process.env.HEAP_JS) await import(process.env.HEAP_JS);
const kinds = { incremental: 0, major: 0, minor: 0 };
const obs = new PerformanceObserver((l) => {
  for (const e of l.getEntries()) {
    const k = e.detail.kind;
    if (k === constants.NODE_PERFORMANCE_GC_INCREMENTAL) kinds.incremental++;
    else if (k === constants.NODE_PERFORMANCE_GC_MAJOR) kinds.major++;
    else if (k === constants.NODE_PERFORMANCE_GC_MINOR) kinds.minor++;
  }
});
obs.observe({ entryTypes: ['gc'] });
let left = 4096;
const source = new Readable({ read() { this.push(left-- > 0 ? Buffer.allocUnsafe(65536).fill(left & 0xff) : null); } });
const pass = () => new Transform({ highWaterMark: 1 << 20, transform(c, _e, cb) { cb(null, c.subarray(1)); } });
let n = 0;
await pipeline(source, pass(), pass(), new Writable({ highWaterMark: 1 << 20, write(c, _e, cb) { n += c.length; setImmediate(cb); } }));
await new Promise((r) => setTimeout(r, 50));
obs.disconnect();
process.stdout.write(JSON.stringify({ bytes: n, ...kinds }));
`;

/** What {@link WORKLOAD} prints. */
interface GcKinds {
  bytes: number;
  incremental: number;
  major: number;
  minor: number;
}

async function gcKinds(withHeapJs: boolean): Promise<GcKinds> {
  const r = await execa(process.execPath, ['--stress-incremental-marking', '--input-type=module', '-e', WORKLOAD], { env: withHeapJs ? { HEAP_JS: HEAP_JS } : {}, extendEnv: true });
  return JSON.parse(r.stdout) as GcKinds;
}

describe('V8 heap settings of the CLI', () => {
  it('main.js imports heap.js before anything else', async () => {
    const main = await fsp.readFile(COFFER_BIN, 'utf8');
    const firstImport = main.split('\n').find((l) => l.startsWith('import '));
    expect(firstImport).toBe("import './heap.js';");
  });

  it('no incremental marking with heap.js, where the same stream has some without it', async () => {
    const [without, withIt] = await Promise.all([gcKinds(false), gcKinds(true)]);
    expect(without.bytes).toBe(4096 * 65534);
    expect(withIt.bytes).toBe(4096 * 65534);
    expect(without.incremental).toBeGreaterThan(0);
    expect(withIt.incremental).toBe(0);
    // Garbage is still collected: scavenges, and the old generation whole and at once when it must be.
    expect(withIt.minor + withIt.major).toBeGreaterThan(0);
  }, 60_000);
});
