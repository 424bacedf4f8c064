import type { Values } from '../../config/options.js';
import { formatBytes } from '../../observe/log.js';
import { showArchive, type ArchiveContents } from '../../pipeline/show.js';
import type { CliContext } from '../context.js';
import type { showOptions } from '../commands/show.js';
import { loadIdentities, withSource } from './restore.js';

/** `coffer show`: a backup's contents (src/pipeline/show.ts), as JSON or aligned text. */
export async function runShowCommand(flags: Values<typeof showOptions>, ctx: CliContext): Promise<ArchiveContents> {
  const identities = await loadIdentities(flags);
  const c = await withSource(flags, ctx, (source) => showArchive({ source, identities, env: ctx.env, signal: ctx.signal, log: ctx.log, tocOnly: flags.tocOnly }));
  ctx.stdout(flags.json ? `${JSON.stringify(c, null, 2)}\n` : text(c));
  return c;
}

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
    readLine(c),
  ];
  return `${out.join('\n')}\n`;
}

/** What was read and what was checked: a whole check is claimed only when the whole backup was read. */
function readLine(c: ArchiveContents): string {
  const of = c.storedBytes !== null ? ` of ${formatBytes(c.storedBytes)}` : '';
  if (c.read === 'index') {
    return `read the archive index and the first ${formatBytes(c.dumpBytesRead ?? c.storedBytesRead)}${of} of the backup (data sizes from the index): only that was checked; run coffer verify to check the whole backup`;
  }
  if (c.read === 'whole') return `read the whole backup (${formatBytes(c.storedBytesRead)}): data sizes are known only at the end of the archive; it checked out whole`;
  return `read ${formatBytes(c.storedBytesRead)}${of}: the table of contents only (no data sizes); run coffer verify to check the whole backup`;
}
