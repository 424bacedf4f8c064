import { listBackupKeys, loadEntry, newestFirst, type BackupKeyEntry } from '../../catalog/catalog.js';
import { backupIdTime } from '../../catalog/layout.js';
import { decodeDrillRecord, measuredRestoreSeconds, predictRestore, type DrillRecord } from '../../catalog/drill-record.js';
import { resolveS3Settings } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import { formatErrorLine, IntegrityError, InterruptedError, StaleError } from '../../errors.js';
import { formatBytes, withFields } from '../../observe/log.js';
import { metricsFilePath, writeRecoveryMetrics } from '../../observe/metrics.js';
import { openStore } from '../../store/open.js';
import type { ObjectStore } from '../../store/object-store.js';
import type { CliContext } from '../context.js';
import type { LoadedConfig } from '../command.js';
import { chooseSources, sourcesFailed } from '../sources.js';
import { listTimelineBegins, listWal, summarizeWal, type WalSummary } from '../../physical/wal-catalog.js';
import type { options } from '../commands/status.js';

/** One row of `coffer status --json`. */
export interface StatusRow {
  /** With --source/--all-sources: the source of the file's sources: the row belongs to. */
  source?: string;
  database: string;
  /** Newest completed backup, or null when the database has none. */
  id: string | null;
  tier: string | null;
  /** When that backup finished (from its manifest). */
  finishedAt: string | null;
  ageSeconds: number | null;
  size: number | null;
  fresh: boolean;
  /**
   * The recovery point: when the newest backup's snapshot was taken (pg_dump's start, from the
   * manifest), and how old it is: what a restore now would lose at most.
   */
  recoveryPointAt: string | null;
  recoveryPointSeconds: number | null;
  /** The newest drill recorded (`coffer drill --record`), or null. */
  drill: { id: string; startedAt: string; host: string; ageSeconds: number; ok: boolean; backupId: string | null; restoreSeconds: number | null; storedBytes: number; jobs: number; failure: { exitCode: number; kind: string } | null } | null;
  /** The newest backup's restore time, predicted from the newest successful drill (null: none). */
  predictedRestoreSeconds: number | null;
  /** The drill that prediction scaled, and by what (stored bytes now / then). */
  predictedFrom: { drill: string; scale: number } | null;
  /** Why this database misses an objective (--max-age, --rpo-target, --rto-target, --max-drill-age, a failed drill). */
  problems: string[];
}

/** How many older records are read past failed drills to find a successful one to predict from. */
const DRILLS_LOOKED_BACK = 10;

/**
 * `coffer status`: the newest completed full backup (one with a manifest; schema-only and
 * data-only backups do not count) per database (every database with a backup of any kind: one
 * with only schema-only or data-only backups has no completed backup), and whether it is younger than `--max-age`
 * (default 26h: a daily job plus slack); the recovery point; the newest drill and the restore
 * time it predicts for the newest backup. Exits 7 (StaleError) naming every database whose
 * newest backup is too old or missing, whose predicted restore exceeds `--rto-target`, whose
 * recovery point exceeds `--rpo-target`, whose newest drill is older than `--max-drill-age`, or
 * whose newest drill failed.
 */
export async function runStatusCommand(flags: Values<typeof options>, ctx: CliContext, now: () => Date = () => new Date(), config?: Pick<LoadedConfig, 'sources' | 'forSource'>): Promise<StatusRow[] | WalSummary> {
  if (flags.cluster !== undefined) return runClusterStatus(flags, flags.cluster, ctx, now());
  const sources = chooseSources<Values<typeof options>>(flags, config);
  if (!sources) {
    const { rows, location } = await statusRows(flags, ctx, now);
    return verdict(flags, ctx, rows, location);
  }
  // Every source's rows (a source whose repository cannot be read is named at the end; the others are reported).
  const rows: StatusRow[] = [];
  const failed: Array<{ name: string; error: unknown }> = [];
  for (const s of sources) {
    try {
      const r = await statusRows(s.flags, { ...ctx, log: withFields(ctx.log, { source: s.name }) }, now);
      if (r.rows.length === 0) throw new StaleError(`no completed backup in ${r.location}`, { hint: 'run `coffer backup`, or check --from' });
      rows.push(...r.rows.map((row) => ({ source: s.name, ...row })));
    } catch (err) {
      if (err instanceof InterruptedError || ctx.signal.aborted) throw err;
      failed.push({ name: s.name, error: err });
      ctx.log.error(`source ${JSON.stringify(s.name)} failed: ${formatErrorLine(err)}`, { source: s.name });
    }
  }
  if (failed.length > 0) {
    print(flags, ctx, rows);
    const missing = rows.filter((r) => r.problems.length > 0).length;
    throw sourcesFailed(failed, sources.length, missing > 0 ? `; and ${missing} database(s) of the others miss their objectives` : '');
  }
  return verdict(flags, ctx, rows, `${sources.length} sources`);
}

/** One repository's rows (and its metrics file, before any verdict: a database that misses its objectives is what the gauges are for). */
async function statusRows(flags: Values<typeof options>, ctx: CliContext, now: () => Date): Promise<{ rows: StatusRow[]; location: string }> {
  const { text: maxAgeText, ms: maxAgeMs } = flags.maxAge;
  const wanted = flags.db;
  const metricsFile = metricsFilePath(flags.metricsFile, ctx.cwd);
  const store = await openStore(flags.from, resolveS3Settings(flags, ctx.env));
  let rows: StatusRow[];
  try {
    // A local repository that is not there (a typo, a volume not mounted) is no empty one: exit 4.
    await store.assertPresent?.({ signal: ctx.signal });
    // Full backups only: a schema-only or data-only backup is no copy of the database.
    const drills = new Map<string, string[]>();
    const all = await listBackupKeys(store, { signal: ctx.signal, drills, ...(wanted.length === 1 ? { database: wanted[0] } : {}) });
    const keys = all.filter((k) => k.content !== 'partial');
    const newest = new Map<string, BackupKeyEntry>();
    for (const k of [...keys].sort(newestFirst)) if (!newest.has(k.database)) newest.set(k.database, k);
    // Every database with a backup of any kind: one with only schema-only or data-only backups
    // is shown (and judged) as having no completed backup, as `status --db` shows it.
    const dbs = wanted.length > 0 ? wanted : [...new Set(all.map((k) => k.database))].sort();
    rows = await Promise.all(
      dbs.map(async (d) => {
        const row = await statusOf(store, d, newest.get(d), maxAgeMs, now(), ctx.signal);
        await addDrill(store, row, drills.get(d) ?? [], now(), ctx);
        judge(row, flags, maxAgeText);
        return row;
      }),
    );
  } finally {
    store.close();
  }
  if (metricsFile !== undefined && rows.length > 0) await writeStatusMetrics(metricsFile, store.location, rows, flags, now(), ctx);
  return { rows, location: store.location };
}

/** The rows as JSON or aligned text (with a source column when the run walked sources). */
function print(flags: Values<typeof options>, ctx: CliContext, rows: StatusRow[]): void {
  if (flags.json) {
    ctx.stdout(`${JSON.stringify(rows, null, 2)}\n`);
    return;
  }
  // Columns padded to their widest cell, as `list` does.
  const table = rows.map((r) => {
    const state = r.problems.length === 0 ? 'OK' : r.fresh ? 'MISS' : 'STALE';
    const restore = r.predictedRestoreSeconds === null ? 'restore time unknown (no drill)' : `restore ~${formatSeconds(r.predictedRestoreSeconds)} (drill ${formatAge(r.drill!.ageSeconds)} ago)`;
    const cells = r.id === null ? [state, r.database, 'no completed backup'] : [state, r.database, r.id, r.tier!, `${formatAge(r.ageSeconds!)} old`, formatBytes(r.size!), restore];
    return r.source !== undefined ? [cells[0]!, r.source, ...cells.slice(1)] : cells;
  });
  const widths: number[] = [];
  for (const row of table) row.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  for (const row of table) ctx.stdout(`${row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')}\n`);
}

/** Prints the rows, then exits 7 naming every database that misses an objective. */
function verdict(flags: Values<typeof options>, ctx: CliContext, rows: StatusRow[], where: string): StatusRow[] {
  print(flags, ctx, rows);
  const maxAgeText = flags.maxAge.text;
  if (rows.length === 0) {
    throw new StaleError(`no completed backup in ${where}`, { hint: 'run `coffer backup`, or check --from' });
  }
  const name = (r: StatusRow): string => (r.source !== undefined ? `${r.source}/${r.database}` : r.database);
  const missing = rows.filter((r) => r.problems.length > 0);
  if (missing.length > 0 && missing.every((r) => !r.fresh && r.problems.length === 1)) {
    const what = missing.map((r) => (r.id === null ? `${name(r)} (none)` : `${name(r)} (${formatAge(r.ageSeconds!)} old)`)).join(', ');
    throw new StaleError(`${missing.length} of ${rows.length} database(s) have no backup newer than ${maxAgeText}: ${what}`, {
      hint: 'check the backup job (its log, cron mail or metrics)',
    });
  }
  if (missing.length > 0) {
    const what = missing.map((r) => `${name(r)}: ${r.problems.join('; ')}`).join('; ');
    throw new StaleError(`${missing.length} of ${rows.length} database(s) miss their recovery objectives: ${what}`, {
      hint: 'check the backup job; run `coffer drill --record` for a fresh restore time; see README "Recovery objectives"',
    });
  }
  return rows;
}

/** The rows as gauges (src/observe/metrics.ts); a file that cannot be written is a warning, as for backup. */
async function writeStatusMetrics(file: string, repository: string, rows: StatusRow[], flags: Values<typeof options>, now: Date, ctx: CliContext): Promise<void> {
  const seconds = (iso: string | null): number | null => (iso === null ? null : Date.parse(iso) / 1000);
  const target = (d: { ms: number } | undefined): number | null => (d === undefined ? null : d.ms / 1000);
  try {
    await writeRecoveryMetrics(
      file,
      rows.map((r) => ({
        repository,
        database: r.database,
        checkedAt: Math.floor(now.getTime() / 1000),
        recoveryPointAt: seconds(r.recoveryPointAt),
        predictedRestoreSeconds: r.predictedRestoreSeconds,
        drill: r.drill === null ? null : { startedAt: Date.parse(r.drill.startedAt) / 1000, ok: r.drill.ok },
        rtoTargetSeconds: target(flags.rtoTarget),
        rpoTargetSeconds: target(flags.rpoTarget),
        maxDrillAgeSeconds: target(flags.maxDrillAge),
      })),
    );
  } catch (err) {
    ctx.log.warn(`could not write the metrics file: ${formatErrorLine(err)}`);
  }
}

/** The newest drill of a row's database, and the prediction from the newest successful one (at most {@link DRILLS_LOOKED_BACK} back). */
export async function addDrill(store: ObjectStore, row: StatusRow, keys: string[], now: Date, ctx: CliContext): Promise<void> {
  const newestFirstKeys = [...keys].sort().reverse();
  let newestOk: DrillRecord | undefined;
  for (const [i, key] of newestFirstKeys.slice(0, DRILLS_LOOKED_BACK).entries()) {
    let d: DrillRecord;
    try {
      d = decodeDrillRecord(await store.getBytes(key, { signal: ctx.signal }), key);
    } catch (err) {
      if (!(err instanceof IntegrityError)) throw err;
      ctx.log.warn(`${err.message}: skipped`, { key });
      continue;
    }
    if (row.drill === null) {
      const restoreSeconds = measuredRestoreSeconds(d);
      row.drill = { id: d.id, startedAt: d.startedAt, host: d.host, ageSeconds: Math.max(0, Math.round((now.getTime() - Date.parse(d.startedAt)) / 1000)), ok: d.ok, backupId: d.backupId, restoreSeconds, storedBytes: d.storedBytes, jobs: d.jobs, failure: d.failure };
    }
    if (d.ok) {
      newestOk = d;
      break;
    }
    if (i === DRILLS_LOOKED_BACK - 1) break;
  }
  if (newestOk && row.size !== null) {
    const p = predictRestore(newestOk, row.size);
    if (p) {
      row.predictedRestoreSeconds = Math.round(p.seconds * 10) / 10;
      row.predictedFrom = { drill: newestOk.id, scale: Math.round(p.scale * 1000) / 1000 };
    }
  }
}

/** A row's problems against the objectives asked for. */
export function judge(row: StatusRow, flags: Pick<Values<typeof options>, 'rtoTarget' | 'rpoTarget' | 'maxDrillAge'>, maxAgeText: string): void {
  if (!row.fresh) row.problems.push(row.id === null ? 'no completed backup' : `newest backup ${formatAge(row.ageSeconds!)} old (over --max-age ${maxAgeText})`);
  if (flags.rpoTarget && row.recoveryPointSeconds !== null && row.recoveryPointSeconds * 1000 > flags.rpoTarget.ms) {
    row.problems.push(`recovery point ${formatAge(row.recoveryPointSeconds)} old (over --rpo-target ${flags.rpoTarget.text})`);
  }
  if (flags.rtoTarget && row.id !== null) {
    if (row.predictedRestoreSeconds === null) row.problems.push(`restore time unknown: no successful drill recorded (--rto-target ${flags.rtoTarget.text}; run coffer drill --record)`);
    else if (row.predictedRestoreSeconds * 1000 > flags.rtoTarget.ms) {
      row.problems.push(`predicted restore ${formatSeconds(row.predictedRestoreSeconds)} (drill ${row.predictedFrom!.drill} scaled ×${row.predictedFrom!.scale}) over --rto-target ${flags.rtoTarget.text}`);
    }
  }
  if (row.drill !== null && !row.drill.ok) {
    const f = row.drill.failure;
    row.problems.push(`newest drill ${row.drill.id} failed${f ? ` (exit ${f.exitCode}, ${f.kind})` : ''}: its output and log on ${row.drill.host} say why`);
  }
  if (flags.maxDrillAge) {
    if (row.drill === null) row.problems.push(`no drill recorded (--max-drill-age ${flags.maxDrillAge.text})`);
    else if (row.drill.ageSeconds * 1000 > flags.maxDrillAge.ms) row.problems.push(`newest drill ${formatAge(row.drill.ageSeconds)} old (over --max-drill-age ${flags.maxDrillAge.text})`);
  }
}

export async function statusOf(store: ObjectStore, database: string, k: BackupKeyEntry | undefined, maxAgeMs: number, now: Date, signal: AbortSignal): Promise<StatusRow> {
  const none = { recoveryPointAt: null, recoveryPointSeconds: null, drill: null, predictedRestoreSeconds: null, predictedFrom: null, problems: [] };
  if (!k) return { database, id: null, tier: null, finishedAt: null, ageSeconds: null, size: null, fresh: false, ...none };
  const m = (await loadEntry(store, k, signal)).manifest;
  const finished = Number.isNaN(Date.parse(m.finishedAt)) ? backupIdTime(m.id) : new Date(m.finishedAt);
  const snapshot = Number.isNaN(Date.parse(m.startedAt)) ? backupIdTime(m.id) : new Date(m.startedAt);
  const ageMs = Math.max(0, now.getTime() - finished.getTime());
  return {
    database,
    id: m.id,
    tier: m.tier,
    finishedAt: finished.toISOString(),
    ageSeconds: Math.round(ageMs / 1000),
    size: m.dump.size,
    fresh: ageMs <= maxAgeMs,
    ...none,
    recoveryPointAt: snapshot.toISOString(),
    recoveryPointSeconds: Math.round(Math.max(0, now.getTime() - snapshot.getTime()) / 1000),
    problems: [],
  };
}

function formatSeconds(s: number): string {
  return s < 120 ? `${s.toFixed(1)}s` : formatAge(Math.round(s));
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
    // A local repository that is not there (a typo, a volume not mounted) is no empty one: exit 4.
    await store.assertPresent?.({ signal: ctx.signal });
    summary = summarizeWal(cluster, await listWal(store, cluster, ctx.signal), now, flags.walSegmentSize, await listTimelineBegins(store, cluster, ctx.signal));
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
