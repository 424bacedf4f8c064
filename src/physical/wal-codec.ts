/**
 * How one archived WAL file is stored: the plaintext (a segment, a .history, .backup or .partial
 * file) → `zstd -N` → age (to the recipients) → one object. The stored object is a plain age v1
 * file of a zstd frame: `age -d -i key.txt OBJECT | zstd -d` gives the file back without coffer.
 *
 * Everything here works on whole buffers: a WAL file is small (16 MiB by default, at most 1 GiB
 * with `initdb --wal-segsize`), and a whole buffer lets the caller hash the plaintext before it
 * chooses the object's key (the key carries the plaintext's sha256) and hand the result to the
 * store's write-once `putBytes`.
 *
 * Compression runs the `zstd` program (Node 20 has no zstd in zlib; zstd ≥ 1.5 is what the
 * backups use too): measured on a 16 MiB segment of pgbench WAL, the child costs about 4 ms to
 * start (docs/benchmarks.md, "WAL archiving").
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
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
export async function runZstd(args: string[], input: Uint8Array, opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal }): Promise<Buffer> {
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
    child.stdin.end(input);
    let code: number;
    try {
      code = await exit;
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

/** Compresses and encrypts one WAL file: the bytes to store. */
export async function encodeWalFile(plain: Uint8Array, recipients: string[], level: number, opts: { env: NodeJS.ProcessEnv; signal?: AbortSignal }): Promise<Buffer> {
  const compressed = await runZstd([`-${level}`, '-q', '-c', '--no-progress'], plain, opts);
  const enc = await createEncryptStream(recipients);
  const chunks: Buffer[] = [];
  enc.on('data', (b: Buffer) => chunks.push(b));
  const done = new Promise<void>((resolve, reject) => {
    enc.once('end', resolve);
    enc.once('error', reject);
  });
  enc.end(compressed);
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
