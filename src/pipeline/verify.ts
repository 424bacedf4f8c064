import { Writable } from 'node:stream';
import { pipeline as streamPipeline } from 'node:stream/promises';
import type { Logger } from '../observe/log.js';
import { spawnTocList, tocEntryCount, tocTables } from '../pg/pg-restore.js';
import type { PgTools } from '../pg/tools.js';
import { Supervisor } from '../run/supervisor.js';
import { FanOut, type FanOutTarget } from './fanout.js';
import { checkTableCount, openSource, type RestoreSource } from './restore-source.js';
import { IntegrityError } from '../errors.js';
import type { OpenedArchive } from './archive.js';
import { hasIndex, readIndex } from './ranged-source.js';

export interface VerifyResult {
  storedBytes: number;
  archiveBytes: number;
  format: 'custom' | 'sql';
  tocEntries: number;
  tables: number;
  /** A difference worth a look that does not make the backup unusable (table count drift). */
  note: string | null;
  /** The archive index was read and matches the archive frame by frame and block by block; `none`: the backup has none. */
  index: 'matches' | 'none';
}

/**
 * Proves a backup is whole without a database: downloads it, checks sha256 and size against
 * the manifest, decrypts and authenticates it to the last byte, decompresses it, walks the
 * whole archive (header, table of contents, every data block it announces; or non-empty SQL
 * with pg_dump's closing line), compares its kind, size and tables with the manifest, and has
 * `pg_restore --list` read its table of contents. Any failure is IntegrityError (exit 5)
 * unless a stop signal, the store or a missing program came first.
 */
export async function runVerify(req: {
  source: RestoreSource;
  identities: string[];
  tools: PgTools;
  zstdCommand?: string[];
  /** The environment children start from (the config layer's, without coffer's secrets); each child gets only its part. */
  env: NodeJS.ProcessEnv;
  signal: AbortSignal;
  log: Logger;
  onProgress?: (n: number) => void;
}): Promise<VerifyResult> {
  const env = req.env;
  const sup = new Supervisor(req.signal);
  return sup.run(async () => {
    const opened = await openSource(req, sup, env);
    const discard = new Writable({
      highWaterMark: 1024 * 1024,
      write(_c, _e, cb) {
        cb();
      },
    });
    const targets: FanOutTarget[] = [{ name: 'discard', kind: 'file', stream: discard }];
    const waits: Promise<unknown>[] = opened.children.map((c) => c.done);
    const out: Buffer[] = [];
    if (opened.format === 'custom') {
      const list = spawnTocList(sup, req.tools, env);
      list.stdout!.on('data', (b: Buffer) => out.push(b));
      waits.push(list.done, new Promise((r) => list.stdout!.once('close', r)));
      targets.push({ name: 'toc', kind: 'child', stream: list.stdin! });
    }
    await Promise.all([streamPipeline(opened.archive, new FanOut(targets), { signal: sup.signal }), ...waits]);
    const toc = Buffer.concat(out).toString('utf8');
    const tocEntries = tocEntryCount(toc);
    const tables = tocTables(toc).length;
    // An archive of an empty database has no entries and is whole (the walk proved it); one
    // whose database had tables is not a backup of it.
    const note = checkTableCount(req.source, tables, opened.format) ?? null;
    if (note) req.log.warn(note);
    const index = await checkIndex(req, opened, sup.signal);
    const s = opened.stats();
    return { storedBytes: s.storedBytes, archiveBytes: s.archiveBytes, format: opened.format, tocEntries, tables, note, index };
  });
}

/**
 * The archive index against the archive just walked: every frame where the index says it starts,
 * every data block too. IntegrityError (exit 5) when it does not match: a selective restore
 * trusts it to find the bytes it fetches.
 */
async function checkIndex(req: { source: RestoreSource; identities: string[]; log: Logger }, opened: OpenedArchive, signal: AbortSignal): Promise<'matches' | 'none'> {
  if (req.source.kind !== 'repository' || !hasIndex(req.source.entry.manifest)) return 'none';
  const m = req.source.entry.manifest;
  const index = await readIndex({ store: req.source.store, identities: req.identities, log: req.log }, m.index, m, signal);
  const bad = (what: string): never => {
    throw new IntegrityError(`the archive index of backup ${m.id} does not match its archive (${what})`, { hint: 'selective restores of this backup cannot trust it: restore with --download-whole' });
  };
  const frames = opened.frames?.();
  if (!frames || 'problem' in frames) return bad(frames ? frames.problem : 'no frames');
  if (frames.bytes !== index.compressed.bytes || frames.frames.join(',') !== index.compressed.frames.join(',')) bad('frames');
  const layout = opened.layout();
  if (!layout) return bad('no data blocks');
  const blocks = [...layout.blocks.entries()].sort((a, b) => a[1] - b[1]);
  if (JSON.stringify(blocks) !== JSON.stringify(index.archive.blocks)) bad('data blocks');
  if (index.archive.dataStart !== (blocks[0]?.[1] ?? layout.size)) bad('end of the table of contents');
  return 'matches';
}
