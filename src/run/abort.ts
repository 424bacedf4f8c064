/**
 * Stop signals: following one, the error that says a run was stopped, and the errors that only
 * echo a teardown.
 */
import { CofferError, InterruptedError, StorageError } from '../errors.js';

/**
 * Calls `onAbort` once when `signal` aborts (at once if it already has). Returns the function
 * that stops following it; call it when the work is done so that a long-lived signal does not
 * keep the listener.
 */
export function followAbort(signal: AbortSignal, onAbort: () => void): () => void {
  if (signal.aborted) {
    onAbort();
    return () => undefined;
  }
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

/**
 * `work`, or the abort of `signal` (rejected with its reason), whichever comes first: a wait
 * for a child that a stop must end at once (its supervisor's teardown then kills the child).
 */
export async function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  let unfollow = (): void => undefined;
  const stopped = new Promise<never>((_, reject) => (unfollow = followAbort(signal, () => reject(signal.reason))));
  try {
    return await Promise.race([work, stopped]);
  } finally {
    unfollow();
  }
}

/**
 * A signal that aborts when any of `signals` does, with the first one's reason. Unlike Node 20's
 * `AbortSignal.any`, which its sources hold only weakly, this one is held by its sources'
 * listeners: it cannot be garbage-collected while work still waits on it (a fetch whose combined
 * timeout never fired held a stopped run open).
 */
export function anySignal(signals: AbortSignal[]): AbortSignal {
  const ac = new AbortController();
  const stops: Array<() => void> = [];
  for (const s of signals) {
    stops.push(
      followAbort(s, () => {
        if (!ac.signal.aborted) ac.abort(s.reason);
        for (const stop of stops) stop();
      }),
    );
    if (ac.signal.aborted) break;
  }
  return ac.signal;
}

/** The error for a stop signal: its reason when that is one of ours, else an {@link InterruptedError}. */
export function interruptedBy(signal: AbortSignal, cause?: unknown): CofferError {
  const reason: unknown = signal.reason;
  if (reason instanceof CofferError) return reason;
  return new InterruptedError(typeof reason === 'string' ? reason : 'interrupted', { cause: cause ?? reason });
}

/**
 * A failure that only reports our own teardown (the abort, a destroyed pipe, a child killed by
 * the supervisor: flagged `echo`) rather than a problem: when something fails, the other stages
 * see these, and the first failure is the one to report.
 */
export function isAbortEcho(e: unknown): boolean {
  if ((e as { echo?: boolean } | undefined)?.echo === true) return true;
  const code = (e as { code?: unknown } | undefined)?.code;
  return (
    (e instanceof StorageError && e.code === 'Aborted') ||
    code === 'ERR_STREAM_PREMATURE_CLOSE' ||
    code === 'ERR_STREAM_DESTROYED' ||
    code === 'EPIPE' ||
    code === 'ABORT_ERR' ||
    (e as { name?: string } | undefined)?.name === 'AbortError'
  );
}
