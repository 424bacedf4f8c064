/**
 * The per-run supervisor: output kept however late it is read, fd-to-fd hand-off, exit as
 * completion, teardown of children that ignore SIGTERM, the environment a child gets, and which
 * failure is the cause.
 */
import { describe, expect, it } from 'vitest';
import { DatabaseError, IntegrityError, InterruptedError, StorageError } from '../../src/errors.js';
import { isAbortEcho } from '../../src/run/abort.js';
import { Supervisor, toolEnv } from '../../src/run/supervisor.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin' };

async function readAll(s: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('Supervisor', () => {
  it.each([0, 50, 300])('keeps the whole output of a child that exited before its reader came (read after %i ms)', async (ms) => {
    const sup = new Supervisor();
    // 200 KiB: more than a pipe buffer, so the child exits only because the output was taken at spawn.
    const c = sup.spawn({ argv: ['sh', '-c', 'head -c 204800 /dev/zero | tr "\\0" x; printf END'], env: ENV, what: 'writer' });
    await c.done;
    await sleep(ms);
    const out = await readAll(c.stdout!);
    expect(out.length).toBe(204800 + 3);
    expect(out.subarray(-3).toString()).toBe('END');
    await sup.teardown();
  });

  it('joins children fd to fd in the same tick; the last one is read late', async () => {
    const sup = new Supervisor();
    const a = sup.spawn({ argv: ['sh', '-c', 'seq 1 100000'], env: ENV, stdout: 'child', what: 'seq' });
    const b = sup.spawn({ argv: ['cat'], env: ENV, stdin: a, stdout: 'child', what: 'cat' });
    const c = sup.spawn({ argv: ['wc', '-l'], env: ENV, stdin: b, what: 'wc' });
    await Promise.all([a.done, b.done, c.done]);
    await sleep(100);
    expect((await readAll(c.stdout!)).toString().trim()).toBe('100000');
    await sup.teardown();
  });

  it('a child is done when it exits, whether or not anyone reads its output', async () => {
    const sup = new Supervisor();
    const c = sup.spawn({ argv: ['sh', '-c', 'printf abc; exit 3'], env: ENV, what: 'three' });
    await expect(c.done).rejects.toThrow(/three exited with code 3/);
    expect(sup.failed).toBe(true);
    await sup.teardown();
  });

  it('teardown kills children, SIGKILLs one that ignores SIGTERM, and awaits every exit', async () => {
    const sup = new Supervisor();
    const polite = sup.spawn({ argv: ['sleep', '60'], env: ENV, what: 'sleep' });
    const stubborn = sup.spawn({ argv: ['sh', '-c', "trap '' TERM; echo ready; while :; do sleep 0.1; done"], env: ENV, what: 'stubborn' });
    await new Promise((r) => stubborn.stdout!.once('data', r));
    sup.fail(new DatabaseError('something failed'));
    const report = await sup.teardown();
    expect(report.killed.sort()).toEqual(['sleep', 'stubborn']);
    expect(report.stuck).toEqual([]);
    expect(polite.exited && stubborn.exited).toBe(true);
    expect(stubborn.proc.signalCode).toBe('SIGKILL');
    // Their ends are echoes of the teardown, not causes.
    const errs = await Promise.allSettled([polite.done, stubborn.done]);
    for (const e of errs) expect(e.status === 'rejected' && isAbortEcho(e.reason)).toBe(true);
    expect((sup.cause() as Error).message).toBe('something failed');
  }, 20_000);

  it('a child gets exactly the environment it is given', async () => {
    const sup = new Supervisor();
    process.env.COFFER_TEST_SECRET_NOT_INHERITED = 'x';
    try {
      const c = sup.spawn({ argv: ['env'], env: { ...toolEnv({ ...ENV, AWS_SECRET_ACCESS_KEY: 's', PGPASSWORD: 'p', HOME: '/h' }) }, what: 'env' });
      const [out] = await Promise.all([readAll(c.stdout!), c.done]);
      const names = out.toString().trim().split('\n').map((l) => l.split('=')[0]).sort();
      expect(names).toEqual(['HOME', 'LC_ALL', 'PATH']);
    } finally {
      delete process.env.COFFER_TEST_SECRET_NOT_INHERITED;
      await sup.teardown();
    }
  });

  it('a program that is not installed is a clear error', async () => {
    const sup = new Supervisor();
    const c = sup.spawn({ argv: ['/nonexistent/zstd-x'], env: ENV, what: 'zstd' });
    await expect(c.done).rejects.toThrow(/zstd: \/nonexistent\/zstd-x not found/);
    await sup.teardown();
  });

  describe('the cause wins', () => {
    const integrity = new IntegrityError('authentication failed at byte offset 9');
    const consequence = new DatabaseError('pg_restore exited with code 1: unexpected end of file');
    const storage = new StorageError('Failed', 'connection reset');
    const stop = new InterruptedError('stopped by SIGTERM');
    const echo = Object.assign(new Error('premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
    const cases: Array<[string, unknown[], unknown]> = [
      ['integrity over the pg_restore failure it provoked, whatever the order', [consequence, integrity], integrity],
      ['integrity first', [integrity, consequence], integrity],
      ['a stop signal over everything', [consequence, integrity, stop], stop],
      ['storage over a consequence', [consequence, storage], storage],
      ['integrity over storage', [storage, integrity], integrity],
      ['a real error over an echo', [echo, consequence], consequence],
      ['the first of equals', [new DatabaseError('a'), new DatabaseError('b')], 'a'],
    ];
    it.each(cases)('%s', (_name, failures, want) => {
      const sup = new Supervisor();
      for (const f of failures) sup.fail(f);
      const got = sup.cause();
      if (typeof want === 'string') expect((got as Error).message).toBe(want);
      else expect(got).toBe(want);
      expect(sup.signal.aborted).toBe(true);
    });

    it('the outer stop signal is a failure of the run', () => {
      const outer = new AbortController();
      const sup = new Supervisor(outer.signal);
      sup.fail(consequence);
      outer.abort(stop);
      expect(sup.cause()).toBe(stop);
    });
  });
});
