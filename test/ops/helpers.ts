import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { expect } from 'vitest';

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

// ---------------------------------------------------------------------------------------------
// A small strict parser of the Prometheus text exposition format (0.0.4).

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses a Prometheus text exposition (0.0.4), failing the test on anything malformed. */
export function parsePrometheusText(text: string): { samples: Sample[]; types: Map<string, string>; helps: Map<string, string> } {
  const types = new Map<string, string>();
  const helps = new Map<string, string>();
  const samples: Sample[] = [];
  const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
  expect(text.endsWith('\n'), 'ends with a newline').toBe(true);
  for (const line of text.slice(0, -1).split('\n')) {
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
      expect(m, `comment line: ${line}`).not.toBeNull();
      expect(m![2]).toMatch(NAME);
      if (m![1] === 'TYPE') {
        expect(['counter', 'gauge', 'histogram', 'summary', 'untyped']).toContain(m![3]);
        expect(types.has(m![2]!), `one TYPE per metric: ${m![2]}`).toBe(false);
        expect(samples.some((s) => s.name === m![2]), `TYPE before samples: ${m![2]}`).toBe(false);
        types.set(m![2]!, m![3]!);
      } else {
        expect(m![3]!.length).toBeGreaterThan(0);
        helps.set(m![2]!, m![3]!);
      }
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line);
    expect(m, `sample line: ${line}`).not.toBeNull();
    const labels: Record<string, string> = {};
    let rest = m![2] ?? '';
    while (rest.length > 0) {
      const lm = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/.exec(rest);
      expect(lm, `labels: ${m![2]}`).not.toBeNull();
      expect(labels[lm![1]!], `duplicate label ${lm![1]}`).toBeUndefined();
      labels[lm![1]!] = lm![2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      rest = rest.slice(lm![0].length);
    }
    const value = m![3] === 'NaN' ? NaN : m![3] === '+Inf' ? Infinity : m![3] === '-Inf' ? -Infinity : Number(m![3]);
    expect(m![3] === 'NaN' || !Number.isNaN(value), `value: ${m![3]}`).toBe(true);
    expect(types.has(m![1]!), `sample of a metric with a TYPE line: ${m![1]}`).toBe(true);
    samples.push({ name: m![1]!, labels, value });
  }
  return { samples, types, helps };
}
