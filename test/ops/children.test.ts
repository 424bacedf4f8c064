/**
 * Child processes in a stopped run (issue 7): the wait for a killed child must keep the process
 * alive until it settles. Found by the SIGTERM-during-backup test: a killed pg_dump whose stdout
 * was unpiped (and so paused) with data unread never emits 'close' until its pipes are destroyed;
 * the timer that destroys them was unref'd, so the event loop could drain first and node exited
 * 0 in the middle of the cleanup: a "successful" backup that stored nothing.
 *
 * Runs in a separate node process: inside vitest the event loop never drains.
 */
import { execa } from 'execa';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const TOOLS = fileURLToPath(new URL('../../dist/pg/tools.js', import.meta.url));

const SCRIPT = `
import { PassThrough } from 'node:stream';
const { spawnChild } = await import(process.argv[1]);
const ac = new AbortController();
const r = spawnChild(['sh', '-c', 'exec head -c 50000000 /dev/zero'], { signal: ac.signal, what: 'producer' });
// A stage nobody reads: back-pressure pauses the child's stdout with data unread.
const stage = new PassThrough({ highWaterMark: 1024 });
r.child.stdout.pipe(stage);
setTimeout(() => ac.abort(new Error('stop')), 200);
// Torn down only after the child exited: unpipe pauses stdout for good.
r.child.once('exit', () => setTimeout(() => stage.destroy(), 100));
r.done.then(() => console.log('resolved'), (e) => console.log('settled: ' + e.message));
`;

describe('spawnChild in an aborted run', () => {
  it('settles the wait for a killed child whose output was left unread, before the process may exit', async () => {
    const r = await execa(process.execPath, ['--input-type=module', '-e', SCRIPT, TOOLS], { reject: false, timeout: 30_000 });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(String(r.stdout).trim()).toBe('settled: producer was killed by SIGTERM');
  });
});
