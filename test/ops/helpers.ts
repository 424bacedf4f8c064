import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

/**
 * A `--pg-dump-command` wrapper script around the real pg_dump. `--version` is answered by the
 * real pg_dump unless `version` is given. Before dumping it touches `<dir>/started` (the run
 * holds its locks by then) and appends its arguments to `<dir>/calls`; after pg_dump exited 0 it
 * either returns, blocks until `<dir>/release` exists, or `exec`s a long sleep (so a SIGTERM
 * reaches the sleeping process itself).
 */
export async function writeDumpWrapper(
  dir: string,
  binDir: string,
  opts: { after?: 'return' | 'block-until-release' | 'sleep'; version?: string } = {},
): Promise<{ command: string; started: string; release: string; calls: string }> {
  await fsp.mkdir(dir, { recursive: true });
  const command = path.join(dir, 'pg_dump-wrapper.sh');
  const started = path.join(dir, 'started');
  const release = path.join(dir, 'release');
  const calls = path.join(dir, 'calls');
  const real = path.join(binDir, 'pg_dump');
  const after =
    opts.after === 'block-until-release'
      ? `while [ ! -e '${release}' ]; do sleep 0.1; done`
      : opts.after === 'sleep'
        ? 'exec sleep 300'
        : 'exit 0';
  const version = opts.version === undefined ? `exec '${real}' --version` : `echo '${opts.version}'; exit 0`;
  await fsp.writeFile(
    command,
    `#!/bin/bash
if [ "$1" = "--version" ]; then ${version}; fi
touch '${started}'
printf '%s\\n' "$*" >> '${calls}'
'${real}' "$@" || exit $?
${after}
`,
    { mode: 0o755 },
  );
  return { command, started, release, calls };
}

/** Polls until `file` exists (fails the test after `ms`). */
export async function waitForFile(file: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fs.existsSync(file)) {
    if (Date.now() > end) throw new Error(`${file} did not appear within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** JSON log records of a coffer run's stderr. */
export function logRecords(stderr: string): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (const l of stderr.split('\n')) {
    try {
      out.push(JSON.parse(l) as Record<string, unknown>);
    } catch {
      // not a JSON line
    }
  }
  return out;
}
