/**
 * Decrypted archives on disk (a --jobs spool, an unfinished --output) never outlive the run that
 * wrote them: removed by its cleanup, by a second stop signal (which skips the cleanup), and,
 * after a SIGKILL, by the next run that writes to the same place.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { signalIfRunning, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'plaintext', db: { fixture: 'varied', fillMB: 24 } });
let deadPid: number;

beforeAll(async () => {
  await f.backup(f.path('repo'), f.db, ['--compress', 'none']);
  const gone = execa('true');
  deadPid = gone.pid!;
  await gone;
});

const restore = (...extra: string[]): string[] => ['restore', '--from', f.path('repo'), '--db', f.db, '--identity', f.identityFile, ...extra];

describe('decrypted data on disk', () => {
  it("a killed restore's spool (its pid gone) is removed by the next --jobs restore with a warning; a live run's is left alone", async () => {
    const spool = f.path('spool');
    await fsp.mkdir(path.join(spool, `coffer-spool-${deadPid}-abc123`), { recursive: true });
    await fsp.writeFile(path.join(spool, `coffer-spool-${deadPid}-abc123`, 'archive.dump'), 'PGDMP decrypted');
    const live = `coffer-spool-${process.pid}-def456`;
    await fsp.mkdir(path.join(spool, live));
    const target = f.dropAtEnd(uniqueDbName('plain_spool'));
    const r = await f.run(restore('--target-db', target, '--jobs', '2', '--spool-dir', spool));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('removed the spool of an earlier restore that was killed');
    expect(await fsp.readdir(spool)).toEqual([live]);
  });

  it('a second SIGTERM while a --jobs restore spools exits at once and leaves no spool', async () => {
    for (const delayMs of [0, 150, 400]) {
      const spool = f.path(`spool-term-${delayMs}`);
      await fsp.mkdir(spool);
      const target = f.dropAtEnd(uniqueDbName('plain_term'));
      const child = startCoffer(restore('--target-db', target, '--jobs', '2', '--spool-dir', spool, '--max-rate', '20MB/s'), { env: f.env() });
      for (let i = 0; i < 400 && (await fsp.readdir(spool)).length === 0; i++) await new Promise((r) => setTimeout(r, 25));
      await new Promise((r) => setTimeout(r, delayMs));
      signalIfRunning(child.pid!, 'SIGTERM');
      await new Promise((r) => setTimeout(r, 5));
      signalIfRunning(child.pid!, 'SIGTERM');
      const r = await child;
      expect(r.exitCode, String(r.stderr)).not.toBe(0);
      expect(await fsp.readdir(spool)).toEqual([]);
    }
  });

  it("an unfinished --output of a killed run (its pid gone) is removed by the next run writing that file; the output is complete", async () => {
    const dir = f.path('out');
    await fsp.mkdir(dir);
    const out = path.join(dir, 'vault.dump');
    await fsp.writeFile(path.join(dir, `.vault.dump.coffer-tmp-${deadPid}`), 'PGDMP decrypted');
    await fsp.writeFile(path.join(dir, `.other.dump.coffer-tmp-${deadPid}`), 'not ours to judge');
    const r = await f.run(restore('--output', out));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('removed the unfinished --output of an earlier run that was killed');
    expect((await fsp.readdir(dir)).sort()).toEqual([`.other.dump.coffer-tmp-${deadPid}`, 'vault.dump']);
    expect((await fsp.readFile(out)).subarray(0, 5).toString()).toBe('PGDMP');
  });
});
