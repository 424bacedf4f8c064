/**
 * A stop signal that comes once a run is over (its outcome written) does not kill the process:
 * it exits with the run's code. Node's own teardown after a drained event loop closes the signal
 * handlers first, and a SIGTERM in its ~60 ms took the default action (killed, 143) — a restore
 * whose swap had committed was reported as killed (rpl-07). src/cli/main.ts exits before that
 * teardown, with its handlers still installed.
 *
 * `coffer --version` is the shortest run: its output is its outcome. Each run gets SIGTERM at a
 * seeded point 0–40 ms after its output, the window in which the old exit path was killed in
 * ~65 % of the runs the signal reached (measured: 62 of 95).
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { COFFER_BIN } from '../harness/cli.js';
import { seededRandom } from '../reliability/common.js';

describe('a stop signal after the run is over', () => {
  it('SIGTERM 0–40 ms after the output of 30 runs: every run exits 0, none is killed', { timeout: 120_000 }, async () => {
    const rnd = seededRandom('signal-after-run');
    const outcomes: string[] = [];
    for (let i = 0; i < 30; i++) {
      const delay = rnd.next() * 40;
      outcomes.push(
        await new Promise<string>((resolve, reject) => {
          const child = spawn(process.execPath, [COFFER_BIN, '--version'], { stdio: ['ignore', 'pipe', 'ignore'] });
          let signalled = false;
          child.stdout.once('data', () => {
            setTimeout(() => {
              try {
                process.kill(child.pid!, 'SIGTERM');
                signalled = true;
              } catch {
                // already gone: the run ended before the signal
              }
            }, delay);
          });
          child.on('error', reject);
          child.on('exit', (code, signal) => resolve(signal ? `killed by ${signal}` : `exit ${code}${signalled ? ' (signalled)' : ''}`));
        }),
      );
    }
    expect(outcomes.filter((o) => o.startsWith('killed'))).toEqual([]);
    expect(outcomes.every((o) => o.startsWith('exit 0'))).toBe(true);
    // The signal reached some runs while they were still alive (else this proves nothing).
    expect(outcomes.filter((o) => o.endsWith('(signalled)')).length).toBeGreaterThan(0);
  });
});
