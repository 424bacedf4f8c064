/**
 * `coffer show`: what a backup's archive holds, read from the archive itself (no pg_restore,
 * no database): its header, schemas, tables with the bytes of their data in the archive, and
 * the other objects by kind.
 *
 * The table of contents is at the head of the stream; the data sizes are not in it: coffer's
 * pg_dump writes into a pipe, so the TOC has no data offsets. A backup with an archive index
 * (../catalog/archive-index.ts) says where each block lies: `show` then reads the index and the
 * head only (ranged reads). Otherwise a table's size is known only by walking the data blocks to
 * the end of the archive: `show` reads (downloads, decrypts, decompresses) the whole backup, and
 * checks it whole on the way as `verify` does. `--toc-only` stops after the table of contents
 * (no sizes).
 */
import { Writable } from 'node:stream';
import { pipeline as streamPipeline } from 'node:stream/promises';
import { UsageError } from '../errors.js';
import { dataBlockSizes, decodeToc, type TocObject } from '../pg/archive-toc.js';
import { Supervisor } from '../run/supervisor.js';
import { openSource, type SourceRequest } from './restore-source.js';
import { openRangedSource } from './ranged-source.js';

export interface ArchiveContents {
  backupId: string | null;
  database: string | null;
  archive: { formatVersion: string; serverVersion: string | null; pgDumpVersion: string | null; entries: number; compressed: boolean };
  schemas: string[];
  /** Ordinary and partitioned tables (TABLE entries), in archive order; `dataBytes` null when not known (--toc-only, or no data). */
  tables: Array<{ schema: string; name: string; dataBytes: number | null }>;
  /** Materialized views' data, like tables'. */
  materializedViews: Array<{ schema: string; name: string; dataBytes: number | null }>;
  /** Every other entry, by kind (desc), as "schema.name" (or the name alone). */
  objects: Record<string, string[]>;
  /** Whether data sizes were read (from the archive index, or by reading the whole archive). */
  sizes: boolean;
  /**
   * What was read: `index`, the archive index and the head of the backup (sizes from the index;
   * the chunks read were authenticated, the rest was neither read nor checked); `whole`, the whole
   * backup, read and checked to its end; `head`, the head only (--toc-only).
   */
  read: 'index' | 'whole' | 'head';
  /** Stored bytes read (with `read: 'index'`, the dump's and the index's), and the object's size (null: unknown, a --file). */
  storedBytesRead: number;
  /** With `read: 'index'`: the bytes of the dump object read (from its start). */
  dumpBytesRead: number | null;
  storedBytes: number | null;
}

const LISTED = new Set(['TABLE', 'TABLE DATA', 'MATERIALIZED VIEW DATA', 'ENCODING', 'STDSTRINGS', 'SEARCHPATH', 'DATABASE', 'DATABASE PROPERTIES']);

export async function showArchive(req: SourceRequest & { signal: AbortSignal; env: NodeJS.ProcessEnv; tocOnly: boolean }): Promise<ArchiveContents> {
  const sup = new Supervisor(req.signal);
  const stop = new AbortController();
  return sup.run(async () => {
    const ranged = req.source.kind === 'repository' && !req.tocOnly ? await openRangedSource({ ...req, store: req.source.store, entry: req.source.entry }, sup, req.env) : undefined;
    const opened = ranged ?? (await openSource({ ...req, stopDownload: stop.signal }, sup, req.env));
    if (opened.format !== 'custom') {
      throw new UsageError('show lists the contents of custom-format archives; this backup is plain SQL (a schema-only or data-only backup)', { hint: 'coffer restore --output FILE writes it; it is SQL text' });
    }
    const raw = (await opened.tocEntries())!;
    const encoding = (await opened.databaseEntries())?.find((e) => e.desc === 'ENCODING')?.defn;
    const toc = decodeToc(raw, encoding);
    let sizes: Map<number, number> | undefined;
    if (ranged) {
      sizes = ranged.blockSizes();
      opened.archive.destroy();
    } else if (!req.tocOnly) {
      const sink = new Writable({ highWaterMark: 1024 * 1024, write: (_c, _e, cb) => cb() });
      await Promise.all([streamPipeline(opened.archive, sink, { signal: sup.signal }), ...opened.children.map((c) => c.done)]);
      const layout = opened.layout();
      if (layout) sizes = dataBlockSizes(layout);
    } else {
      // The head is all --toc-only needs: stop the download (not a failure, nothing to resume).
      stop.abort();
      opened.archive.destroy();
    }
    const stats = opened.stats();
    return contents(toc, sizes, {
      backupId: req.source.kind === 'repository' ? req.source.entry.id : null,
      database: req.source.kind === 'repository' ? req.source.entry.database : (opened.header?.dbname ?? null),
      archive: { formatVersion: opened.header?.versionText ?? '?', serverVersion: opened.header?.serverVersion ?? null, pgDumpVersion: opened.header?.pgDumpVersion ?? null, entries: toc.length, compressed: opened.compressed },
      // Ranged: the distinct bytes of the dump object fetched, and the index.
      read: ranged ? 'index' : req.tocOnly ? 'head' : 'whole',
      storedBytesRead: ranged ? ranged.fetched().bytes + ranged.fetched().indexBytes : stats.storedBytes,
      dumpBytesRead: ranged ? ranged.fetched().bytes : null,
      storedBytes: req.source.kind === 'repository' ? req.source.entry.manifest.dump.size : null,
    });
  });
}

function contents(toc: TocObject[], sizes: Map<number, number> | undefined, base: Pick<ArchiveContents, 'backupId' | 'database' | 'archive' | 'read' | 'storedBytesRead' | 'dumpBytesRead' | 'storedBytes'>): ArchiveContents {
  const dataOf = (desc: string, e: TocObject): number | null => {
    if (!sizes) return null;
    const d = toc.find((x) => x.desc === desc && x.namespace === e.namespace && x.tag === e.tag);
    return d ? (sizes.get(d.dumpId) ?? 0) : null;
  };
  const schemas = new Set<string>();
  for (const e of toc) {
    if (e.desc === 'SCHEMA') schemas.add(e.tag);
    else if (e.namespace && e.desc === 'TABLE') schemas.add(e.namespace);
  }
  const objects: Record<string, string[]> = {};
  for (const e of toc) {
    if (LISTED.has(e.desc) || e.desc === 'MATERIALIZED VIEW') continue;
    (objects[e.desc] ??= []).push(e.namespace ? `${e.namespace}.${e.tag}` : e.tag);
  }
  return {
    ...base,
    schemas: [...schemas].sort(),
    tables: toc.filter((e) => e.desc === 'TABLE').map((e) => ({ schema: e.namespace, name: e.tag, dataBytes: dataOf('TABLE DATA', e) })),
    materializedViews: toc.filter((e) => e.desc === 'MATERIALIZED VIEW').map((e) => ({ schema: e.namespace, name: e.tag, dataBytes: dataOf('MATERIALIZED VIEW DATA', e) })),
    objects,
    sizes: sizes !== undefined,
  };
}
