/**
 * Prometheus textfile-collector output (node_exporter `--collector.textfile.directory`).
 *
 * After every backup run (and every `status` or `drill` with --metrics-file) the file is
 * rewritten atomically (src/atomic-write.ts; mode 0644) with one series per (repository,
 * database), or per (repository, cluster) for physical backups. Series of databases the run did
 * not cover, and families another command writes, are kept (read, merge, write); the last
 * success time of a database whose run failed keeps its previous value.
 */
import { accessSync, constants as fsConstants } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { writeFileAtomic } from '../atomic-write.js';
import { errnoWords, UsageError } from '../errors.js';

/** The outcome of one database's backup in a run. */
export interface BackupRunMetrics {
  repository: string;
  /** The database; for a physical backup of a whole cluster, `cluster` instead (label `cluster`). */
  database: string;
  cluster?: string;
  success: boolean;
  /** Run end time (Unix seconds). */
  finishedAt: number;
  durationSeconds: number;
  /** Bytes stored (ciphertext) on success; 0 on failure. */
  bytes: number;
}

interface MetricDef {
  name: string;
  help: string;
}

/**
 * The metric families coffer writes, in file order: `backup --metrics-file` the backup ones,
 * `status --metrics-file` the recovery ones, `drill --metrics-file` the drill ones. Any of them may
 * share one file: each command rewrites its own series and keeps the others. deploy/prometheus
 * and deploy/grafana use these names (test/ops/dashboards.test.ts checks that they exist here).
 */
const METRICS = {
  lastSuccess: { name: 'coffer_backup_last_success_timestamp_seconds', help: 'Unix time of the last successful backup of the database.' },
  lastRun: { name: 'coffer_backup_last_run_timestamp_seconds', help: 'Unix time the last backup run of the database ended (success or failure).' },
  lastResult: { name: 'coffer_backup_last_result', help: 'Result of the last backup run of the database: 1 success, 0 failure.' },
  lastDuration: { name: 'coffer_backup_last_duration_seconds', help: 'Duration of the last backup run of the database, in seconds.' },
  lastBytes: { name: 'coffer_backup_last_size_bytes', help: 'Bytes stored (encrypted) by the last successful backup of the database.' },
  recoveryPoint: { name: 'coffer_recovery_point_timestamp_seconds', help: "Unix time of the newest completed backup's snapshot: a restore now loses what changed since." },
  restorePredicted: { name: 'coffer_restore_predicted_seconds', help: "Restore time of the newest backup predicted from the newest successful drill, in seconds (absent: no successful drill)." },
  drillLast: { name: 'coffer_drill_last_timestamp_seconds', help: 'Unix time the newest drill of the database started.' },
  drillResult: { name: 'coffer_drill_last_result', help: 'Result of the newest drill of the database: 1 success, 0 failure.' },
  rtoTarget: { name: 'coffer_rto_target_seconds', help: 'The --rto-target status was run with, in seconds.' },
  rpoTarget: { name: 'coffer_rpo_target_seconds', help: 'The --rpo-target status was run with, in seconds.' },
  drillMaxAge: { name: 'coffer_drill_max_age_seconds', help: 'The --max-drill-age status was run with, in seconds.' },
  statusLastRun: { name: 'coffer_status_last_run_timestamp_seconds', help: 'Unix time coffer status last checked the database (the recovery gauges are that old).' },
} as const satisfies Record<string, MetricDef>;

/** Every metric name coffer writes. */
export const METRIC_NAMES: readonly string[] = Object.values(METRICS).map((d) => d.name);

type Family = keyof typeof METRICS;
/** family → series key (rendered labels) → value */
type Series = Map<Family, Map<string, number>>;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labels(r: Pick<BackupRunMetrics, 'repository' | 'database' | 'cluster'>): string {
  const what = r.cluster !== undefined ? `cluster="${escapeLabel(r.cluster)}"` : `database="${escapeLabel(r.database)}"`;
  return `{${what},repository="${escapeLabel(r.repository)}"}`;
}

/** Reads the series of an existing file written by coffer (other lines are ignored). */
function parseExisting(text: string): Series {
  const out: Series = new Map();
  const byName = new Map<string, Family>(Object.entries(METRICS).map(([k, d]) => [d.name, k as Family]));
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})\s+(\S+)$/.exec(line);
    if (!m) continue;
    const fam = byName.get(m[1]!);
    const v = Number(m[3]);
    if (!fam || !Number.isFinite(v)) continue;
    if (!out.has(fam)) out.set(fam, new Map());
    out.get(fam)!.set(m[2]!, v);
  }
  return out;
}

function formatValue(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toFixed(3);
}

/** Renders the whole file (sorted, so unchanged series stay in place). */
function renderMetrics(series: Series): string {
  const lines: string[] = [];
  for (const fam of Object.keys(METRICS) as Family[]) {
    const s = series.get(fam);
    if (!s || s.size === 0) continue;
    const d = METRICS[fam];
    lines.push(`# HELP ${d.name} ${d.help}`, `# TYPE ${d.name} gauge`);
    for (const k of [...s.keys()].sort()) lines.push(`${d.name}${k} ${formatValue(s.get(k)!)}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Sets a series, or removes it when the value is null (a gauge that is unknown now must not keep an old value). */
type SetSeries = (fam: Family, key: string, v: number | null) => void;

/**
 * Reads the metrics file at `file` (if any), lets `update` change series, and replaces the file
 * atomically; the series `update` does not touch are kept. Throws UsageError when the file
 * cannot be read or written.
 */
async function updateMetricsFile(file: string, update: (set: SetSeries) => void): Promise<void> {
  let existing = '';
  try {
    existing = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new UsageError(`--metrics-file ${file}: cannot read it: ${errnoWords(err)}`);
    }
  }
  const series = parseExisting(existing);
  update((fam, key, v) => {
    if (v === null) {
      series.get(fam)?.delete(key);
      return;
    }
    if (!series.has(fam)) series.set(fam, new Map());
    series.get(fam)!.set(key, v);
  });
  try {
    await writeFileAtomic(file, renderMetrics(series), { mode: 0o644 });
  } catch (err) {
    throw new UsageError(`--metrics-file ${file}: cannot write it: ${errnoWords(err)}`, {
      hint: 'point --metrics-file into an existing writable directory (e.g. node_exporter textfile directory)',
    });
  }
}

/**
 * `--metrics-file` resolved against `cwd`, checked before anything runs: its directory must exist
 * and be writable (else UsageError, exit 2). Undefined when not given.
 */
export function metricsFilePath(given: string | undefined, cwd: string): string | undefined {
  if (given === undefined) return undefined;
  const file = path.resolve(cwd, given);
  try {
    accessSync(path.dirname(file), fsConstants.W_OK);
  } catch {
    throw new UsageError(`--metrics-file ${given}: its directory does not exist or is not writable`, {
      hint: 'point it into the node_exporter textfile directory, e.g. /var/lib/prometheus/node-exporter/coffer.prom',
    });
  }
  return file;
}

/**
 * Merges the results of a run into the metrics file at `file` and replaces it atomically.
 * Throws UsageError when the file's directory is missing or not writable.
 */
export async function writeBackupMetrics(file: string, results: BackupRunMetrics[]): Promise<void> {
  await updateMetricsFile(file, (set) => {
    for (const r of results) {
      const key = labels(r);
      set('lastRun', key, r.finishedAt);
      set('lastResult', key, r.success ? 1 : 0);
      set('lastDuration', key, r.durationSeconds);
      if (r.success) {
        set('lastSuccess', key, r.finishedAt);
        set('lastBytes', key, r.bytes);
      }
    }
  });
}

/** The newest drill of a database (Unix seconds), as `status` and `drill` report it. */
export interface DrillMetrics {
  repository: string;
  database: string;
  startedAt: number;
  ok: boolean;
}

/** What `coffer status` found for one database; null: unknown or not asked for (the series is removed). */
export interface RecoveryMetrics {
  repository: string;
  database: string;
  /** When status ran (Unix seconds). */
  checkedAt: number;
  /** The newest completed backup's snapshot time (null: no backup). */
  recoveryPointAt: number | null;
  predictedRestoreSeconds: number | null;
  drill: Omit<DrillMetrics, 'repository' | 'database'> | null;
  rtoTargetSeconds: number | null;
  rpoTargetSeconds: number | null;
  maxDrillAgeSeconds: number | null;
}

function setDrill(set: SetSeries, key: string, d: Omit<DrillMetrics, 'repository' | 'database'> | null): void {
  set('drillLast', key, d?.startedAt ?? null);
  set('drillResult', key, d === null ? null : d.ok ? 1 : 0);
}

/**
 * Writes what `coffer status` found into the metrics file: every recovery gauge of each database
 * checked is set or, when unknown now, removed; the targets are exported beside them so that one
 * alert rule compares each database with its own target.
 */
export async function writeRecoveryMetrics(file: string, rows: RecoveryMetrics[]): Promise<void> {
  await updateMetricsFile(file, (set) => {
    for (const r of rows) {
      const key = labels(r);
      set('statusLastRun', key, r.checkedAt);
      set('recoveryPoint', key, r.recoveryPointAt);
      set('restorePredicted', key, r.predictedRestoreSeconds);
      setDrill(set, key, r.drill);
      set('rtoTarget', key, r.rtoTargetSeconds);
      set('rpoTarget', key, r.rpoTargetSeconds);
      set('drillMaxAge', key, r.maxDrillAgeSeconds);
    }
  });
}

/** Writes the drill gauges of one drill (`coffer drill --metrics-file`). */
export async function writeDrillMetrics(file: string, d: DrillMetrics): Promise<void> {
  await updateMetricsFile(file, (set) => setDrill(set, labels(d), d));
}
