/**
 * The spool of `restore --jobs`: `pg_restore -j` needs a file it can seek in, so the checked
 * archive is written to a private directory first (free space checked against the manifest),
 * with the data offsets pg_dump could not write into a pipe added afterwards.
 */
import { createWriteStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { errnoWords, StorageError, UsageError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { ArchiveOffsetScanner, patchArchiveOffsets } from '../pg/archive-offsets.js';
import { holdPlaintext, removeOrphans } from '../run/plaintext.js';
import type { FanOutTarget } from './fanout.js';
import type { RestoreSource } from './restore-source.js';
import { makeDirs } from '../mkdirs.js';

/** The spool file of one restore, in its own private directory. */
export class Spool {
  private writeError: NodeJS.ErrnoException | undefined;
  /** Sees the same bytes as the spool file, to add the data offsets pg_dump could not write. */
  private readonly offsets = new ArchiveOffsetScanner();
  private started = Date.now();

  private constructor(
    readonly file: string,
    private readonly release: () => void,
  ) {}

  /** A private directory for the spool, free space checked against the manifest. */
  static async prepare(source: RestoreSource, format: 'custom' | 'sql', spoolDir: string | undefined, log: Logger): Promise<Spool> {
    if (format !== 'custom') throw new UsageError('--jobs works with custom-format backups only (this one is plain SQL)');
    const base = spoolDir ?? tmpdir();
    await makeDirs(base);
    // Decrypted archives of killed restores (SIGKILL): not left for anyone to read.
    for (const p of await removeOrphans(base, /^coffer-spool-(\d+)-/)) log.warn('removed the spool of an earlier restore that was killed (a decrypted archive)', { spool: p });
    const dir = await fsp.mkdtemp(path.join(base, `coffer-spool-${process.pid}-`));
    const release = holdPlaintext(dir);
    await fsp.chmod(dir, 0o700);
    const need = source.kind === 'repository' ? source.entry.manifest.dump.dumpBytes : 0;
    const st = await fsp.statfs(dir);
    const free = Number(st.bavail) * Number(st.bsize);
    if (need > 0 && free < need * 1.05) {
      await fsp.rm(dir, { recursive: true, force: true });
      release();
      throw new StorageError('Failed', `not enough free space in ${base} to spool the archive: ${free} bytes free, ${need} needed`, {
        hint: 'use --spool-dir on a larger filesystem, or restore without --jobs (streams, no spool)',
      });
    }
    return new Spool(path.join(dir, 'archive.dump'), release);
  }

  /** The fan-out's branches that write the spool: the file (created now) and the offset scanner. */
  targets(): FanOutTarget[] {
    this.started = Date.now();
    const file = createWriteStream(this.file, { flags: 'wx', mode: 0o600 });
    file.on('error', (err) => (this.writeError ??= err));
    return [
      { name: 'spool', stream: file, kind: 'file' },
      { name: 'offsets', stream: this.offsets.sink(), kind: 'file' },
    ];
  }

  /** A failed spool write (disk full) is the cause; what the other stages report is its echo. */
  explain(err: unknown): unknown {
    return this.writeError ? spoolError(this.file, this.writeError) : err;
  }

  /** Once the whole archive is in: adds the data offsets and says how the spooling went. */
  finish(archiveBytes: number, log: Logger): void {
    const dataOffsets = addDataOffsets(this.file, this.offsets, log);
    log.info('archive spooled', { bytes: archiveBytes, seconds: (Date.now() - this.started) / 1000, dataOffsets });
  }

  /** Removes the spool's directory (and the file). */
  async remove(): Promise<void> {
    await fsp.rm(path.dirname(this.file), { recursive: true, force: true });
    this.release();
  }
}

/**
 * Writes each data block's offset into the spooled archive's TOC, as pg_dump does when its
 * output is a file: without them every `pg_restore -j` worker scans the archive for its
 * blocks, chunk by chunk. Best effort: the restore goes on (slower) without them. Returns
 * the number of offsets written.
 */
function addDataOffsets(spool: string, offsets: ArchiveOffsetScanner, log: Logger): number {
  try {
    const r = patchArchiveOffsets(spool, offsets.end());
    if ('patched' in r) return r.patched;
    log.info('spooled archive left without data offsets (pg_restore --jobs works, more slowly)', { reason: r.skipped });
  } catch (err) {
    log.info('spooled archive left without data offsets (pg_restore --jobs works, more slowly)', { reason: (err as Error).message });
  }
  return 0;
}

/** A write error of the spool file, as a one-line StorageError saying what to do. */
function spoolError(spool: string, err: NodeJS.ErrnoException): StorageError {
  const dir = path.dirname(path.dirname(spool));
  const hint = 'use --spool-dir on a filesystem with more free space, or restore without --jobs (streams, no spool)';
  if (err.code === 'ENOSPC' || err.code === 'EDQUOT') {
    return new StorageError('Failed', `no space left on the spool directory ${dir} while spooling the archive for --jobs`, { cause: err, hint });
  }
  return new StorageError('Failed', `cannot write the spool file in ${dir}: ${errnoWords(err)}`, { cause: err, hint });
}

