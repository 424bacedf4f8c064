/**
 * Child processes in a stopped run (issue 7, then issue 11's supervisor): the teardown of a
 * killed child must keep the process alive until it settles. Found by the SIGTERM-during-backup
 * test: a killed pg_dump whose output nobody read any more never emitted 'close', the timer
 * that would have destroyed its pipes was unref'd, and node exited 0 in the middle of the
 * cleanup: a "successful" backup that stored nothing.
 *
 * Runs in a separate node process: inside vitest the event loop never drains.
 */
import { execa } from 'execa';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { coverageEnv } from '../harness/cli.js';

const SUPERVISOR = fileURLToPath(new URL('../../dist/run/supervisor.js', import.meta.url));

const SCRIPT = `
import { PassThrough } from 'node:stream';
const { Supervisor } = await import(process.argv[1]);
const outer = new AbortController();
const sup = new Supervisor(outer.signal);
const c = sup.spawn({ argv: ['sh', '-c', 'exec head -c 50000000 /dev/zero'], env: { PATH: process.env.PATH }, what: 'producer' });
// A stage nobody reads: back-pressure pauses the child's output with data unread.
c.stdout.pipe(new PassThrough({ highWaterMark: 1024 }));
c.done.then(() => console.log('resolved'), (e) => console.log('settled: ' + e.message));
setTimeout(() => outer.abort(new Error('stop')), 200);
// Nothing but the teardown keeps this process alive from here on.
sup.signal.addEventListener('abort', async () => {
  const report = await sup.teardown();
  console.log('teardown: killed ' + report.killed.join(',') + '; stuck ' + report.stuck.length);
});
`;

describe('a supervised child in an aborted run', () => {
  it('its teardown settles the wait for a killed child whose output was left unread, before the process may exit', async () => {
    const r = await execa(process.execPath, ['--input-type=module', '-e', SCRIPT, SUPERVISOR], { env: coverageEnv(), reject: false, timeout: 30_000 });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(String(r.stdout).trim().split('\n').sort()).toEqual(['settled: producer was killed by SIGTERM', 'teardown: killed producer; stuck 0']);
  });
});
