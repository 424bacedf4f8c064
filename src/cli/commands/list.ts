import { listBackups, type BackupEntry } from '../../catalog/catalog.js';
import { checkDatabaseName, resolveRepository, resolveS3Settings } from '../../config/settings.js';
import { openStore } from '../../store/open.js';
import { formatBytes } from '../../observe/log.js';
import type { CliContext } from '../context.js';

export interface ListFlags {
  from?: string;
  db?: string;
  json?: boolean;
  s3Endpoint?: string;
  s3Region?: string;
}

/** One row of `coffer list --json`. */
export interface ListRow {
  id: string;
  database: string;
  tier: string;
  label: string | null;
  kind: string;
  startedAt: string;
  finishedAt: string;
  size: number;
  sha256: string;
  key: string;
  serverVersion: string;
}

export function toRow(e: BackupEntry): ListRow {
  const m = e.manifest;
  return {
    id: m.id,
    database: m.database,
    tier: m.tier,
    label: m.label,
    kind: m.kind,
    startedAt: m.startedAt,
    finishedAt: m.finishedAt,
    size: m.dump.size,
    sha256: m.dump.sha256,
    key: m.dump.key,
    serverVersion: m.postgres.serverVersion,
  };
}

/** `coffer list`: completed backups (those with a manifest), newest first. */
export async function runListCommand(flags: ListFlags, ctx: CliContext): Promise<ListRow[]> {
  const repo = resolveRepository(flags.from, ctx.env, './backups');
  const database = flags.db === undefined ? undefined : checkDatabaseName(flags.db);
  const store = await openStore(repo, resolveS3Settings(flags, ctx.env));
  let entries: BackupEntry[];
  try {
    entries = await listBackups(store, {
      database,
      signal: ctx.signal,
      onInvalid: (key, err) => ctx.log.warn(`skipping an unreadable manifest: ${err.message}`, { key }),
    });
  } finally {
    store.close();
  }
  const rows = entries.map(toRow);
  if (flags.json) {
    ctx.stdout(`${JSON.stringify(rows, null, 2)}\n`);
    return rows;
  }
  if (rows.length === 0) {
    ctx.stdout(`no backups in ${store.location}${database !== undefined ? ` for database ${database}` : ''}\n`);
    return rows;
  }
  const table = [['ID', 'TIME (UTC)', 'DATABASE', 'KIND', 'TIER', 'SIZE', 'LABEL']].concat(
    rows.map((r) => [r.id, r.startedAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z'), r.database, r.kind === 'custom' ? 'full' : r.kind, r.tier, formatBytes(r.size), r.label ?? '']),
  );
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  for (const row of table) ctx.stdout(`${row.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()}\n`);
  return rows;
}
