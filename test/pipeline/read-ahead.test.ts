/**
 * readAhead (and peek) settle whatever state the stream is in when they are called. The
 * restore reads the archive's table of contents after other awaited work (the --jobs spool
 * directory); damage found meanwhile had already failed and closed the stream, and a wait for
 * events that never came left the run with "nothing left to wait for" (exit 1, not 5).
 */
import { PassThrough, Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { peek, readAhead } from '../../src/pipeline/archive.js';

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
const total = (held: Buffer[]): number => held.reduce((n, b) => n + b.length, 0);

describe('readAhead', () => {
  it('reads until enough, then puts every byte back for the consumer', async () => {
    const s = new PassThrough();
    const got = readAhead(s, (held) => total(held) >= 5);
    s.write('abc');
    s.write('defg');
    s.end('hij');
    const head = (await got).toString();
    expect(head.length).toBeGreaterThanOrEqual(5);
    expect('abcdefghij'.startsWith(head)).toBe(true);
    const rest: Buffer[] = [];
    for await (const c of s) rest.push(c as Buffer);
    expect(Buffer.concat(rest).toString()).toBe('abcdefghij');
  });

  it('a stream that failed before the call: rejects with its error', async () => {
    const s = new PassThrough();
    s.on('error', () => undefined);
    s.destroy(new Error('age: chunk authentication failed'));
    await tick();
    await expect(readAhead(s, () => false)).rejects.toThrow('chunk authentication failed');
    await expect(peek(s)).rejects.toThrow('chunk authentication failed');
  });

  it('a stream that fails after the call: rejects with its error', async () => {
    const s = new PassThrough();
    s.on('error', () => undefined);
    const got = readAhead(s, (held) => total(held) >= 100);
    s.write('some');
    await tick();
    s.destroy(new Error('zstd: corrupted block'));
    await expect(got).rejects.toThrow('corrupted block');
  });

  it('a stream destroyed without an error, before or during the call: rejects, never hangs', async () => {
    const before = new PassThrough();
    before.destroy();
    await tick();
    await expect(readAhead(before, () => false)).rejects.toThrow('closed before');
    const during = new PassThrough();
    const got = readAhead(during, () => false);
    during.destroy();
    await expect(got).rejects.toThrow('closed before');
  });

  it('a stream that already ended: resolves empty', async () => {
    const s = Readable.from([Buffer.from('x')]);
    for await (const _ of s) void _;
    expect(s.readableEnded).toBe(true);
    expect((await readAhead(s, () => false)).length).toBe(0);
  });

  it('enough already at the call, with data buffered: resolves without consuming', async () => {
    const s = new PassThrough();
    s.write('abc');
    await tick();
    expect((await readAhead(s, () => true)).length).toBe(0);
    expect((s.read() as Buffer).toString()).toBe('abc');
  });
});
