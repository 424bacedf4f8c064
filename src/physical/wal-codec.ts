/**
 * How one archived WAL file is stored: the plaintext (a segment, a .history, .backup or .partial
 * file) → `zstd -N` → age (to the recipients) → one object. The stored object is a plain age v1
 * file of a zstd frame: `age -d -i key.txt OBJECT | zstd -d` gives the file back without coffer.
 *
 * The stored side works on whole buffers: a compressed WAL file is small (a 16 MiB segment, at
 * most 1 GiB with `initdb --wal-segsize`, before compression), and a whole object lets the caller
 * choose its key after the plaintext's sha256 is known (the key carries it) and hand it to the
 * store's write-once `putBytes`. The plaintext is read once, through one reused buffer.
 *
 * Compression runs the `zstd` program (Node 20 has no zstd in zlib; zstd ≥ 1.5 is what the
 * backups use too): measured on a 16 MiB segment of pgbench WAL, the child costs about 4 ms to
 * start (docs/benchmarks.md, "WAL archiving").
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { Readable, type Writable } from 'node:stream';
import { createEncryptStream, openDecryptStream } from '../crypto/age.js';
import { IntegrityError, UsageError } from '../errors.js';
import { followAbort } from '../run/abort.js';

/** sha256 of `data`, hex. */
export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The environment zstd gets: the path and the locale, nothing else (as in backups). */
function zstdEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = { PATH: env.PATH ?? '/usr/bin:/bin' };
  for (const k of ['LANG', 'LC_ALL']) if (env[k] !== undefined) out[k] = env[k]!;
  return out;
}

/**
 * Runs `zstd args` with `input` on stdin and returns its whole stdout. Aborting `signal` kills it.
 *
 * @throws {UsageError} when zstd is not installed; an Error with zstd's stderr when it fails
 *   (the caller words it: compressing is a bug or a resource problem, decompressing is damage).
 */
export async function runZstd(args: string[], input: Uint8Array | ((stdin: Writable) => Promise<void>), opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal }): Promise<Buffer> {
  opts.signal?.throwIfAborted();
  const child = spawn('zstd', args, { env: zstdEnv(opts.env), stdio: ['pipe', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let err = '';
  child.stdout.on('data', (b: Buffer) => out.push(b));
  child.stderr.on('data', (b: Buffer) => (err = (err + b.toString('utf8')).slice(-2000)));
  // EPIPE when zstd fails early: its exit status says why.
  child.stdin.on('error', () => undefined);
  const unfollow = opts.signal ? followAbort(opts.signal, () => child.kill('SIGKILL')) : () => undefined;
  try {
    const exit = new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code, sig) => resolve(code ?? (sig ? 128 : 1)));
    });
    let feedError: unknown;
    if (typeof input === 'function') {
      // The feeder's own failure (a read error) wins over zstd's exit, which it causes.
      await input(child.stdin).then(
        () => child.stdin.end(),
        (e: unknown) => {
          feedError = e;
          child.kill('SIGKILL');
        },
      );
    } else child.stdin.end(input);
    let code: number;
    try {
      code = await exit;
      if (feedError !== undefined) throw feedError;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new UsageError('zstd is not installed (needed to compress and decompress WAL)', { hint: 'apt-get install zstd' });
      }
      throw e;
    }
    opts.signal?.throwIfAborted();
    if (code !== 0) throw new Error(`zstd exited with code ${code}: ${err.trim().split('\n').pop() ?? ''}`);
    return Buffer.concat(out);
  } finally {
    unfollow();
  }
}

/** One WAL file, compressed and encrypted: the bytes to store, and what they hold. */
export interface EncodedWalFile {
  bytes: Buffer;
  /** sha256 (hex) and length of the plaintext zstd was given. */
  sha256: string;
  size: number;
}

/** Read size of {@link encodeWalFileFrom}: one buffer, reused for every read. */
const READ_CHUNK = 1024 * 1024;

/**
 * Compresses and encrypts one WAL file, reading it once through one reused 1 MiB buffer: each
 * read is hashed and handed to zstd (its pipe takes a copy), so the sha256 is of exactly the
 * bytes stored. A whole 16 MiB buffer per segment cost more CPU (page faults on fresh memory,
 * measured with perf) than compressing it; a worker pushing segment after segment reuses the
 * buffer's pages instead.
 */
export async function encodeWalFileFrom(file: FileHandle, recipients: string[], level: number, opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal }): Promise<EncodedWalFile> {
  const hash = createHash('sha256');
  let size = 0;
  const buf = Buffer.allocUnsafe(READ_CHUNK);
  // --single-thread: no compression thread beside the I/O for a 16 MiB input; it halved zstd's
  // CPU per segment (measured: 39 pgbench segments, 2.3 → 1.1 s user + system). Same format.
  const compressed = await runZstd([`-${level}`, '--single-thread', '-q', '-c', '--no-progress'], async (stdin) => {
    for (;;) {
      opts.signal?.throwIfAborted();
      const { bytesRead } = await file.read(buf, 0, buf.length, null);
      if (bytesRead === 0) return;
      const piece = buf.subarray(0, bytesRead);
      hash.update(piece);
      size += bytesRead;
      // The callback runs once the pipe (or libuv's queue) no longer needs the buffer.
      await new Promise<void>((resolve, reject) => stdin.write(piece, (e) => (e ? reject(e) : resolve())));
    }
  }, opts);
  return { bytes: await encryptWhole(compressed, recipients), sha256: hash.digest('hex'), size };
}

async function encryptWhole(data: Buffer, recipients: string[]): Promise<Buffer> {
  const enc = await createEncryptStream(recipients);
  const chunks: Buffer[] = [];
  enc.on('data', (b: Buffer) => chunks.push(b));
  const done = new Promise<void>((resolve, reject) => {
    enc.once('end', resolve);
    enc.once('error', reject);
  });
  enc.end(data);
  await done;
  return Buffer.concat(chunks);
}

/**
 * Decrypts and decompresses one stored WAL file and checks its sha256 against `sha256` (the
 * key's). Every failure is an IntegrityError naming `what` (the key): wrong identity, a modified
 * or truncated object, a zstd frame that does not decode, a hash that differs.
 */
export async function decodeWalFile(stored: Uint8Array, identities: string[], sha256: string, what: string, opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal }): Promise<Buffer> {
  let compressed: Buffer;
  try {
    const { plaintext } = await openDecryptStream(Readable.from([Buffer.from(stored)]), identities);
    const chunks: Buffer[] = [];
    for await (const c of plaintext) chunks.push(c as Buffer);
    compressed = Buffer.concat(chunks);
  } catch (err) {
    if (err instanceof IntegrityError) throw new IntegrityError(`${what}: ${err.message}`, { cause: err, ...(err.hint ? { hint: err.hint } : {}) });
    throw err;
  }
  let plain: Buffer;
  try {
    plain = await runZstd(['-d', '-q', '-c'], compressed, opts);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    opts.signal?.throwIfAborted();
    throw new IntegrityError(`${what}: the decrypted data is not a valid zstd frame (${(err as Error).message})`, { cause: err });
  }
  const got = sha256Hex(plain);
  if (got !== sha256) throw new IntegrityError(`${what}: the restored file's sha256 is ${got}, not the ${sha256} its key names`);
  return plain;
}
