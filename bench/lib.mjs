// What the benchmarks share: cleanups run at the end (also on failure and on SIGINT/SIGTERM), a
// timestamped progress log on stderr, commands timed around their whole run, and the section a
// run appends to docs/benchmarks.md.
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const CLI = join(ROOT, 'dist/cli/main.js');

/** Functions run, last first, by {@link cleanup}. */
export const cleanups = [];

export async function cleanup() {
  while (cleanups.length > 0) {
    try {
      await cleanups.pop()();
    } catch (e) {
      console.error(`bench: cleanup: ${e.message}`);
    }
  }
}
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => cleanup().finally(() => process.exit(130)));

export const log = (m) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${m}`);

/** Runs a command; resolves with its wall seconds and output, rejects on a non-zero exit. */
export function timed(argv, env) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const c = spawn(argv[0], argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out = [];
    const err = [];
    c.stdout.on('data', (b) => out.push(b));
    c.stderr.on('data', (b) => err.push(b));
    c.on('close', (code) => {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      if (code !== 0) reject(new Error(`${argv.slice(0, 4).join(' ')}…: exit ${code}\n${Buffer.concat(err).toString().split('\n').slice(-5).join('\n')}`));
      else resolve({ seconds, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
  });
}

/** Runs coffer (the build in dist/). */
export const coffer = (args, env) => timed([process.execPath, CLI, ...args], env);

/** Prints a run's section, and appends it to `out` unless `out` is `-`. */
export async function writeSection(out, text) {
  if (out !== '-') {
    const prev = await readFile(out, 'utf8').catch(() => '');
    await writeFile(out, `${prev.replace(/\n+$/, '\n')}${text}`);
  }
  console.log(text);
}

/** Runs `main`, then the cleanups; on failure prints the error, cleans up and exits 1. */
export function runBench(main) {
  main()
    .then(cleanup)
    .catch(async (e) => {
      console.error(`bench: ${e.stack ?? e}`);
      await cleanup();
      process.exit(1);
    });
}
