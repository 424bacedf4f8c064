import { listBackupKeys, newestFirst, type BackupKeyEntry } from '../../catalog/catalog.js';
import { backupIdTime } from '../../catalog/layout.js';
import { decodeManifest } from '../../catalog/manifest.js';
import { resolveS3Settings } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import { IntegrityError, StaleError } from '../../errors.js';
import { formatBytes } from '../../observe/log.js';
import { openStore } from '../../store/open.js';
import type { ObjectStore } from '../../store/object-store.js';
import type { CliContext } from '../context.js';
import { listWal, summarizeWal, type WalSummary } from '../../physical/wal-catalog.js';
import type { options } from '../commands/status.js';

/** One row of `coffer status --json`. */
export interface StatusRow {
  database: string;
  /** Newest completed backup, or null when the database has none. */
  id: string | null;
  tier: string | null;
  /** When that backup finished (from its manifest). */
  finishedAt: string | null;
  ageSeconds: number | null;
  size: number | null;
  fresh: boolean;
}

/**
 * `coffer status`: the newest completed full backup (one with a manifest; schema-only and
 * data-only backups do not count) per database, and whether
 * it is younger than `--max-age` (default 26h: a daily job plus slack). Exits 7 (StaleError)
 * naming every database whose newest backup is too old or that has none.
 */
export async function runStatusCommand(flags: Values<typeof options>, ctx: CliContext, now: () => Date = () => new Date()): Promise<StatusRow[] | WalSummary> {
  if (flags.cluster !== undefined) return runClusterStatus(flags, flags.cluster, ctx, now());
  const { text: maxAgeText, ms: maxAgeMs } = flags.maxAge;
  const wanted = flags.db;
  const store = await openStore(flags.from, resolveS3Settings(flags, ctx.env));
  let rows: StatusRow[];
  try {
    // Full backups only: a schema-only or data-only backup is no copy of the database.
    const keys = (await listBackupKeys(store, { signal: ctx.signal, ...(wanted.length === 1 ? { database: wanted[0] } : {}) })).filter((k) => k.content !== 'partial');
    const newest = new Map<string, BackupKeyEntry>();
    for (const k of [...keys].sort(newestFirst)) if (!newest.has(k.database)) newest.set(k.database, k);
    const dbs = wanted.length > 0 ? wanted : [...newest.keys()].sort();
    rows = await Promise.all(dbs.map((d) => statusOf(store, d, newest.get(d), maxAgeMs, now(), ctx.signal)));
  } finally {
    store.close();
  }

  if (flags.json) ctx.stdout(`${JSON.stringify(rows, null, 2)}\n`);
  else {
    // Columns padded to their widest cell, as `list` does.
    const table = rows.map((r) =>
      r.id === null ? ['STALE', r.database, 'no completed backup'] : [r.fresh ? 'OK' : 'STALE', r.database, r.id, r.tier!, `${formatAge(r.ageSeconds!)} old`, formatBytes(r.size!)],
    );
    const widths: number[] = [];
    for (const row of table) row.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
    for (const row of table) ctx.stdout(`${row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')}\n`);
  }
  if (rows.length === 0) {
    throw new StaleError(`no completed backup in ${store.location}`, { hint: 'run `coffer backup`, or check --from' });
  }
  const stale = rows.filter((r) => !r.fresh);
  if (stale.length > 0) {
    const what = stale.map((r) => (r.id === null ? `${r.database} (none)` : `${r.database} (${formatAge(r.ageSeconds!)} old)`)).join(', ');
    throw new StaleError(`${stale.length} of ${rows.length} database(s) have no backup newer than ${maxAgeText}: ${what}`, {
      hint: 'check the backup job (its log, cron mail or metrics)',
    });
  }
  return rows;
}

async function statusOf(store: ObjectStore, database: string, k: BackupKeyEntry | undefined, maxAgeMs: number, now: Date, signal: AbortSignal): Promise<StatusRow> {
  if (!k) return { database, id: null, tier: null, finishedAt: null, ageSeconds: null, size: null, fresh: false };
  const m = decodeManifest(await store.getBytes(k.manifestKey, { signal }), k.manifestKey);
  if (m.id !== k.id || m.database !== k.database) {
    throw new IntegrityError(`manifest ${k.manifestKey} describes another backup (${m.database}/${m.id})`, { hint: 'the manifest was moved or swapped; do not trust this backup' });
  }
  const finished = Number.isNaN(Date.parse(m.finishedAt)) ? backupIdTime(m.id) : new Date(m.finishedAt);
  const ageMs = Math.max(0, now.getTime() - finished.getTime());
  return {
    database,
    id: m.id,
    tier: m.tier,
    finishedAt: finished.toISOString(),
    ageSeconds: Math.round(ageMs / 1000),
    size: m.dump.size,
    fresh: ageMs <= maxAgeMs,
  };
}

function formatAge(s: number): string {
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172_800) return `${(s / 3600).toFixed(1)}h`;
  return `${(s / 86400).toFixed(1)}d`;
}

/**
 * `coffer status --cluster NAME`: the cluster's archived WAL from one listing: the newest
 * segment, the lag (age of the most recently stored WAL file), each timeline's ranges. Exits 7
 * naming the first missing segment when a timeline has a gap, when the archive holds two
 * different copies of a name, when nothing is archived, or when the lag exceeds --max-wal-age.
 */
async function runClusterStatus(flags: Values<typeof options>, cluster: string, ctx: CliContext, now: Date): Promise<WalSummary> {
  const store = await openStore(flags.from, resolveS3Settings(flags, ctx.env));
  let summary: WalSummary;
  try {
    summary = summarizeWal(cluster, await listWal(store, cluster, ctx.signal), now, flags.walSegmentSize);
  } finally {
    store.close();
  }
  if (flags.json) ctx.stdout(`${JSON.stringify(summary, null, 2)}\n`);
  else {
    const lines: string[] = [];
    lines.push(`cluster ${cluster}: ${summary.segments} segment(s), ${summary.files} WAL file(s) archived`);
    if (summary.newestSegment) lines.push(`newest segment ${summary.newestSegment.file}, stored ${summary.newestSegment.storedAt}`);
    if (summary.lagSeconds !== null) lines.push(`archive lag ${formatAge(summary.lagSeconds)} (last WAL file stored ${summary.lastArchivedAt})`);
    for (const t of summary.timelines) lines.push(`timeline ${t.timeline}: ${t.ranges.map((r) => `${r.first}..${r.last} (${r.segments})`).join(', ')}`);
    for (const g of summary.gaps) lines.push(`GAP timeline ${g.timeline}: ${g.missing} segment(s) missing, ${g.first}${g.missing > 1 ? `..${g.last}` : ''}`);
    for (const c of summary.conflicts) lines.push(`CONFLICT ${c.file}: ${c.sha256.length} different copies`);
    for (const l of lines) ctx.stdout(`${l}\n`);
  }
  const where = `${store.location} (cluster ${cluster})`;
  if (summary.files === 0) throw new StaleError(`no archived WAL in ${where}`, { hint: "check archive_command and SELECT * FROM pg_stat_archiver" });
  const gap = summary.gaps[0];
  if (gap) {
    throw new StaleError(`WAL gap: segment ${gap.first} is missing on timeline ${gap.timeline}${gap.missing > 1 ? ` (${gap.missing} segments, up to ${gap.last})` : ''} in ${where}`, {
      hint: 'point-in-time recovery cannot cross it; take a new base backup now, and check pg_stat_archiver and the server log',
    });
  }
  const conflict = summary.conflicts[0];
  if (conflict) throw new StaleError(`the archive holds ${conflict.sha256.length} different copies of ${conflict.file} in ${where}`, { hint: 'two servers archive under one --cluster name; give each its own' });
  if (flags.maxWalAge && summary.lagSeconds !== null && summary.lagSeconds * 1000 > flags.maxWalAge.ms) {
    throw new StaleError(`the newest archived WAL file of cluster ${cluster} is ${formatAge(summary.lagSeconds)} old (more than ${flags.maxWalAge.text})`, {
      hint: 'check archive_command and SELECT * FROM pg_stat_archiver; set archive_timeout so that an idle server still archives',
    });
  }
  return summary;
}
