/**
 * The record of one restore drill (`coffer drill`), and what it predicts.
 *
 * A drill restores a backup into a scratch database, checks it and drops it; its record says
 * how long each phase took and how many bytes it moved. `coffer status` scales the newest
 * successful drill to the newest backup's size to predict how long restoring that backup would
 * take (the recovery time), with the phases that do not grow with the size kept as they were.
 */
import { IntegrityError } from '../errors.js';
import type { RestorePhases } from '../pipeline/restore.js';

export const DRILL_FORMAT = 'coffer-drill';

/** Phases of a drill, in milliseconds: before the restore (finding the backup), the restore's own, and the drop after it. */
export interface DrillPhases extends RestorePhases {
  select: number;
  drop: number;
}

/**
 * What a drill stores in the repository: times, sizes and the outcome, nothing of the data. It
 * lies unencrypted beside the backups, readable by whoever may list them, so it holds no table
 * names, no row counts, no smoke query output and no error text (which can quote a row): a
 * failure is its exit code and kind; the message is in the drill's own output and log.
 */
export interface DrillRecord {
  format: typeof DRILL_FORMAT;
  formatVersion: 1;
  /** `YYYYMMDDTHHMMSSZ-<8 hex>`: when the drill started. */
  id: string;
  ok: boolean;
  startedAt: string;
  durationMs: number;
  host: string;
  /** The repository drilled (null: a --file). */
  repository: string | null;
  backupId: string | null;
  database: string | null;
  /** Stored (encrypted) bytes downloaded, and the archive's bytes once decompressed. */
  storedBytes: number;
  archiveBytes: number;
  /** pg_restore --jobs of the drill: a restore with other jobs goes at another pace. */
  jobs: number;
  tables: number;
  /** Where the time went (null when the drill failed before the restore ended). */
  phases: DrillPhases | null;
  /** A failed drill: its exit code and the kind of error (README "Exit codes"); null when ok. */
  failure: { exitCode: number; kind: string } | null;
}

/** What `coffer drill` prints (and writes with --result-file): the record, and what stays local. */
export interface DrillResult extends DrillRecord {
  rows: Array<{ table: string; rows: number }>;
  checks: unknown;
  error: string | null;
}

/** The part of a drill's result that is stored in the repository. */
export function drillRecordOf(r: DrillResult): DrillRecord {
  const { rows: _rows, checks: _checks, error: _error, ...record } = r;
  return record;
}

/** A restore's predicted duration, and how it was worked out. */
export interface Prediction {
  seconds: number;
  /** The phases that scale with the size, scaled by this factor (stored bytes now / in the drill). */
  scale: number;
}

/**
 * How long restoring `storedBytes` would take, from a successful drill: its fixed phases as they
 * were, its transfer and post-data phases in proportion to the stored size. The drop is not part
 * of a restore.
 */
export function predictRestore(d: DrillRecord, storedBytes: number): Prediction | undefined {
  if (!d.ok || !d.phases || d.storedBytes <= 0) return undefined;
  const p = d.phases;
  const scale = storedBytes / d.storedBytes;
  const fixed = p.select + p.setup + p.checks + p.swap;
  const scaled = (p.transfer + p.restore) * scale;
  return { seconds: (fixed + scaled) / 1000, scale };
}

/** The restore a successful drill measured, in seconds: its phases but the drop (null when it failed). */
export function measuredRestoreSeconds(d: DrillRecord): number | null {
  const p = d.phases;
  return d.ok && p ? (p.select + p.setup + p.transfer + p.restore + p.checks + p.swap) / 1000 : null;
}

export function encodeDrillRecord(r: DrillRecord): Uint8Array {
  return Buffer.from(`${JSON.stringify(r, null, 2)}\n`, 'utf8');
}

/** Parses and checks a stored drill record (IntegrityError naming `key` when it is not one). */
export function decodeDrillRecord(bytes: Uint8Array, key: string): DrillRecord {
  const bad = (why: string): never => {
    throw new IntegrityError(`drill record ${key}: ${why}`, { hint: 'it was not written by coffer drill --record, or was changed; remove it' });
  };
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8')) as Record<string, unknown>;
  } catch {
    return bad('not JSON');
  }
  if (typeof v !== 'object' || v === null) bad('not an object');
  if (v.format !== DRILL_FORMAT || v.formatVersion !== 1) bad(`unknown format ${JSON.stringify(v.format)} ${JSON.stringify(v.formatVersion)}`);
  for (const k of ['id', 'startedAt', 'host'] as const) if (typeof v[k] !== 'string') bad(`${k} is not a string`);
  for (const k of ['durationMs', 'storedBytes', 'archiveBytes', 'jobs', 'tables'] as const) if (typeof v[k] !== 'number' || !Number.isFinite(v[k]) || (v[k] as number) < 0) bad(`${k} is not a count`);
  if (typeof v.ok !== 'boolean') bad('ok is not a boolean');
  if (v.phases !== null) {
    const p = v.phases as Record<string, unknown> | undefined;
    if (typeof p !== 'object' || p === null) return bad('phases is not an object');
    for (const k of ['select', 'setup', 'transfer', 'restore', 'checks', 'swap', 'drop']) if (typeof p[k] !== 'number' || !((p[k] as number) >= 0)) bad(`phases.${k} is not a duration`);
  }
  if (v.ok === true && v.phases === null) bad('a successful drill without phases');
  if (v.ok === false) {
    const f = v.failure as Record<string, unknown> | null | undefined;
    if (typeof f !== 'object' || f === null || typeof f.exitCode !== 'number' || typeof f.kind !== 'string') bad('a failed drill without its exit code');
  }
  return v as unknown as DrillRecord;
}
