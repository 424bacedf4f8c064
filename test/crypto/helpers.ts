/** Helpers for the crypto tests: byte streams in random pieces, collecting output, the age CLI. */
import { spawn } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export const KiB = 1024;
export const CHUNK = 64 * KiB;

export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** `data` as a Readable emitting random-sized pieces (1 byte .. `max`). */
export function piecesOf(data: Buffer, max = 200 * KiB): Readable {
  function* gen(): Generator<Buffer> {
    let off = 0;
    while (off < data.length) {
      const n = Math.min(data.length - off, randomInt(1, max + 1));
      yield data.subarray(off, off + n);
      off += n;
    }
  }
  return Readable.from(gen(), { objectMode: false });
}

/** Run `plaintext` through an encrypt Transform, in random pieces; return the whole output. */
export async function encryptAll(enc: Transform, plaintext: Buffer): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(piecesOf(plaintext), enc, async function* (src: AsyncIterable<Buffer>) {
    for await (const c of src) out.push(c);
  });
  return Buffer.concat(out);
}

/**
 * Read a plaintext stream to its end with a 'data' listener (so chunks released before an
 * error are counted). Returns the data and the error the stream ended with, if any.
 */
export function drain(s: Readable): Promise<{ data: Buffer; error: unknown }> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    s.on('data', (c: Buffer) => parts.push(c));
    s.on('end', () => resolve({ data: Buffer.concat(parts), error: undefined }));
    s.on('error', (error) => resolve({ data: Buffer.concat(parts), error }));
  });
}

/** Run a command with `input` on stdin; resolves with stdout, rejects with stderr on failure. */
export function run(cmd: string, args: string[], input?: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.stdin.on('error', () => undefined); // EPIPE if the child exits early; the exit code tells
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${Buffer.concat(err).toString().trim()}`));
    });
    child.stdin.end(input ?? Buffer.alloc(0));
  });
}

/** A temporary directory, removed by the returned cleanup. */
export async function tempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'coffer-crypto-'));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** A fresh age-keygen identity file (mode 0600) and its recipient. */
export async function ageKeygen(dir: string, name = 'key.txt'): Promise<{ path: string; identity: string; recipient: string }> {
  const text = (await run('age-keygen', [])).toString();
  const path = join(dir, name);
  await writeFile(path, text, { mode: 0o600 });
  const identity = text.split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-1'))!;
  const recipient = (await run('age-keygen', ['-y', path])).toString().trim();
  return { path, identity, recipient };
}

export { randomBytes };
