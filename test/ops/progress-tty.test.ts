/**
 * Issue 18, item 3: on a terminal, backup and restore show one progress line with a percentage
 * and an ETA. The built CLI runs under a pseudo-terminal made by util-linux `script` (Debian's
 * bsdutils, an essential package: on every Debian system), so its stderr is a TTY. The dump and
 * the restore are slowed by wrappers (--pg-dump-command, --pg-restore-command) that pass the
 * archive through at a fixed rate, so the run lasts a few seconds and the line is redrawn with
 * an ETA whatever the machine's speed.
 *
 * The figures themselves (rounding, the 99 % cap, the ETA) are tested in progress.test.ts.
 */
import { execa } from 'execa';
import * as fsp from 'node:fs/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { COFFER_BIN } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'progress-tty', db: { fixture: 'empty', fillMB: 12 } });

/** Bytes per second the wrappers let through: 12 MB of incompressible rows take about 3 s. */
const RATE = 4 * 1024 * 1024;

let dumpWrapper: string;
let restoreWrapper: string;

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

beforeAll(async () => {
  const throttle = f.path('throttle.mjs');
  await fsp.writeFile(
    throttle,
    `// Copies stdin to stdout at about argv[2] bytes per second (it waits until each chunk is due).
const rate = Number(process.argv[2]);
// pg_restore --list reads the table of contents and closes its input: stop as the real one's reader would.
process.stdout.on('error', () => process.exit(0));
const start = Date.now();
let sent = 0;
for await (const chunk of process.stdin) {
  if (!process.stdout.write(chunk)) await new Promise((r) => process.stdout.once('drain', r));
  sent += chunk.length;
  const wait = start + (sent / rate) * 1000 - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}
`,
  );
  const node = q(process.execPath);
  const wrapper = async (name: string, body: string): Promise<string> => {
    const real = q(`${f.pg.binDir}/${name}`);
    const file = f.path(`${name}-slow.sh`);
    await fsp.writeFile(file, `#!/bin/bash\nset -o pipefail\nif [ "$1" = "--version" ]; then exec ${real} --version; fi\n${body.replace('REAL', real)}\n`, { mode: 0o755 });
    return file;
  };
  dumpWrapper = await wrapper('pg_dump', `REAL "$@" | ${node} ${q(throttle)} ${RATE}`);
  restoreWrapper = await wrapper('pg_restore', `${node} ${q(throttle)} ${RATE} | REAL "$@"`);
});

/** Runs the built CLI with stderr (and stdout) on a pseudo-terminal: what the terminal showed, and the exit code. */
async function onTerminal(args: string[], logFormat = 'text'): Promise<{ code: number; screen: string }> {
  const command = [process.execPath, COFFER_BIN, ...args].map(q).join(' ');
  const r = await execa('script', ['-qfec', command, '/dev/null'], {
    env: f.env({ COFFER_LOG_FORMAT: logFormat }),
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    timeout: 120_000,
  });
  return { code: r.exitCode ?? -1, screen: `${String(r.stdout)}${String(r.stderr)}` };
}

/** The redraws of the progress line: each starts with a carriage return and "clear the line". */
function redraws(screen: string): string[] {
  return screen
    .split('\r\x1b[2K')
    .slice(1)
    .map((s) => s.split(/\r?\n|\r/)[0]!)
    .filter((s) => s.length > 0);
}

describe('progress on a terminal (pseudo-terminal)', () => {
  it('backup: dump bytes against the database size, as an estimate (~N %, ETA ~…); restore: stored bytes against the manifest (N %, ETA …)', async () => {
    const repo = f.path('repo');
    const backup = await onTerminal(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--lock-dir', f.path('locks'), '--pg-dump-command', dumpWrapper]);
    expect(backup.code, backup.screen).toBe(0);
    const b = redraws(backup.screen);
    expect(b.length, backup.screen).toBeGreaterThan(1);
    // e.g. "backup progress_ab12  5.20 MiB of ~13.1 MiB  ~39 %  3.90 MiB/s  1s  ETA ~2s"
    const withEta = b.filter((l) => /^backup \S+ {2}\S+ \S+ of ~\S+ \S+ {2}~\d{1,2} % {2}\S+ \S+\/s {2}\d+s {2}ETA ~\d+s$/.test(l));
    expect(withEta.length, b.join('\n')).toBeGreaterThan(0);
    for (const l of b) {
      const pct = /~(\d+) %/.exec(l);
      if (pct) expect(Number(pct[1]), l).toBeLessThanOrEqual(99);
    }
    // A log line clears the progress line first rather than continue it.
    expect(backup.screen).not.toMatch(/(ETA \S+|\d+s)coffer: /);
    // The line is cleared at the end: the terminal's last output is not a progress line.
    expect(backup.screen.lastIndexOf('\r\x1b[2K')).toBeGreaterThan(backup.screen.lastIndexOf(' %  '));

    const target = f.dropAtEnd(uniqueDbName('progress_restored'));
    const restore = await onTerminal(['restore', '--from', repo, '--db', f.db, '--identity', f.identityFile, '--target-db', target, '--pg-restore-command', restoreWrapper]);
    expect(restore.code, restore.screen).toBe(0);
    const r = redraws(restore.screen);
    // e.g. "restore  6.00 MiB of 12.1 MiB  49 %  3.90 MiB/s  1s  ETA 2s": exact, no ~.
    const exact = r.filter((l) => /^restore {2}\S+ \S+ of \S+ \S+ {2}\d{1,3} % {2}\S+ \S+\/s {2}\d+s {2}ETA \d+s$/.test(l));
    expect(exact.length, r.join('\n')).toBeGreaterThan(0);
    expect(r.some((l) => l.includes('~')), r.join('\n')).toBe(false);
    expect(restore.screen).not.toMatch(/(ETA \S+|\d+s)coffer: /);
  });

  it('JSON log lines on a terminal (a collector reading `docker run -t`): no progress line is drawn between them, every line is JSON', async () => {
    const repo = f.path('repo-json');
    for (const how of [['--log-format', 'json'], []]) {
      const backup = await onTerminal([...how, 'backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--lock-dir', f.path('locks'), '--pg-dump-command', dumpWrapper], how.length === 0 ? 'json' : 'text');
      expect(backup.code, backup.screen).toBe(0);
      expect(backup.screen).not.toContain('\x1b[');
      // stdout is the terminal too: its one summary line per backup ("<id>  <database>  <tier>  <size>") is not the log.
      const lines = backup.screen.split(/\r?\n/).filter((l) => l.trim() !== '' && !/^\d{8}T\d{6}Z-\w+ {2}/.test(l));
      expect(lines.length).toBeGreaterThan(1);
      for (const l of lines) expect(() => JSON.parse(l), JSON.stringify(l)).not.toThrow();
    }
  });
});
