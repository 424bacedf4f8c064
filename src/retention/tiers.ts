import type { Tier } from '../catalog/layout.js';
import { backupIdTime } from '../catalog/layout.js';

/** ISO 8601 week of a date, in UTC: e.g. `2026-W48`. */
function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7; // Monday = 1 … Sunday = 7
  t.setUTCDate(t.getUTCDate() + 4 - day); // the Thursday of this week decides the year
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

/** Calendar month of a date, in UTC: e.g. `2026-11`. */
function calendarMonth(d: Date): string {
  return d.toISOString().slice(0, 7);
}

/**
 * The tier of a new scheduled backup, decided from the completed backups already there (so a
 * failed Sunday does not lose the week): `monthly` when none of this calendar month exists yet,
 * else `weekly` when no weekly or monthly one exists for this ISO week, else `daily`.
 * Periods are UTC. Pure: `now` is passed in.
 */
export function chooseTier(existing: ReadonlyArray<{ id: string; tier: Tier }>, now: Date): Tier {
  const month = calendarMonth(now);
  const week = isoWeek(now);
  let haveMonthly = false;
  let haveWeekly = false;
  for (const b of existing) {
    let t: Date;
    try {
      t = backupIdTime(b.id);
    } catch {
      continue;
    }
    if (b.tier === 'monthly' && calendarMonth(t) === month) haveMonthly = true;
    if ((b.tier === 'weekly' || b.tier === 'monthly') && isoWeek(t) === week) haveWeekly = true;
  }
  if (!haveMonthly) return 'monthly';
  if (!haveWeekly) return 'weekly';
  return 'daily';
}
