import { Writable } from 'node:stream';
import { pipeline as streamPipeline } from 'node:stream/promises';
import type { Logger } from '../observe/log.js';
import { spawnTocList, tocEntryCount, tocTables } from '../pg/pg-restore.js';
import type { PgTools } from '../pg/tools.js';
import { Supervisor } from '../run/supervisor.js';
import { FanOut, type FanOutTarget } from './fanout.js';
import { checkTableCount, openSource, type RestoreSource } from './restore-source.js';

export interface VerifyResult {
  storedBytes: number;
  archiveBytes: number;
  format: 'custom' | 'sql';
  tocEntries: number;
  tables: number;
  /** A difference worth a look that does not make the backup unusable (table count drift). */
  note: string | null;
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
    const s = opened.stats();
    return { storedBytes: s.storedBytes, archiveBytes: s.archiveBytes, format: opened.format, tocEntries, tables, note };
  });
}
