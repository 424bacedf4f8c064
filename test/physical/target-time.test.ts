import { describe, expect, it } from 'vitest';
import { parseTargetTime, parseTargetTimeline } from '../../src/cli/run/restore-physical.js';
import { UsageError } from '../../src/errors.js';
import { targetTimeSetting } from '../../src/physical/restore.js';

describe('--target-time as written into recovery_target_time', () => {
  it.each([
    ['2026-12-03T07:49:52.601338Z', '2026-12-03 07:49:52.601338+00'],
    ['2026-12-03 16:49:52.601338+09:00', '2026-12-03 07:49:52.601338+00'],
    ['2026-12-03 16:49:52.999999+09', '2026-12-03 07:49:52.999999+00'],
    ['2026-12-03T07:49:52Z', '2026-12-03 07:49:52+00'],
    ['2026-12-03T00:00:00.5-05:30', '2026-12-03 05:30:00.5+00'],
    ['2026-12-31T23:59:59.9999995Z', '2026-12-31 23:59:59.9999995+00'],
  ])('%s → %s (UTC, a numeric offset, every digit of the fraction)', (given, setting) => {
    expect(targetTimeSetting({ time: parseTargetTime(given), text: given })).toBe(setting);
  });
});

describe('--target-time refuses impossible dates and times (new Date would roll them over), accepts real ones', () => {
  it.each([
    ['2026-11-31T10:33:14Z', /has no day 31/],
    ['2026-02-30T00:00:00Z', /has no day 30/],
    ['2027-02-29T12:00:00Z', /has no day 29/],
    ['2100-02-29T12:00:00Z', /has no day 29/],
    ['2026-04-31 08:00:00+09:00', /has no day 31/],
    ['2026-13-01T00:00:00Z', /month 13/],
    ['2026-00-10T00:00:00Z', /month 0/],
    ['2026-01-00T00:00:00Z', /has no day 0/],
    ['2026-12-03T24:00:00Z', /not a time of day/],
    ['2026-12-03T23:60:00Z', /not a time of day/],
    ['2026-12-03T23:59:60Z', /not a time of day/],
    ['2026-12-03T10:00:00+25:00', /zone offset/],
    ['2026-12-03T10:00:00+09:75', /zone offset/],
    ['yesterday Z', /is not a time/],
  ])('%s is refused (exit 2)', (given, why) => {
    let err: unknown;
    try {
      parseTargetTime(given);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as UsageError).exitCode).toBe(2);
    expect((err as Error).message).toMatch(why);
  });

  it.each([
    ['2028-02-29T12:00:00Z', '2028-02-29T12:00:00.000Z'],
    ['2000-02-29T00:00:00Z', '2000-02-29T00:00:00.000Z'],
    ['2026-11-30T23:59:59Z', '2026-11-30T23:59:59.000Z'],
    ['2026-12-31T23:59:59.999Z', '2026-12-31T23:59:59.999Z'],
    ['2026-01-01T00:00:00+09:00', '2025-12-31T15:00:00.000Z'],
    ['2026-03-01 00:00:00+0900', '2026-02-28T15:00:00.000Z'],
    ['2026-03-01T10:15Z', '2026-03-01T10:15:00.000Z'],
  ])('%s is accepted as %s', (given, iso) => {
    expect(parseTargetTime(given).toISOString()).toBe(iso);
  });
});

describe('--target-timeline', () => {
  it.each([
    ['current', 'current'],
    ['LATEST', 'latest'],
    ['2', 2],
    ['0x1A', 26],
  ] as const)('%s → %s', (given, want) => {
    expect(parseTargetTimeline(given)).toBe(want);
  });
  it.each(['0', '-1', 'two', '', '0x', '4294967296'])('%j is refused (exit 2)', (given) => {
    expect(() => parseTargetTimeline(given)).toThrow(UsageError);
  });
});
