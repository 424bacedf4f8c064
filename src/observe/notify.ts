/**
 * Notifications of a backup run:
 *
 * - `--notify URL`: healthchecks.io-style pings. `URL/start` when the run starts, `URL` when it
 *   succeeded, `URL/fail` with a short plain-text reason when it failed (POST).
 * - `--webhook URL`: a JSON POST per database when its backup succeeded or failed.
 *
 * Each request has a 10 s timeout and is tried up to 3 times. A notifier that fails never fails
 * the backup: it is logged as a warning. URLs are logged by origin only (ping URLs often embed
 * a token), URLs with a `user:password@` part are refused, and no request carries a password,
 * key or connection string.
 *
 * After a stop signal ({@link Notifier.stopping}) a run must end within seconds (a Kubernetes
 * pod gets 30 s before SIGKILL): requests in flight are abandoned, and what is left gets one
 * try each, all within {@link STOP_BUDGET_MS}, the failure ping first.
 */
import pRetry, { AbortError } from 'p-retry';
import { UsageError } from '../errors.js';
import { followAbort } from '../run/abort.js';
import type { Logger } from './log.js';

/** After a stop signal: the time all remaining notifications share. */
const STOP_BUDGET_MS = 3_000;

/** What a webhook receives for one database. */
export interface WebhookEvent {
  event: 'backup.success' | 'backup.failure';
  database: string;
  repository: string;
  host: string;
  runId: string;
  /** Backup id (success only). */
  id: string | null;
  tier: string | null;
  bytes: number | null;
  durationSeconds: number;
  /** One-line error (failure only). */
  error: string | null;
}

export interface NotifierOptions {
  notifyUrl?: string;
  webhookUrl?: string;
  log: Logger;
  timeoutMs?: number;
  /** Tries per notification (default 3), with pauses of 500 ms, 1 s, 2 s… between them. */
  attempts?: number;
  /**
   * The run's signal (a stop signal or `--timeout`): once it is aborted the notifier is
   * {@link Notifier.stopping}, so that a ping to an endpoint that never answers cannot hold the
   * run past its `--timeout` by more than {@link STOP_BUDGET_MS}.
   */
  signal?: AbortSignal;
}

/** Checks a notification URL up front (exit 2 on a bad one). */
function parseNotifyUrl(value: string, flag: string): URL {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw new UsageError(`${flag}: invalid URL ${JSON.stringify(value.slice(0, 200))}`, { hint: 'expected e.g. https://hc-ping.com/<uuid>' });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new UsageError(`${flag} must be an http:// or https:// URL`);
  if (u.username !== '' || u.password !== '') {
    // Never echo the value: it holds a password.
    throw new UsageError(`${flag}: the URL contains a user name or password (user:password@host), which coffer does not send or log`, {
      hint: `use a URL with the token in its path (e.g. https://hc-ping.com/<uuid>), without user:password@; origin ${u.protocol}//${u.host}`,
    });
  }
  return u;
}

/** Sends the pings and webhooks of one run. All methods resolve; failures are logged. */
export class Notifier {
  private readonly notifyUrl: URL | undefined;
  private readonly webhookUrl: URL | undefined;
  private readonly log: Logger;
  private readonly timeoutMs: number;
  private readonly attempts: number;
  private started: Promise<void> = Promise.resolve();
  /** Aborts every request in flight (a stop signal). */
  private readonly inFlight = new AbortController();
  /** Set by {@link stopping}: the time by which every notification must be done. */
  private deadline: number | undefined;

  constructor(opts: NotifierOptions) {
    this.notifyUrl = opts.notifyUrl === undefined ? undefined : parseNotifyUrl(opts.notifyUrl, '--notify');
    this.webhookUrl = opts.webhookUrl === undefined ? undefined : parseNotifyUrl(opts.webhookUrl, '--webhook');
    this.log = opts.log;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.attempts = opts.attempts ?? 3;
    if (opts.signal) followAbort(opts.signal, () => this.stopping());
  }

  /**
   * The run was stopped: abandon requests in flight, and from now on give each notification one
   * short try within a shared budget of {@link STOP_BUDGET_MS}.
   */
  stopping(): void {
    if (this.deadline !== undefined) return;
    this.deadline = Date.now() + STOP_BUDGET_MS;
    this.inFlight.abort();
  }

  /** `URL/start`; not awaited by the caller's backup, but always sent before the final ping. */
  start(): void {
    if (!this.notifyUrl) return;
    this.started = this.send('--notify', pingUrl(this.notifyUrl, '/start'), { method: 'POST', body: '' });
  }

  /** `URL` (success). */
  async success(): Promise<void> {
    await this.started;
    if (this.notifyUrl) await this.send('--notify', pingUrl(this.notifyUrl, ''), { method: 'POST', body: '' });
  }

  /** `URL/fail` with a short reason (the body is plain text, at most 1000 characters). */
  async failure(reason: string): Promise<void> {
    await this.started;
    if (this.notifyUrl) {
      await this.send('--notify', pingUrl(this.notifyUrl, '/fail'), {
        method: 'POST',
        body: reason.slice(0, 1000),
        headers: { 'content-type': 'text/plain; charset=utf-8' },
      });
    }
  }

  /** A JSON POST to the webhook. */
  async webhook(event: WebhookEvent): Promise<void> {
    if (!this.webhookUrl) return;
    await this.send('--webhook', this.webhookUrl, {
      method: 'POST',
      body: JSON.stringify(event),
      headers: { 'content-type': 'application/json' },
    });
  }

  private async send(flag: string, url: URL, init: { method: string; body: string; headers?: Record<string, string> }): Promise<void> {
    let last = '';
    try {
      await pRetry(
        async () => {
          const timeoutMs = this.deadline === undefined ? this.timeoutMs : this.deadline - Date.now();
          if (timeoutMs <= 0) {
            last ||= 'not sent: the run was stopped and its notification time ran out';
            throw new AbortError(last);
          }
          // One controller per try, aborted by a timer of its own and by a stop signal. Not
          // AbortSignal.any([AbortSignal.timeout(…), …]): under Node 20 such a combined signal
          // can be garbage-collected while fetch waits, its timeout never fires, and a request to
          // an endpoint that never answers held the stopped run open (seen in 1 of ~4 stops).
          const attempt = new AbortController();
          let why: 'timeout' | 'stopped' | undefined;
          const timer = setTimeout(() => {
            why = 'timeout';
            attempt.abort();
          }, timeoutMs);
          const onStop = (): void => {
            why ??= 'stopped';
            attempt.abort();
          };
          const unfollow = this.deadline === undefined ? followAbort(this.inFlight.signal, onStop) : () => undefined;
          let res: Response;
          try {
            try {
              res = await fetch(url, { ...init, signal: attempt.signal, redirect: 'follow' });
            } catch (err) {
              // Never e.message: fetch's messages can quote the whole URL (a token in its path).
              if (why === 'timeout') last = `no answer within ${(timeoutMs / 1000).toFixed(1)} s`;
              else if (why === 'stopped') last = 'abandoned: the run was stopped';
              else last = fetchFailure(err, url);
              throw new Error(last);
            }
            // The body under the same timer: an endpoint may send headers and then stall.
            await res.arrayBuffer().catch(() => undefined);
          } finally {
            clearTimeout(timer);
            unfollow();
          }
          if (res.ok) return;
          last = `HTTP ${res.status}`;
          // A client error other than 429 will not get better.
          if (res.status >= 400 && res.status < 500 && res.status !== 429) throw new AbortError(last);
          throw new Error(last);
        },
        // Stopped: one try. Pauses of 500 ms, 1 s, 2 s…
        { retries: this.attempts - 1, minTimeout: 500, factor: 2, shouldRetry: () => this.deadline === undefined },
      );
    } catch {
      this.log.warn(`notification failed (the backup itself is not affected): ${last}`, { notifier: flag, to: url.origin });
    }
  }
}

/**
 * Why fetch failed, without the URL: the system's error code (ECONNREFUSED, ENOTFOUND…), else
 * fetch's own short reason when it names nothing of the URL ("bad port": fetch refuses ports such
 * as 1, 25 or 6000 before connecting), else the error's name.
 */
export function fetchFailure(err: unknown, url: URL): string {
  const e = err as Error & { cause?: { code?: unknown; message?: unknown } };
  if (typeof e.cause?.code === 'string' && e.cause.code !== '') return e.cause.code;
  const m = e.cause?.message;
  if (typeof m === 'string' && m !== '' && m.length <= 80 && !m.includes(url.hostname) && !m.includes('/')) return `${m} (${url.protocol}//${url.hostname}:${url.port || (url.protocol === 'https:' ? '443' : '80')})`;
  return e.name;
}

function pingUrl(base: URL, suffix: string): URL {
  const u = new URL(base.href);
  u.pathname = `${u.pathname.replace(/\/+$/, '')}${suffix}`;
  return u;
}
