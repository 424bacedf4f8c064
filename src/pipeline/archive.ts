import { createHash } from 'node:crypto';
import { PassThrough, Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream';
import { openDecryptStream } from '../crypto/age.js';
import { IntegrityError } from '../errors.js';
import { missingTool, spawnChild, type RunningChild } from '../pg/tools.js';

export interface ArchiveInput {
  /** The stored (encrypted) bytes. */
  ciphertext: Readable;
  /** From the manifest: checked over the whole stream, before the archive ends. */
  expected?: { sha256: string; size: number };
  identities: string[];
  zstdCommand?: string[];
  signal: AbortSignal;
}

export interface OpenedArchive {
  /**
   * The decrypted, decompressed archive: a pg_dump custom archive or plain SQL. It ends only
   * after the whole object was read, authenticated to its last byte, matched the manifest's
   * sha256 and size, and the decompressor exited 0; otherwise it errors.
   */
  archive: Readable;
  format: 'custom' | 'sql';
  compressed: boolean;
  children: RunningChild[];
  /** Bytes of ciphertext read and of archive produced so far. */
  stats(): { storedBytes: number; archiveBytes: number };
}

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const PGDMP_MAGIC = Buffer.from('PGDMP');

/**
 * ciphertext ─▶ sha256/size check ─▶ age decrypt ─▶ (zstd -d, detected by its magic) ─▶ archive
 *
 * The age header is read and authenticated before this resolves: a wrong identity or a
 * foreign file fails here, before any database is touched.
 */
export async function openArchive(input: ArchiveInput): Promise<OpenedArchive> {
  let storedBytes = 0;
  let archiveBytes = 0;
  const hash = createHash('sha256');
  const expected = input.expected;
  const tap = new Transform({
    highWaterMark: 1024 * 1024,
    transform(chunk: Buffer, _e, cb) {
      storedBytes += chunk.length;
      if (expected && storedBytes > expected.size) {
        cb(new IntegrityError(`the backup object is larger than its manifest says (${expected.size} bytes)`, { hint: 'the object or the manifest was replaced; do not trust this backup' }));
        return;
      }
      hash.update(chunk);
      cb(null, chunk);
    },
    flush(cb) {
      if (expected) {
        if (storedBytes !== expected.size) {
          cb(new IntegrityError(`the backup object is truncated: ${storedBytes} of ${expected.size} bytes`, { hint: 'use another backup' }));
          return;
        }
        const got = hash.digest('hex');
        if (got !== expected.sha256) {
          cb(new IntegrityError('sha256 of the backup object does not match its manifest', { hint: 'the object was modified or swapped; do not trust this backup' }));
          return;
        }
      }
      cb();
    },
  });
  pipeline(input.ciphertext, tap, () => undefined);
  const { plaintext } = await openDecryptStream(tap, input.identities);

  const first = await peek(plaintext);
  const compressed = first.subarray(0, 4).equals(ZSTD_MAGIC);
  const children: RunningChild[] = [];
  let archive: Readable = plaintext;
  if (compressed) {
    const zstd = spawnChild([...(input.zstdCommand ?? ['zstd']), '-d', '-q', '-c'], {
      stdin: 'pipe',
      signal: input.signal,
      what: 'zstd -d',
      missing: missingTool('zstd -d', 'this backup is zstd-compressed: install zstd (apt-get install zstd)'),
    });
    zstd.done.catch(() => undefined);
    children.push(zstd);
    const upstream = new Promise<void>((resolve, reject) => {
      plaintext.once('end', resolve);
      plaintext.once('error', reject);
    });
    upstream.catch(() => undefined);
    pipeline(plaintext, zstd.child.stdin!, () => undefined);
    // The archive ends only when the decrypted input ended cleanly and zstd exited 0.
    const gate = new Transform({
      highWaterMark: 1024 * 1024,
      transform(chunk, _e, cb) {
        cb(null, chunk);
      },
      flush(cb) {
        Promise.all([upstream, zstd.done]).then(() => cb(), (err: Error) => cb(err));
      },
    });
    plaintext.once('error', (err) => gate.destroy(err));
    pipeline(zstd.child.stdout!, gate, () => undefined);
    archive = gate;
  }
  const counted = new PassThrough({ highWaterMark: 1024 * 1024 });
  archive.on('data', (c: Buffer) => (archiveBytes += c.length));
  pipeline(archive, counted, () => undefined);
  const head = await peek(counted);
  const format = head.subarray(0, 5).equals(PGDMP_MAGIC) ? 'custom' : 'sql';
  if (head.length === 0) {
    counted.destroy(new IntegrityError('the backup holds no data (empty archive)'));
  }
  return { archive: counted, format, compressed, children, stats: () => ({ storedBytes, archiveBytes }) };
}

/** The first bytes of a stream, left in it (unshifted). Empty at end of stream. */
export function peek(s: Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      s.off('readable', onReadable);
      s.off('end', onEnd);
      s.off('error', onError);
    };
    const onReadable = (): void => {
      const chunk = s.read() as Buffer | null;
      if (chunk === null) return;
      cleanup();
      s.unshift(chunk);
      resolve(chunk);
    };
    const onEnd = (): void => {
      cleanup();
      resolve(Buffer.alloc(0));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(err);
    };
    s.on('readable', onReadable);
    s.once('end', onEnd);
    s.once('error', onError);
  });
}
