import { UsageError } from '../errors.js';
import type { Tier } from '../catalog/layout.js';

/**
 * Retention policy: how long a backup of each tier is kept, in whole days.
 *
 * Periods are given as `<number><unit>` with units `d` (day), `w` (7 days), `mo` (31 days) and
 * `y` (366 days), and converted to whole days rounded UP, so nothing ever expires earlier than
 * asked: `12mo` = 372 days, `1.5w` = 11 days. Defaults follow the original procedure: daily 14 days,
 * weekly 8 weeks, monthly 12 months, manual 90 days.
 */
export interface RetentionPolicy {
  /** Days to keep each tier (at least 1). */
  days: Record<Tier, number>;
  /**
   * Days to keep archived WAL (`coffer-tier=wal`): the point-in-time window. When unset the
   * lifecycle has no WAL rule (commands that do not manage lifecycle rules leave it out).
   */
  walDays?: number;
}

/**
 * Default point-in-time window: as long as daily backups are kept, so that every daily base
 * backup still stored can be rolled forward to any moment after it. Weekly and monthly base
 * backups outlive it; they are self-contained (pg_basebackup -X fetch) and restore to their own
 * end without WAL.
 */
export const DEFAULT_KEEP_WAL = '14d';

/** The keep flags (and config keys) as given by the user. */
export interface RetentionFlags {
  keepDaily?: string;
  keepWeekly?: string;
  keepMonthly?: string;
  keepManual?: string;
  keepWal?: string;
}

/** Defaults, as periods (also shown in help texts). */
export const DEFAULT_KEEP: Readonly<Record<Tier, string>> = {
  daily: '14d',
  weekly: '8w',
  monthly: '12mo',
  manual: '90d',
};

const UNIT_DAYS: Record<string, number> = { d: 1, w: 7, mo: 31, y: 366 };
/** Longest period accepted: 100 years (S3 lifecycle and object lock take days as integers). */
const MAX_DAYS = 36_600;

/** `14d`, `8w`, `12mo`, `1y`, `1.5w` → whole days, rounded up. Throws UsageError naming `what`. */
export function parseRetentionPeriod(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(d|w|mo|y)\s*$/i.exec(text);
  if (!m) {
    throw new UsageError(`${what}: invalid retention period ${JSON.stringify(text)}`, { hint: 'use a number and a unit: d, w, mo (31 days) or y (366 days), e.g. 14d, 8w, 12mo' });
  }
  const days = Math.ceil(Number(m[1]) * UNIT_DAYS[m[2]!.toLowerCase()]!);
  if (days < 1 || days > MAX_DAYS) throw new UsageError(`${what}: retention must be from 1 day to 100 years (got ${JSON.stringify(text)})`);
  return days;
}

/** The policy from the keep flags; unset ones take {@link DEFAULT_KEEP}. */
export function parseRetentionPolicy(flags: RetentionFlags = {}): RetentionPolicy {
  return {
    days: {
      daily: parseRetentionPeriod(flags.keepDaily ?? DEFAULT_KEEP.daily, '--keep-daily'),
      weekly: parseRetentionPeriod(flags.keepWeekly ?? DEFAULT_KEEP.weekly, '--keep-weekly'),
      monthly: parseRetentionPeriod(flags.keepMonthly ?? DEFAULT_KEEP.monthly, '--keep-monthly'),
      manual: parseRetentionPeriod(flags.keepManual ?? DEFAULT_KEEP.manual, '--keep-manual'),
    },
    walDays: parseRetentionPeriod(flags.keepWal ?? DEFAULT_KEEP_WAL, '--keep-wal'),
  };
}

/** S3 object-lock modes as the API spells them. */
export type ObjectLockMode = 'GOVERNANCE' | 'COMPLIANCE';

/** `governance` | `compliance` (any case) → the API's spelling; `undefined` stays undefined. */
export function parseObjectLockMode(text: string | undefined, what: string): ObjectLockMode | undefined {
  if (text === undefined) return undefined;
  const v = text.trim().toLowerCase();
  if (v === 'governance') return 'GOVERNANCE';
  if (v === 'compliance') return 'COMPLIANCE';
  throw new UsageError(`${what} must be governance or compliance (got ${JSON.stringify(text)})`);
}

/**
 * The retain-until date for a new object of `tier` written at `now`: now + the tier's days.
 * The object can then not be deleted before the lifecycle rule would expire it anyway.
 */
export function retainUntil(policy: RetentionPolicy, tier: Tier, now: Date): Date {
  return new Date(now.getTime() + policy.days[tier] * 86_400_000);
}
