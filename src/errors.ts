/**
 * Typed errors. Every error a user can hit is a {@link CofferError}: one line
 * saying what went wrong (and, where there is one, what to do), mapped to one
 * documented exit code. Only `src/cli/main.ts` turns them into an exit.
 *
 * Messages never contain secrets: callers must not interpolate passwords,
 * secret keys or identities into them.
 */

/** Documented process exit codes (README "Exit codes"). */
export const ExitCode = {
  ok: 0,
  unexpected: 1,
  usage: 2,
  database: 3,
  storage: 4,
  integrity: 5,
  busy: 6,
  stale: 7,
  /** A `--before` hook failed (nothing was done), or an `--after` hook failed after a run that succeeded. */
  hook: 9,
  /** `wal-fetch`: the file is not in the archive (restore_command's "no such file": PostgreSQL goes on). */
  absent: 1,
  /**
   * `wal-fetch`: any other failure (damaged or undecryptable object, network, two different
   * copies, bad flags). Above 125, so PostgreSQL aborts recovery instead of taking it for the end
   * of the archive (see src/physical/wal-fetch.ts).
   */
  walFetchFailed: 200,
  /** `--timeout` expired (as coreutils `timeout`). */
  timeout: 124,
  /** Stopped by SIGINT (128 + 2); SIGTERM gives 143 (128 + 15). */
  interrupted: 130,
  terminated: 143,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export type ErrorKind = 'usage' | 'database' | 'storage' | 'integrity' | 'busy' | 'stale' | 'hook' | 'absent' | 'interrupted';

/** What an error carries besides its message. */
export interface CofferErrorOptions {
  cause?: unknown;
  /** What to do. */
  hint?: string;
  /** Supporting facts, logged as a field of the error line, not in it (e.g. the statement that failed). Short; no secrets. */
  detail?: string;
}

/** Base class: `kind` selects the exit code; `hint` is the "what to do" part. */
export class CofferError extends Error {
  readonly kind: ErrorKind;
  readonly hint: string | undefined;
  readonly detail: string | undefined;
  constructor(kind: ErrorKind, message: string, options?: CofferErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.kind = kind;
    this.hint = options?.hint;
    this.detail = options?.detail;
    this.name = new.target.name;
  }
  get exitCode(): ExitCodeValue {
    return ExitCode[this.kind];
  }
}

/** The base of an error class that adds nothing but its kind (and so its exit code). */
function ofKind(kind: ErrorKind) {
  return class extends CofferError {
    constructor(message: string, options?: CofferErrorOptions) {
      super(kind, message, options);
    }
  };
}

/** Bad flags, configuration, names, keys supplied by the user (exit 2). */
export class UsageError extends ofKind('usage') {}

/** Connecting to PostgreSQL, pg_dump, pg_restore, psql (exit 3). */
export class DatabaseError extends ofKind('database') {}

/**
 * Why a repository operation failed (the `ObjectStore` contract in src/store/object-store.ts):
 * - `NotFound`: no such key (or, for the file store, no such file or directory);
 * - `NoSuchBucket`: the S3 bucket does not exist;
 * - `AccessDenied`: refused by the server or the file system (credentials, policy, mode, read-only);
 * - `Exists`: a write-once put found the key taken (or, for `init`, a bucket name owned by someone else);
 * - `Aborted`: cancelled through the caller's signal;
 * - `Unavailable`: the S3 endpoint cannot be reached (network, DNS, timeouts);
 * - `Truncated`: a download ended before the object's known size (the connection closed early);
 *   worth resuming with a ranged read, like `Unavailable` and `Failed`;
 * - `Failed`: anything else (invalid key, no space left, an unexpected S3 answer…).
 */
export type StorageErrorCode = 'NotFound' | 'NoSuchBucket' | 'AccessDenied' | 'Exists' | 'Aborted' | 'Unavailable' | 'Truncated' | 'Failed';

/** Repository errors: S3 or local directory (exit 4). */
export class StorageError extends CofferError {
  /** Machine-readable reason: see {@link StorageErrorCode}. */
  readonly code: StorageErrorCode;
  constructor(code: StorageErrorCode, message: string, options?: CofferErrorOptions) {
    super('storage', message, options);
    this.code = code;
  }
}

/** Checksums, decryption, authentication, corrupt or inconsistent backups (exit 5). */
export class IntegrityError extends ofKind('integrity') {}

/** Another run holds the lock (exit 6). */
export class BusyError extends ofKind('busy') {}

/** `status`: a backup is older than allowed (exit 7). */
export class StaleError extends ofKind('stale') {}

/** A `--before` or `--after` hook failed (exit 9). */
export class HookError extends ofKind('hook') {}

/** `wal-fetch`: the requested WAL file is not in the archive (exit 1, logged at info level: PostgreSQL asks for files that do not exist). */
export class NotArchivedError extends ofKind('absent') {}

/** The run was stopped by a signal or its `--timeout`; everything was aborted cleanly. */
export class InterruptedError extends CofferError {
  readonly code: ExitCodeValue;
  constructor(message: string, options?: CofferErrorOptions & { exitCode?: ExitCodeValue }) {
    super('interrupted', message, options);
    this.code = options?.exitCode ?? ExitCode.interrupted;
  }
  override get exitCode(): ExitCodeValue {
    return this.code;
  }
}

/** What a file-system error code means, in the words of coffer's messages. */
const ERRNO_WORDS: Readonly<Record<string, string>> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'is a directory',
  ENOTDIR: 'a parent is not a directory',
  ENOSPC: 'no space left on device',
  EROFS: 'read-only file system',
};

/**
 * A file-system error in a few words for a message ("no such file", "permission denied", …);
 * for another code, the code itself (or the message of an error without one).
 */
export function errnoWords(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code !== undefined && Object.hasOwn(ERRNO_WORDS, code)) return ERRNO_WORDS[code]!;
  return code ?? (err instanceof Error ? err.message : String(err));
}

/** One line for a human: message plus hint, newlines folded. */
export function formatErrorLine(err: unknown): string {
  let text: string;
  if (err instanceof CofferError) {
    text = err.hint ? `${err.message} (${err.hint})` : err.message;
  } else if (err instanceof Error) {
    text = `unexpected error: ${err.message}`;
  } else {
    text = `unexpected error: ${String(err)}`;
  }
  return text.replace(/\s*\n\s*/g, ' | ').trim();
}

/**
 * A full disk is no bug: a raw ENOSPC/EDQUOT that reached the top (a stream of the run saw it
 * before the store or the file writer could name it) is a storage failure, exit 4, with the fix.
 * Anything else is returned as it is.
 */
export function classifySystemError(err: unknown): unknown {
  if (err instanceof CofferError || !(err instanceof Error)) return err;
  const e = err as NodeJS.ErrnoException;
  if (e.code !== 'ENOSPC' && e.code !== 'EDQUOT') return err;
  const where = e.path ? ` ${e.path}` : '';
  return new StorageError('Failed', `${e.syscall ?? 'write'}${where}: ${e.code === 'ENOSPC' ? 'no space left on device' : 'disk quota exceeded'}`, {
    cause: err,
    hint: 'free disk space where this run writes (the repository directory, --output, the spool directory) and run it again',
  });
}

/** Exit code for any thrown value. */
export function exitCodeOf(err: unknown): ExitCodeValue {
  return err instanceof CofferError ? err.exitCode : ExitCode.unexpected;
}
