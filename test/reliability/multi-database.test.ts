/**
 * Faults in a run over several databases (--db repeated, --parallel): one database's pg_dump
 * killed while another is dumped beside it, and coffer stopped by SIGTERM at seeded points of the
 * whole run (where the next database's lock has been taken ahead). Each time: every database has
 * either a complete backup or nothing visible, the others are unharmed, no lock or session of the
 * run is left, and the next run succeeds.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorLine, runCoffer, startCoffer } from '../harness/cli.js';
import type { FaultProxy } from '../harness/fault-proxy.js';
import { useFixture } from '../harness/fixture.js';
import { quoteLiteral } from '../harness/pg.js';
import { bucketState, bytesWritten, dataLoss, makeGolden, pgDumpPid, seededRandom, seedRepository, sleep, waitFor, type GoldenBackup, type RepoBaseline } from './common.js';
import { record, writeResults } from './matrix.js';

const f = useFixture({ name: 'mdb', s3: true });
const pg = f.pg;
const ARGS = ['--compress', 'none', '--part-size', '5MiB'];
const rnd = seededRandom('multi-database');

/** Three databases, backed up in this order: a mid-sized one, a larger one, a small one. */
let dbs: string[];
let goldens: GoldenBackup[];

beforeAll(async () => {
  dbs = [
    await f.database({ fixture: 'vault', prefix: 'mdb_a', fillMB: 4 }),
    // ~40 MiB of dump: through the slowed uploads pg_dump blocks at ~25 MiB, so it is still
    // alive at every kill point (at most 15.5 MiB) when the test sees it there.
    await f.database({ fixture: 'vault', prefix: 'mdb_b', fillMB: 20 }),
    await f.database({ fixture: 'vault', prefix: 'mdb_c' }),
  ];
  goldens = await Promise.all(dbs.map((db, i) => makeGolden(f, pg, `mdb-golden-${i}`, db)));
});

afterAll(() => writeResults('multi-database'));

/** A repository holding a good backup of each of the three databases: one baseline per database. */
async function seeded(prefix: string): Promise<RepoBaseline[]> {
  const out: RepoBaseline[] = [];
  for (const g of goldens) out.push(await seedRepository(f, g, prefix));
  return out;
}

/** Backup ids `coffer list` shows for one database of a repository. */
async function listedFor(repo: string, db: string): Promise<string[]> {
  const r = await runCoffer(['list', '--from', repo, '--db', db, '--json'], { env: f.env() });
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as Array<{ id: string }>).map((x) => x.id).sort();
}

/** Keys under `prefix` that belong to backups other than the baselines' (new ones), by database. */
async function newKeys(prefix: string, baselines: RepoBaseline[]): Promise<Map<string, string[]>> {
  const known = new Set(baselines.flatMap((b) => b.keys));
  const out = new Map<string, string[]>(dbs.map((d) => [d, []]));
  for (const k of (await bucketState(f, prefix)).keys) {
    if (known.has(k)) continue;
    const db = dbs.find((d) => k.startsWith(`${prefix}/${d}/`));
    out.get(db ?? '?')?.push(k) ?? out.set('?', [k]);
  }
  return out;
}

/** The run id of a coffer run, from its JSON log. */
function runIdOf(stderr: string): string | undefined {
  for (const line of stderr.split('\n')) {
    try {
      const rec = JSON.parse(line) as { run?: string };
      if (rec.run) return rec.run;
    } catch {
      // not JSON
    }
  }
  return undefined;
}

/** Server sessions a coffer run opened (its advisory-lock sessions name the run) that are still there. */
async function sessionsOf(runId: string): Promise<number> {
  return Number(await pg.psql(`SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE ${quoteLiteral(`coffer%${runId}%`)};`));
}

/** A proxy adding latency to every upload part: the uploads, not pg_dump, set the pace. */
async function slowProxy(ms: number): Promise<FaultProxy> {
  const p = await f.faultProxy();
  p.script([{ op: 'UploadPart', times: Infinity, fault: { kind: 'latency', ms } }]);
  return p;
}

/** Requires a database's state after the fault: `complete` new backups listed (with all their keys) or none, and nothing else. */
async function expectWholeOrNothing(prefix: string, db: string, baseline: RepoBaseline, added: string[]): Promise<'complete' | 'nothing'> {
  const listed = await listedFor(f.repo(prefix), db);
  const before = baseline.backups.map((b) => b.id);
  const fresh = listed.filter((id) => !before.includes(id));
  expect(listed.filter((id) => before.includes(id))).toEqual(before);
  if (fresh.length === 0) {
    expect(added, `${db}: keys without a listed backup`).toEqual([]);
    return 'nothing';
  }
  expect(fresh).toHaveLength(1);
  expect(added.length, `${db}: a listed backup with no keys of its own`).toBeGreaterThan(0);
  expect(added.every((k) => k.includes(fresh[0]!)), `${db}: keys of no listed backup: ${added.join(', ')}`).toBe(true);
  const v = await runCoffer(['verify', '--from', f.repo(prefix), '--db', db, '--backup', fresh[0]!, '--identity', f.identityFile], { env: f.env() });
  expect(v.code, v.stderr).toBe(0);
  return 'complete';
}

// One concurrent group: the run's wall time is that of its slowest case.
describe.concurrent('faults in a run over several databases', () => {
  describe('one database fails in a run over several', () => {
    // The larger database's pg_dump is killed at seeded points of its output while the mid-sized
    // one is dumped beside it (--parallel 2); the small one is taken by the worker that is free.
    const points = Array.from({ length: 3 }, (_, i) => ({
      i,
      at: i === 0 ? 0 : Math.floor((0.5 + rnd.next() * 15) * (1 << 20)),
      signal: (['SIGKILL', 'SIGTERM', 'SIGINT'] as const)[Math.floor(rnd.next() * 3)]!,
    }));
    for (const point of points) {
      it(`--parallel 2: the second database's pg_dump killed (${point.signal}) after ${(point.at / (1 << 20)).toFixed(1)} MiB: exit 3 naming it; the others backed up`, { timeout: 480_000 }, async () => {
        const prefix = `mdb-kill-${point.i}`;
        const baselines = await seeded(prefix);
        const p = await slowProxy(300);
        const child = startCoffer(['backup', '--to', f.repo(prefix), ...dbs.flatMap((d) => ['--db', d]), '--parallel', '2', '--recipient', f.recipient, ...ARGS], { env: f.env({}, p.endpoint), timeoutMs: 300_000 });
        let pid: number | undefined;
        if (!(await waitFor(async () => (pid = await pgDumpPid(child.pid, dbs[1])) !== undefined))) {
          child.kill('SIGKILL');
          expect.fail(`pg_dump of the second database never started; coffer: ${String((await child).stderr).slice(-600)}`);
        }
        let seen = 0;
        if (!(await waitFor(async () => (seen = await bytesWritten(pid!)) >= point.at))) {
          child.kill('SIGKILL');
          expect.fail(`pg_dump never wrote ${point.at} bytes (last seen ${seen}); coffer: ${String((await child).stderr).slice(-600)}`);
        }
        process.kill(pid!, point.signal);
        const r = await child;
        const stderr = String(r.stderr);
        expect(r.exitCode, stderr).toBe(3);
        expect(errorLine(stderr)).toContain(`1 of 3 database backups failed: "${dbs[1]}"`);
        expect(stderr).toMatch(new RegExp(`backup of \\\\"${dbs[1]}\\\\" failed: .*pg_dump`));
        const added = await newKeys(prefix, baselines);
        expect(added.get('?')).toBeUndefined();
        expect((await bucketState(f, prefix)).uploads).toBe(0);
        // The failed database: nothing new. The two others: one complete backup each, which verifies.
        expect(await expectWholeOrNothing(prefix, dbs[1]!, baselines[1]!, added.get(dbs[1]!)!)).toBe('nothing');
        expect(await expectWholeOrNothing(prefix, dbs[0]!, baselines[0]!, added.get(dbs[0]!)!)).toBe('complete');
        expect(await expectWholeOrNothing(prefix, dbs[2]!, baselines[2]!, added.get(dbs[2]!)!)).toBe('complete');
        const runId = runIdOf(stderr);
        expect(runId).toBeDefined();
        expect(await sessionsOf(runId!)).toBe(0);
        // The failed database's locks are free: its next backup (no --wait) succeeds.
        const next = await f.backup(f.repo(prefix), dbs[1]!, ARGS);
        expect(await listedFor(f.repo(prefix), dbs[1]!)).toEqual([...baselines[1]!.backups.map((b) => b.id), next.id].sort());
        const lost = (await Promise.all(baselines.map((b) => dataLoss(f, pg, { repo: b })))).filter((x) => x !== 'none');
        record({
          id: `mdb-0${point.i + 1}`,
          area: 'interruption',
          fault: `one of three databases fails (--parallel 2): its pg_dump killed ${point.i === 0 ? 'as it starts' : `at a seeded point of its first 15 MiB (${point.i} of 2)`}, another database dumped beside it`,
          injected: 'SIGKILL, SIGTERM or SIGINT (seeded) to the second database\'s pg_dump once /proc/PID/io showed the seeded byte count; uploads slowed by the proxy; the repository held a good backup of each database',
          outcome: 'exit 3, "1 of 3 database backups failed" naming it, and its pg_dump error logged; nothing of it stored; the two others complete and verified; no session of the run left; its next backup succeeded',
          dataLost: lost.length ? lost.join('; ') : 'none',
        });
        expect(lost).toEqual([]);
      });
    }
  });

  describe('coffer stopped in a run over several databases', () => {
    // Seeded points over the whole run: after N upload parts of any database plus a few hundred ms.
    // The run takes each next database's lock ahead; a stop must release it with the rest.
    const runs = Array.from({ length: 4 }, (_, i) => ({ i, parallel: i < 2 ? 1 : 2, afterParts: Math.floor(rnd.next() * 7), extraMs: Math.floor(rnd.next() * 400) }));
    for (const run of runs) {
      it(`SIGTERM after ${run.afterParts} upload parts + ${run.extraMs} ms, --parallel ${run.parallel}: exit 143; each database complete or untouched; the next run succeeds`, { timeout: 480_000 }, async () => {
        const prefix = `mdb-term-${run.i}`;
        const baselines = await seeded(prefix);
        const p = await slowProxy(250);
        const child = startCoffer(['backup', '--to', f.repo(prefix), ...dbs.flatMap((d) => ['--db', d]), '--parallel', String(run.parallel), '--recipient', f.recipient, ...ARGS], { env: f.env({}, p.endpoint), timeoutMs: 300_000 });
        expect(await waitFor(() => p.requests(run.afterParts === 0 ? 'CreateMultipartUpload' : 'UploadPart').length >= Math.max(1, run.afterParts))).toBe(true);
        await sleep(run.extraMs);
        process.kill(child.pid!, 'SIGTERM'); // not child.kill: execa adds a SIGKILL 5 s later
        const r = await child;
        const stderr = String(r.stderr);
        const added = await newKeys(prefix, baselines);
        expect(added.get('?')).toBeUndefined();
        expect((await bucketState(f, prefix)).uploads).toBe(0);
        const states = [];
        for (const [i, db] of dbs.entries()) states.push(await expectWholeOrNothing(prefix, db, baselines[i]!, added.get(db)!));
        if (r.exitCode === 0) expect(states).toEqual(['complete', 'complete', 'complete']);
        else {
          expect(r.exitCode, stderr).toBe(143);
          expect(errorLine(stderr)).toMatch(/stopped by SIGTERM/);
          expect(states).toContain('nothing');
        }
        const runId = runIdOf(stderr);
        expect(runId).toBeDefined();
        expect(await sessionsOf(runId!)).toBe(0);
        // Every lock of the stopped run (also one taken ahead) is free: the next run, without --wait, backs up all three.
        const again = await runCoffer(['backup', '--to', f.repo(prefix), ...dbs.flatMap((d) => ['--db', d]), '--parallel', String(run.parallel), '--recipient', f.recipient, ...ARGS], { env: f.env() });
        expect(again.code, again.stderr).toBe(0);
        for (const [i, db] of dbs.entries()) {
          const want = baselines[i]!.backups.length + (states[i] === 'complete' ? 2 : 1);
          expect((await listedFor(f.repo(prefix), db)).length).toBe(want);
        }
        const lost = (await Promise.all(baselines.map((b) => dataLoss(f, pg, { repo: b })))).filter((x) => x !== 'none');
        record({
          id: `mdb-1${run.i}`,
          area: 'interruption',
          fault: `SIGTERM to coffer during a backup of three databases (--parallel ${run.parallel}, seeded point ${(run.i % 2) + 1} of 2)`,
          injected: 'kill -TERM after a seeded 0-6 upload parts (of any database) plus 0-400 ms; uploads slowed by the proxy; the next database\'s lock taken ahead; the repository held a good backup of each database',
          outcome: 'exit 143 "stopped by SIGTERM" (or 0 when the signal came after the last commit); each database has one complete, verified new backup or nothing new; no multipart upload left; no session of the run left; the next run (no --wait) backed up all three',
          dataLost: lost.length ? lost.join('; ') : 'none',
        });
        expect(lost).toEqual([]);
      });
    }
  });
});
