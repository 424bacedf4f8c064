/**
 * A reader of coffer's stdout that goes away (`coffer list | head -1`, `coffer config show | head`)
 * ends the output, not the run: no unhandled EPIPE with a stack trace and exit 1.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { startCoffer } from '../harness/cli.js';

describe('stdout closed by its reader', () => {
  it('config show, list and --help exit as they would have, with nothing on stderr about EPIPE', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-epipe-'));
    try {
      await fsp.mkdir(path.join(dir, 'repo'));
      for (const args of [['config', 'show'], ['list', '--from', path.join(dir, 'repo')], ['--help']]) {
        const p = startCoffer(args, { env: { PATH: process.env.PATH ?? '', HOME: dir, COFFER_LOG_FORMAT: 'text' }, cwd: dir });
        p.stdout!.destroy(); // the reader is gone before coffer writes its first byte
        const r = await p;
        expect(r.exitCode, `${args.join(' ')}: ${String(r.stderr)}`).toBe(0);
        expect(String(r.stderr)).not.toMatch(/EPIPE|Unhandled/);
      }
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});
