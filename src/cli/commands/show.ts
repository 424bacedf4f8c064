import { flag } from '../../config/options.js';
import { formatBytes } from '../../observe/log.js';
import { showArchive, type ArchiveContents } from '../../pipeline/show.js';
import type { CliContext } from '../context.js';
import { defineCommand } from '../command.js';
import { sourceOptions } from '../option-groups.js';
import { loadIdentities, withSource } from './restore.js';

export const show = defineCommand({
  name: 'show',
  summary: "list a backup's contents: schemas, tables with their data sizes, other objects by kind",
  options: {
    ...sourceOptions,
    tocOnly: flag('--toc-only', 'read only the head of the backup (its table of contents): no data sizes, no whole-backup check'),
    json: flag('--json', 'print the contents as JSON on stdout'),
  },
  run: async (flags, ctx: CliContext): Promise<ArchiveContents> => {
    const identities = await loadIdentities(flags);
    const c = await withSource(flags, ctx, (source) => showArchive({ source, identities, env: ctx.env, signal: ctx.signal, log: ctx.log, tocOnly: flags.tocOnly }));
    ctx.stdout(flags.json ? `${JSON.stringify(c, null, 2)}\n` : text(c));
    return c;
  },
});

function text(c: ArchiveContents): string {
  const size = (n: number | null): string => (n === null ? '-' : formatBytes(n));
  const rows = [...c.tables.map((t) => ['table', t.schema, t.name, size(t.dataBytes)]), ...c.materializedViews.map((t) => ['matview', t.schema, t.name, size(t.dataBytes)])];
  const w = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i]!.length), i === 0 ? 4 : 6));
  const out = [
    `${c.backupId ? `backup ${c.backupId}` : 'file'} of database ${JSON.stringify(c.database)}: archive format ${c.archive.formatVersion}, PostgreSQL ${c.archive.serverVersion ?? '?'}, pg_dump ${c.archive.pgDumpVersion ?? '?'}, ${c.archive.entries} TOC entries`,
    `schemas: ${c.schemas.join(', ')}`,
    `${'kind'.padEnd(w[0]!)}  ${'schema'.padEnd(w[1]!)}  ${'name'.padEnd(w[2]!)}  data`,
    ...rows.map((r) => `${r[0]!.padEnd(w[0]!)}  ${r[1]!.padEnd(w[1]!)}  ${r[2]!.padEnd(w[2]!)}  ${r[3]}`),
    `other objects: ${Object.entries(c.objects).map(([k, v]) => `${k} ${v.length}`).join(', ') || 'none'}`,
    c.sizes
      ? `read the whole backup (${formatBytes(c.storedBytesRead)}): data sizes are known only at the end of the archive; it checked out whole`
      : `read ${formatBytes(c.storedBytesRead)}${c.storedBytes !== null ? ` of ${formatBytes(c.storedBytes)}` : ''}: the table of contents only (no data sizes)`,
  ];
  return `${out.join('\n')}\n`;
}
