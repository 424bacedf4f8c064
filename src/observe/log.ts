import { randomBytes } from 'node:crypto';

export type LogFormat = 'text' | 'json';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type LogFields = Record<string, string | number | boolean | null | undefined>;

export interface Logger {
  readonly runId: string;
  readonly format: LogFormat;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

/** The same logger, every line with `extra` fields too (e.g. the source of a multi-source run). */
export function withFields(log: Logger, extra: LogFields): Logger {
  return {
    ...log,
    runId: log.runId,
    format: log.format,
    debug: (m, f) => log.debug(m, { ...extra, ...f }),
    info: (m, f) => log.info(m, { ...extra, ...f }),
    warn: (m, f) => log.warn(m, { ...extra, ...f }),
    error: (m, f) => log.error(m, { ...extra, ...f }),
  };
}

export interface LoggerOptions {
  format: LogFormat;
  level?: LogLevel;
  runId?: string;
  /** Where lines go (default: stderr). */
  write?: (line: string) => void;
  /** Strings that must never appear in a line (passwords, secret keys): replaced by `***`. */
  secrets?: string[];
}

export function newRunId(): string {
  return randomBytes(6).toString('hex');
}

/**
 * Log lines on stderr: `text` for people at a terminal, `json` (one object per line, with
 * time, level, run id, message and fields) for cron mail, journald and log shippers.
 */
export function createLogger(opts: LoggerOptions): Logger {
  const runId = opts.runId ?? newRunId();
  const min = LEVELS[opts.level ?? 'info'];
  const write = opts.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const secrets = (opts.secrets ?? []).filter((s) => s.length >= 4);
  const scrub = (s: string): string => secrets.reduce((acc, sec) => acc.split(sec).join('***'), s);
  const emit = (level: LogLevel, msg: string, fields?: LogFields): void => {
    if (LEVELS[level] < min) return;
    let line: string;
    if (opts.format === 'json') {
      const rec: Record<string, unknown> = { time: new Date().toISOString(), level, run: runId, msg };
      for (const [k, v] of Object.entries(fields ?? {})) if (v !== undefined) rec[k] = v;
      line = JSON.stringify(rec);
    } else {
      const extra = Object.entries(fields ?? {})
        .filter(([, v]) => v !== undefined && v !== null && v !== '')
        .map(([k, v]) => `${k}=${typeof v === 'string' && /\s/.test(v) ? JSON.stringify(v) : String(v)}`)
        .join(' ');
      const tag = level === 'info' ? '' : `${level}: `;
      line = `coffer: ${tag}${msg}${extra ? `  ${extra}` : ''}`;
    }
    write(scrub(line));
  };
  return {
    runId,
    format: opts.format,
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
  };
}

/** `1536` → `1.5 KiB`. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}
