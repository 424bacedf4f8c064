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
