import { formatBytes, type LogFields, type Logger } from './log.js';

/**
 * What a run has done so far against what it expects. `total` is undefined when it is not known
 * (a selective restore, a backup whose dump node does not see): then there is no percentage and
 * no ETA rather than wrong ones. `estimate` marks a total that is a guess (a backup's dump against
 * the database size: pg_dump writes no indexes, and text can be larger or smaller than the
 * table files): its percentage is shown as `~N %` and never passes 99 % before the end.
 */
export interface ProgressFigures {
  bytes: number;
  total: number | undefined;
  estimate: boolean;
  /** Whole percent; undefined without a total. */
  percent: number | undefined;
  /** Bytes per second over the whole run so far. */
  rate: number;
  elapsedSeconds: number;
  /** Seconds left at the run's mean rate; undefined without a total, before the first second with bytes, or once an estimated total is passed. */
  etaSeconds: number | undefined;
}

/** Below this much elapsed time the rate (and so the ETA) is too noisy to show. */
const MIN_ETA_MS = 1000;

/** The figures of one moment: pure (the tests give it any numbers). */
export function progressFigures(bytes: number, total: number | undefined, estimate: boolean, elapsedMs: number): ProgressFigures {
  const elapsedSeconds = Math.max(0, elapsedMs) / 1000;
  const rate = elapsedSeconds > 0 ? bytes / elapsedSeconds : 0;
  const known = total !== undefined && total > 0 ? total : undefined;
  let percent: number | undefined;
  let etaSeconds: number | undefined;
  if (known !== undefined) {
    const exact = (100 * bytes) / known;
    // An estimate never says 100 % (or more) before the end; an exact total is reached only at its last byte.
    percent = Math.max(0, Math.min(estimate ? 99 : 100, Math.floor(exact)));
    const left = known - bytes;
    if (left > 0 && rate > 0 && elapsedMs >= MIN_ETA_MS) etaSeconds = Math.round(left / rate);
    else if (left <= 0 && !estimate) etaSeconds = 0;
  }
  return { bytes, total: known, estimate, percent, rate, elapsedSeconds, etaSeconds };
}

/** `75` → `1m15s`; `3700` → `1h01m`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/**
 * The terminal line: `backup shop  120.0 MiB of ~310.0 MiB  ~38 %  24.0 MiB/s  5s  ETA ~8s`.
 * An estimated total and what follows from it carry a `~`.
 */
export function formatProgressLine(label: string, p: ProgressFigures): string {
  const approx = p.estimate ? '~' : '';
  const parts = [label, p.total !== undefined ? `${formatBytes(p.bytes)} of ${approx}${formatBytes(p.total)}` : formatBytes(p.bytes)];
  if (p.percent !== undefined) parts.push(`${approx}${p.percent} %`);
  parts.push(`${formatBytes(Math.round(p.rate))}/s`, formatDuration(Math.floor(p.elapsedSeconds)));
  if (p.total !== undefined) parts.push(p.etaSeconds !== undefined ? `ETA ${approx}${formatDuration(p.etaSeconds)}` : 'ETA ?');
  return parts.join('  ');
}

/** The log line's fields (the same figures, in bytes and seconds). */
export function progressFields(p: ProgressFigures): LogFields {
  return {
    bytes: p.bytes,
    totalBytes: p.total,
    // Present only with a total: true when the total is a guess (a backup's database size).
    totalIsEstimate: p.total !== undefined ? p.estimate : undefined,
    percent: p.percent,
    bytesPerSecond: Math.round(p.rate),
    elapsedSeconds: Math.round(p.elapsedSeconds),
    etaSeconds: p.etaSeconds,
  };
}

export interface ProgressOptions {
  /** stderr is a terminal: draw the line there (and log no progress lines). */
  tty: boolean;
  /** Where progress lines go when nothing is drawn (every `logEveryMs`); none without it. */
  log?: Logger;
  /** Added to each progress log line (the database, the backup id). */
  fields?: LogFields;
  total?: number;
  estimate?: boolean;
  /** Test seams. */
  write?: (s: string) => void;
  /** The terminal's width: a longer line is cut, since a wrapped line cannot be redrawn in place. */
  columns?: () => number | undefined;
  now?: () => number;
  drawEveryMs?: number;
  logEveryMs?: number;
}

/** How many progress lines are on the terminal now (drawn, not yet cleared). */
let onScreen = 0;

/**
 * What a log line on the terminal starts with: "clear the line" while a progress line is drawn,
 * so the log line does not continue it (the progress line is drawn again at its next redraw).
 */
export function clearForLogLine(): string {
  return onScreen > 0 ? '\r\x1b[2K' : '';
}

let held = 0;

/**
 * Stops progress lines from being redrawn on the terminal (clearing the one shown) until the
 * returned release is called: a prompt (an age plugin's PIN) must not be drawn over.
 */
export function holdProgressLines(): () => void {
  if (held++ === 0 && onScreen > 0) process.stderr.write('\r\x1b[2K');
  let released = false;
  return () => {
    if (!released) held--;
    released = true;
  };
}

/** How often a run that draws nothing logs its progress: runs shorter than this log none. */
export const PROGRESS_LOG_EVERY_MS = 30_000;

/**
 * Progress of one transfer. On a terminal: one line on stderr (label, bytes, percentage, rate,
 * elapsed, ETA), redrawn at most twice a second and cleared at stop. Otherwise (cron, journald,
 * a pipe): the same figures as a `progress` log line every 30 s, so runs shorter than that log
 * none.
 */
export class Progress {
  private bytes = 0;
  private total: number | undefined;
  private estimate: boolean;
  private readonly now: () => number;
  private readonly started: number;
  private readonly write: (s: string) => void;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private drawn = false;
  constructor(
    private readonly label: string,
    private readonly opts: ProgressOptions,
  ) {
    this.now = opts.now ?? Date.now;
    this.started = this.now();
    this.write = opts.write ?? ((s) => process.stderr.write(s));
    this.total = opts.total;
    this.estimate = opts.estimate ?? false;
    const every = opts.tty ? (opts.drawEveryMs ?? 500) : opts.log ? (opts.logEveryMs ?? PROGRESS_LOG_EVERY_MS) : undefined;
    if (every !== undefined) {
      this.timer = setInterval(() => this.tick(), every);
      this.timer.unref();
    }
  }
  update(bytes: number): void {
    this.bytes = bytes;
  }
  /** What the run expects in all (undefined: unknown), and whether that is a guess. */
  setTotal(total: number | undefined, estimate = false): void {
    this.total = total;
    this.estimate = estimate;
  }
  figures(): ProgressFigures {
    return progressFigures(this.bytes, this.total, this.estimate, this.now() - this.started);
  }
  /** One redraw (terminal) or one log line (otherwise); the timer calls it. */
  tick(): void {
    if (this.stopped) return;
    const p = this.figures();
    if (this.opts.tty) {
      if (held > 0) return;
      const line = formatProgressLine(this.label, p);
      const cols = (this.opts.columns ?? (() => process.stderr.columns))();
      if (!this.drawn) onScreen++;
      this.drawn = true;
      this.write(`\r\x1b[2K${cols !== undefined && cols > 1 && line.length >= cols ? line.slice(0, cols - 1) : line}`);
    }
    else this.opts.log?.info('progress', { task: this.label, ...this.opts.fields, ...progressFields(p) });
  }
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.drawn) onScreen--;
    this.drawn = false;
    if (this.opts.tty) this.write('\r\x1b[2K');
  }
}
