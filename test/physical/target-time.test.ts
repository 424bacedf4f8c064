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
