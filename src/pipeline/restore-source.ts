/**
 * Where a restore (and a verify, and a load) reads the backup from: a repository object or a
 * local file, downloaded (resumed), checked against the manifest, decrypted and decompressed
 * into a checked archive stream; the backup's globals; or the archive written to a file.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { finished as streamFinished, pipeline as streamPipeline } from 'node:stream/promises';
import { missingDump, type BackupEntry } from '../catalog/catalog.js';
import type { BackupManifest } from '../catalog/manifest.js';
import { commitFile } from '../atomic-write.js';
import { holdPlaintext, removeOrphans } from '../run/plaintext.js';
import { IntegrityError, UsageError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { Supervisor } from '../run/supervisor.js';
import { anySignal } from '../run/abort.js';
import { resumableGet } from '../store/resumable.js';
import type { ObjectStore } from '../store/object-store.js';
import { logicalFormat, openArchive, type ExpectedArchive, type OpenedArchive } from './archive.js';
import { FanOut } from './fanout.js';

/** Where the encrypted backup comes from. */
export type RestoreSource =
  | { kind: 'repository'; store: ObjectStore; entry: BackupEntry }
  | { kind: 'file'; path: string };

/** What opening a source needs. */
export interface SourceRequest {
  source: RestoreSource;
  identities: string[];
  zstdCommand?: string[];
  log: Logger;
  onProgress?: (storedBytes: number) => void;
  /** Ends the download early without it being a failure (`show --toc-only` once it has the head). */
  stopDownload?: AbortSignal;
}

/** What the manifest promises about a backup's content, for the whole-archive check. */
export function expectedArchive(m: BackupManifest): ExpectedArchive {
  return { sha256: m.dump.sha256, size: m.dump.size, ...(m.dump.sha256Bytes !== undefined ? { sha256Bytes: m.dump.sha256Bytes } : {}), dumpBytes: m.dump.dumpBytes, format: m.kind === 'custom' ? 'custom' : 'sql', database: m.database };
}

/** Opens the encrypted source (repository object or local file) as a checked archive stream. */
export async function openSource(req: SourceRequest, sup: Supervisor, env: NodeJS.ProcessEnv): Promise<OpenedArchive & { format: 'custom' | 'sql' }> {
  let ciphertext: Readable;
  let expected: ExpectedArchive | undefined;
  if (req.source.kind === 'repository') {
    const m = req.source.entry.manifest;
    expected = expectedArchive(m);
    const signal = req.stopDownload ? anySignal([sup.signal, req.stopDownload]) : sup.signal;
    ciphertext = resumableGet(req.source.store, m.dump.key, m.dump.size, { signal, log: req.log, onProgress: req.onProgress, whenMissing: missingDump(req.source.store, m, signal) });
  } else {
    try {
      await fsp.access(req.source.path);
    } catch {
      throw new UsageError(`--file ${req.source.path}: no such file or not readable`);
    }
    ciphertext = createReadStream(req.source.path, { highWaterMark: 1024 * 1024, signal: req.stopDownload ? anySignal([sup.signal, req.stopDownload]) : sup.signal });
    let n = 0;
    if (req.onProgress) ciphertext.on('data', (c: Buffer) => req.onProgress!((n += c.length)));
  }
  const recipients = req.source.kind === 'repository' ? req.source.entry.manifest.encryption.recipients : undefined;
  const opened = await openArchive({ ciphertext, expected, identities: req.identities, ...(recipients ? { recipients } : {}), zstdCommand: req.zstdCommand, sup, env });
  return { ...opened, format: logicalFormat(opened.format) };
}

/**
 * The backup's globals (roles) as SQL text, downloaded and checked like the archive.
 * UsageError when the backup has none.
 */
export async function readGlobals(req: SourceRequest, sup: Supervisor, env: NodeJS.ProcessEnv): Promise<string> {
  if (req.source.kind !== 'repository' || !req.source.entry.manifest.globals) {
    throw new UsageError('--with-globals: this backup has no globals', { hint: 'take backups with --globals to include roles' });
  }
  const g = req.source.entry.manifest.globals;
  const opened = await openArchive({
    ciphertext: resumableGet(req.source.store, g.key, g.size, { signal: sup.signal, log: req.log }),
    expected: { sha256: g.sha256, size: g.size, ...(g.sha256Bytes !== undefined ? { sha256Bytes: g.sha256Bytes } : {}), dumpBytes: g.dumpBytes, format: 'sql' },
    identities: req.identities,
    zstdCommand: req.zstdCommand,
    sup,
    env,
  });
  const [sql] = await Promise.all([collectText(opened.archive), streamFinished(opened.archive), ...opened.children.map((c) => c.done)]);
  return sql;
}

/** Everything a readable yields, as text (a child's small stdout). */
export function collectText(s: Readable): Promise<string> {
  const out: Buffer[] = [];
  s.on('data', (b: Buffer) => out.push(b));
  return new Promise((resolve) => {
    s.once('end', () => resolve(Buffer.concat(out).toString('utf8')));
    s.once('close', () => resolve(Buffer.concat(out).toString('utf8')));
  });
}

/**
 * The archive's tables against the manifest's count of the database's tables when the backup
 * started: an archive without tables from a database that had some is not a backup of it.
 * Returns a note when the counts differ otherwise (a table created or dropped during the
 * backup explains that).
 */
export function checkTableCount(source: RestoreSource, archiveTables: number, format: 'custom' | 'sql'): string | undefined {
  if (source.kind !== 'repository' || format !== 'custom') return undefined;
  const m = source.entry.manifest;
  const want = m.postgres.tables;
  if (m.kind !== 'custom' || want === undefined) return undefined;
  if (want > 0 && archiveTables === 0) {
    throw new IntegrityError(`the backup's archive holds no tables, but database ${JSON.stringify(m.database)} had ${want} when it was taken`, { hint: 'this backup is not a copy of the database; use another backup' });
  }
  return archiveTables === want ? undefined : `the archive has ${archiveTables} tables; the database had ${want} when the backup started`;
}

/** Writes the decrypted, decompressed archive to a file instead of a database. */
export async function restoreToFile(
  req: SourceRequest & { signal: AbortSignal; env: NodeJS.ProcessEnv },
  output: string,
): Promise<{ bytes: number; format: 'custom' | 'sql' }> {
  const file = path.resolve(output);
  try {
    await fsp.access(file);
    throw new UsageError(`--output ${output} already exists; refusing to overwrite`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
  }
  const sup = new Supervisor(req.signal);
  const dir = path.dirname(file);
  const temporary = `.${path.basename(file)}.coffer-tmp-`;
  // The decrypted archive of a killed run (SIGKILL) that wrote this very --output: not left behind.
  const escaped = temporary.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  for (const p of await removeOrphans(dir, new RegExp(`^${escaped}(\\d+)$`))) req.log.warn('removed the unfinished --output of an earlier run that was killed (a decrypted archive)', { file: p });
  const tmp = path.join(dir, `${temporary}${process.pid}`);
  const release = holdPlaintext(tmp);
  try {
    return await sup.run(async () => {
      const opened = await openSource(req, sup, req.env);
      const fan = new FanOut([{ name: 'file', stream: createWriteStream(tmp, { flags: 'wx', mode: 0o600 }), kind: 'file' }]);
      await Promise.all([streamPipeline(opened.archive, fan, { signal: sup.signal }), ...opened.children.map((c) => c.done)]);
      await commitFile(tmp, file, { exclusive: true });
      return { bytes: opened.stats().archiveBytes, format: opened.format };
    });
  } finally {
    await fsp.rm(tmp, { force: true });
    release();
  }
}
