import type { Logger } from '../observe/log.js';

/** What a command may touch of the outside world; passed in so commands are plain functions. */
export interface CliContext {
  env: NodeJS.ProcessEnv;
  /** Machine output (`--json`, recipients, listings). */
  stdout: (text: string) => void;
  /** Whether a progress line is drawn on stderr: a terminal, and the log is not JSON lines. */
  stderrIsTty: boolean;
  stdoutIsTty: boolean;
  log: Logger;
  /** Aborted on SIGINT/SIGTERM or `--timeout`. */
  signal: AbortSignal;
  cwd: string;
}
