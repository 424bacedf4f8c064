/**
 * Issue 18, item 3: the progress figures (percentage, rate, ETA), the terminal line and the
 * periodic log line, with an injected clock and writer. Pure: runs with COFFER_TEST_SERVICES=none.
 * test/ops/progress-tty.test.ts runs the built CLI under a pseudo-terminal.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createLogger } from '../../src/observe/log.js';
import { clearForLogLine, formatDuration, formatProgressLine, Progress, PROGRESS_LOG_EVERY_MS, progressFigures } from '../../src/observe/progress.js';

const MiB = 1024 * 1024;

describe('progressFigures', () => {
  it('an exact total: percentage, mean rate and the time left at that rate', () => {
    const p = progressFigures(30 * MiB, 120 * MiB, false, 10_000);
    expect(p.percent).toBe(25);
    expect(p.rate).toBeCloseTo(3 * MiB);
    expect(p.etaSeconds).toBe(30);
    expect(p.elapsedSeconds).toBe(10);
  });

  it('an exact total reaches 100 % and ETA 0 at its last byte, and not before', () => {
    expect(progressFigures(120 * MiB - 1, 120 * MiB, false, 10_000).percent).toBe(99);
    const done = progressFigures(120 * MiB, 120 * MiB, false, 10_000);
    expect(done.percent).toBe(100);
    expect(done.etaSeconds).toBe(0);
  });

  it('an estimate never shows more than 99 %, and has no ETA once passed (never a negative one)', () => {
    expect(progressFigures(99.9 * MiB, 100 * MiB, true, 10_000).percent).toBe(99);
    const over = progressFigures(150 * MiB, 100 * MiB, true, 10_000);
    expect(over.percent).toBe(99);
    expect(over.etaSeconds).toBeUndefined();
    const exactOver = progressFigures(150 * MiB, 100 * MiB, false, 10_000);
    expect(exactOver.percent).toBe(100);
    expect(exactOver.etaSeconds).toBe(0);
  });

  it('no total (unknown, or 0): no percentage and no ETA', () => {
    for (const total of [undefined, 0]) {
      const p = progressFigures(5 * MiB, total, false, 5_000);
      expect(p.total).toBeUndefined();
      expect(p.percent).toBeUndefined();
      expect(p.etaSeconds).toBeUndefined();
    }
  });

  it('no ETA before a second has passed or before the first byte (no division by a tiny rate)', () => {
    expect(progressFigures(1 * MiB, 100 * MiB, false, 500).etaSeconds).toBeUndefined();
    expect(progressFigures(0, 100 * MiB, false, 5_000).etaSeconds).toBeUndefined();
    expect(progressFigures(0, 100 * MiB, false, 5_000).percent).toBe(0);
  });

  it('the ETA follows the mean rate: a burst does not make it jump', () => {
    // 1 MiB/s for 60 s, then 10 MiB arrive in one second: the ETA moves by a few seconds, not by tens.
    const before = progressFigures(60 * MiB, 200 * MiB, false, 60_000).etaSeconds!;
    const after = progressFigures(70 * MiB, 200 * MiB, false, 61_000).etaSeconds!;
    expect(before).toBe(140);
    expect(after).toBeGreaterThan(before - 30);
    expect(after).toBeLessThan(before);
  });
});

describe('the terminal line', () => {
  it('label, bytes of the total, percentage, rate, elapsed and ETA; an estimate marked ~', () => {
    expect(formatProgressLine('restore', progressFigures(30 * MiB, 120 * MiB, false, 10_000))).toBe('restore  30.0 MiB of 120.0 MiB  25 %  3.00 MiB/s  10s  ETA 30s');
    expect(formatProgressLine('backup shop', progressFigures(30 * MiB, 120 * MiB, true, 10_000))).toBe('backup shop  30.0 MiB of ~120.0 MiB  ~25 %  3.00 MiB/s  10s  ETA ~30s');
    expect(formatProgressLine('restore', progressFigures(1 * MiB, 120 * MiB, false, 200))).toMatch(/ETA \?$/);
    expect(formatProgressLine('restore', progressFigures(30 * MiB, undefined, false, 10_000))).toBe('restore  30.0 MiB  3.00 MiB/s  10s');
  });

  it('durations', () => {
    expect(formatDuration(0)).toBe('0s');
    expect(formatDuration(59.4)).toBe('59s');
    expect(formatDuration(75)).toBe('1m15s');
    expect(formatDuration(3700)).toBe('1h01m');
    expect(formatDuration(-3)).toBe('0s');
  });
});

describe('Progress', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  function clock(): { now: () => number; advance: (ms: number) => void } {
    let t = 1_000_000;
    return {
      now: () => t,
      advance: (ms) => {
        t += ms;
        vi.advanceTimersByTime(ms);
      },
    };
  }

  it('on a terminal: redrawn every 500 ms in place, cut to the width, cleared at stop; no log lines', () => {
    const c = clock();
    const out: string[] = [];
    const logged: string[] = [];
    const log = createLogger({ format: 'json', write: (l) => logged.push(l) });
    const p = new Progress('restore', { tty: true, log, total: 100 * MiB, write: (s) => out.push(s), now: c.now, columns: () => 200 });
    p.update(10 * MiB);
    c.advance(499);
    expect(out).toEqual([]);
    c.advance(1);
    expect(out).toEqual(['\r\x1b[2Krestore  10.0 MiB of 100.0 MiB  10 %  20.0 MiB/s  0s  ETA ?']);
    p.update(25 * MiB);
    c.advance(500);
    expect(out[1]).toBe('\r\x1b[2Krestore  25.0 MiB of 100.0 MiB  25 %  25.0 MiB/s  1s  ETA 3s');
    p.stop();
    expect(out.at(-1)).toBe('\r\x1b[2K');
    c.advance(5_000);
    expect(out).toHaveLength(3);
    expect(logged).toEqual([]);
  });

  it('a line wider than the terminal is cut (a wrapped line cannot be redrawn in place)', () => {
    const c = clock();
    const out: string[] = [];
    const p = new Progress('restore', { tty: true, total: 100 * MiB, write: (s) => out.push(s), now: c.now, columns: () => 20 });
    c.advance(500);
    expect(out[0]).toBe('\r\x1b[2K' + 'restore  0 B of 100'.slice(0, 19));
    p.stop();
  });

  it('not on a terminal: a JSON progress line every 30 s with the same figures; none for a shorter run; nothing drawn', () => {
    const c = clock();
    const out: string[] = [];
    const logged: string[] = [];
    const log = createLogger({ format: 'json', write: (l) => logged.push(l) });
    const p = new Progress('backup shop', { tty: false, log, fields: { task: 'backup', database: 'shop' }, write: (s) => out.push(s), now: c.now });
    p.setTotal(1000 * MiB, true);
    p.update(30 * MiB);
    c.advance(PROGRESS_LOG_EVERY_MS - 1);
    expect(logged).toEqual([]);
    c.advance(1);
    expect(logged).toHaveLength(1);
    const rec = JSON.parse(logged[0]!) as Record<string, unknown>;
    expect(rec).toMatchObject({
      level: 'info',
      msg: 'progress',
      task: 'backup',
      database: 'shop',
      bytes: 30 * MiB,
      totalBytes: 1000 * MiB,
      totalIsEstimate: true,
      percent: 3,
      bytesPerSecond: MiB,
      elapsedSeconds: 30,
      etaSeconds: 970,
    });
    c.advance(PROGRESS_LOG_EVERY_MS);
    expect(logged).toHaveLength(2);
    p.stop();
    c.advance(PROGRESS_LOG_EVERY_MS * 3);
    expect(logged).toHaveLength(2);
    expect(out).toEqual([]);
  });

  it('a run shorter than the interval logs no progress line', () => {
    const c = clock();
    const logged: string[] = [];
    const log = createLogger({ format: 'text', write: (l) => logged.push(l) });
    const p = new Progress('restore', { tty: false, log, total: 10 * MiB });
    p.update(10 * MiB);
    c.advance(PROGRESS_LOG_EVERY_MS - 1);
    p.stop();
    c.advance(PROGRESS_LOG_EVERY_MS * 2);
    expect(logged).toEqual([]);
  });

  it('text log: the same fields; an unknown total leaves out the percentage and the ETA', () => {
    const c = clock();
    const logged: string[] = [];
    const log = createLogger({ format: 'text', write: (l) => logged.push(l) });
    const p = new Progress('restore', { tty: false, log, fields: { task: 'restore' }, now: c.now });
    p.update(60 * MiB);
    c.advance(PROGRESS_LOG_EVERY_MS);
    p.stop();
    expect(logged).toEqual([`coffer: progress  task=restore bytes=${60 * MiB} bytesPerSecond=${2 * MiB} elapsedSeconds=30`]);
  });
});

describe('log lines while a progress line is drawn', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('start with "clear the line" only while a progress line is on the terminal', () => {
    const out: string[] = [];
    expect(clearForLogLine()).toBe('');
    const p = new Progress('restore', { tty: true, total: 10, write: (s) => out.push(s), columns: () => 80 });
    expect(clearForLogLine(), 'nothing drawn yet').toBe('');
    vi.advanceTimersByTime(500);
    expect(clearForLogLine()).toBe('\r\x1b[2K');
    p.stop();
    expect(clearForLogLine()).toBe('');
    const quiet = new Progress('restore', { tty: false, total: 10 });
    vi.advanceTimersByTime(60_000);
    expect(clearForLogLine(), 'no terminal, nothing drawn').toBe('');
    quiet.stop();
  });
});
