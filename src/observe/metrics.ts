/**
 * Prometheus textfile-collector output (node_exporter `--collector.textfile.directory`).
 *
 * After every backup run the file is rewritten atomically (src/atomic-write.ts; mode 0644) with
 * one series per (repository, database), or per (repository, cluster) for physical backups. Series of databases the run did not cover are kept
 * (read, merge, write), and the last success time of a database whose run failed keeps its
 * previous value.
 */
import * as fsp from 'node:fs/promises';
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

/** The metric families coffer writes, in file order. */
const METRICS = {
  lastSuccess: { name: 'coffer_backup_last_success_timestamp_seconds', help: 'Unix time of the last successful backup of the database.' },
  lastRun: { name: 'coffer_backup_last_run_timestamp_seconds', help: 'Unix time the last backup run of the database ended (success or failure).' },
  lastResult: { name: 'coffer_backup_last_result', help: 'Result of the last backup run of the database: 1 success, 0 failure.' },
  lastDuration: { name: 'coffer_backup_last_duration_seconds', help: 'Duration of the last backup run of the database, in seconds.' },
  lastBytes: { name: 'coffer_backup_last_size_bytes', help: 'Bytes stored (encrypted) by the last successful backup of the database.' },
} as const satisfies Record<string, MetricDef>;

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

/**
 * Merges the results of a run into the metrics file at `file` and replaces it atomically.
 * Throws UsageError when the file's directory is missing or not writable.
 */
export async function writeBackupMetrics(file: string, results: BackupRunMetrics[]): Promise<void> {
  let existing = '';
  try {
    existing = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new UsageError(`--metrics-file ${file}: cannot read it: ${errnoWords(err)}`);
    }
  }
  const series = parseExisting(existing);
  const set = (fam: Family, key: string, v: number): void => {
    if (!series.has(fam)) series.set(fam, new Map());
    series.get(fam)!.set(key, v);
  };
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
  try {
    await writeFileAtomic(file, renderMetrics(series), { mode: 0o644 });
  } catch (err) {
    throw new UsageError(`--metrics-file ${file}: cannot write it: ${errnoWords(err)}`, {
      hint: 'point --metrics-file into an existing writable directory (e.g. node_exporter textfile directory)',
    });
  }
}
