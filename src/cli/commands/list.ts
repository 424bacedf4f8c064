import { listBackups, type BackupEntry } from '../../catalog/catalog.js';
import { resolveS3Settings } from '../../config/settings.js';
import { database, repository } from '../../config/parsers.js';
import { flag, value } from '../../config/options.js';
import { openStore, type RepositoryRef, type S3Settings } from '../../store/open.js';
import { formatBytes } from '../../observe/log.js';
import type { CliContext } from '../context.js';
import { defineCommand } from '../command.js';
import { DEFAULT_REPOSITORY, REPOSITORY, s3Options } from '../option-groups.js';

export const list = defineCommand({
  name: 'list',
  summary: 'list completed backups, newest first',
  options: {
    from: value('--from <repository>', 's3://bucket/prefix, file:///path or a directory', repository, { default: DEFAULT_REPOSITORY, aliases: [REPOSITORY] }),
    db: value('--db <name>', 'only this database', database),
    json: flag('--json', 'print a JSON array on stdout'),
    ...s3Options,
  },
  run: (v, ctx) => listRepository(v.from, resolveS3Settings(v, ctx.env), { database: v.db, json: v.json }, ctx),
});

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
export async function listRepository(repo: RepositoryRef, s3: S3Settings, flags: { database?: string | undefined; json?: boolean }, ctx: CliContext): Promise<ListRow[]> {
  const database = flags.database;
  const store = await openStore(repo, s3);
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
