/**
 * `restore --replace` under faults: the one destructive step of a restore. The target exists
 * with known content; the restore fails (damaged object, pg_restore, smoke query) or coffer is
 * stopped (SIGTERM) or killed (SIGKILL) before the swap, while the first rename waits, between
 * the two renames and after them. Every time the existing database is either untouched (same
 * schema dump and content fingerprint under its name) or fully replaced, the old one kept as
 * `<target>__before_<time>` with the same content as before; never gone.
 *
 * The swap (pg/admin.ts swapIn) is one transaction: RENAME target → aside, RENAME scratch →
 * target, COMMIT. To stop coffer at a precise step, a test session holds a lock on one of the
 * two databases (COMMENT ON DATABASE in an open transaction): the RENAME of that database waits
 * for it (pg_stat_activity shows the wait), the signal is sent, then the lock is released.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { PutObjectCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorLine, runCoffer, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { childEnv, databaseExists, dropDatabase, listDatabases, quoteIdent, quoteLiteral } from '../harness/pg.js';
import { databaseDiff, dataLoss, existingTarget, makeGolden, repoBaseline, sleep, waitFor, type GoldenBackup, type RepoBaseline, type TargetBaseline } from './common.js';
import { record, writeResults, type MatrixRow } from './matrix.js';

const f = useFixture({ name: 'rpl', s3: true });
const pg = f.pg;

let source: string;
let golden: GoldenBackup;
let baseline: RepoBaseline;
const repo = (): string => f.repo('replace');
/** Generous bound for every wait on a moment of the restore. */
const MOMENT_MS = 180_000;

beforeAll(async () => {
  source = await f.database({ fixture: 'vault', prefix: 'rpl_src', fillMB: 2 });
  golden = await makeGolden(f, pg, 'replace', source);
  baseline = await repoBaseline(f, 'replace', golden);
});

afterAll(() => writeResults('replace'));

function restoreArgs(target: string, extra: string[] = []): string[] {
  return ['restore', '--from', repo(), '--db', source, '--identity', f.identityFile, '--target-db', target, '--replace', ...extra];
}

/** The state of an existing target after a run: untouched, or replaced with the old one aside. */
async function swapState(existing: TargetBaseline): Promise<{ state: 'untouched' | 'replaced'; scratch: string[]; aside?: string }> {
  const dbs = (await listDatabases(pg)).filter((d) => d.startsWith(existing.db));
  const scratch = dbs.filter((d) => d.includes('__restoring_'));
  const asides = dbs.filter((d) => d.includes('__before_'));
  expect(await databaseExists(pg, existing.db), 'the target name must never be gone').toBe(true);
  if (asides.length === 0) {
    expect(await databaseDiff(pg, existing.db, existing)).toBe('');
    return { state: 'untouched', scratch };
  }
  expect(asides).toHaveLength(1);
  // The old database, whole, under the aside name; the backup's content under the target name.
  expect(await databaseDiff(pg, asides[0]!, existing)).toBe('');
  expect(await databaseDiff(pg, existing.db, golden)).toBe('');
  return { state: 'replaced', scratch, aside: asides[0]! };
}

/** Measured data loss: the old content must exist under the target or the aside name. */
async function measuredLoss(existing: TargetBaseline, aside: string | undefined): Promise<string> {
  return dataLoss(f, pg, { repo: baseline, targets: [aside ? { ...existing, db: aside } : existing] });
}

/** The failed run left the existing target untouched and no scratch: records the row with the measured loss, which must be none. */
async function expectUntouched(existing: TargetBaseline, row: Omit<MatrixRow, 'area' | 'dataLost'>): Promise<void> {
  expect(await swapState(existing)).toEqual({ state: 'untouched', scratch: [] });
  const lost = await measuredLoss(existing, undefined);
  record({ id: row.id, area: 'replace', fault: row.fault, injected: row.injected, outcome: row.outcome, dataLost: lost });
  expect(lost).toBe('none');
  await cleanup(existing);
}

async function cleanup(existing: TargetBaseline): Promise<void> {
  for (const d of (await listDatabases(pg)).filter((x) => x.startsWith(existing.db))) await dropDatabase(pg, d);
}

/** A psql session that holds a lock on database `db` (COMMENT ON DATABASE in an open transaction) until released. */
async function holdLock(db: string): Promise<{ release(): Promise<void> }> {
  const child = execa(path.join(pg.binDir, 'psql'), ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', 'postgres'], {
    env: childEnv(pg),
    extendEnv: false,
    stdin: 'pipe',
    reject: false,
  });
  let out = '';
  child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  child.stdin!.write(`BEGIN;\nCOMMENT ON DATABASE ${quoteIdent(db)} IS 'held by a test';\nSELECT 'locked';\n`);
  if (!(await waitFor(() => out.includes('locked'), MOMENT_MS))) throw new Error(`could not lock ${db}: ${String((await child).stderr)}`);
  return {
    release: async () => {
      child.stdin!.end('ROLLBACK;\n');
      await child;
    },
  };
}

/** Whether a session waits for a lock while running a statement matching `like`. */
async function waitingOn(like: string): Promise<boolean> {
  const n = await pg.psql(`SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE ${quoteLiteral(like)};`);
  return Number(n) > 0;
}

/** Whether a statement matching `like` runs in database `dbLike`. */
async function running(dbLike: string, like: string): Promise<boolean> {
  const n = await pg.psql(`SELECT count(*) FROM pg_stat_activity WHERE datname LIKE ${quoteLiteral(dbLike)} AND query LIKE ${quoteLiteral(like)} AND pid <> pg_backend_pid();`);
  return Number(n) > 0;
}

type Coffer = ResultPromise<{ reject: false; all: false }>;

function startRestore(target: string, extra: string[] = []): { child: Coffer; stderr: () => string } {
  const child = startCoffer(restoreArgs(target, extra), { env: f.env(), timeoutMs: 540_000 });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  return { child, stderr: () => err };
}

const likeEscape = (s: string): string => s.replace(/[\\%_]/g, (c) => `\\${c}`);

describe.concurrent('restore --replace fails: the existing database is untouched, no scratch left', () => {
  it('a damaged object (integrity failure)', { timeout: 600_000 }, async () => {
    const existing = await existingTarget(pg, 'rpl_dmg');
    const m = await f.backup(f.repo('replace-damaged'), source, ['--compress', 'none']);
    const key = `replace-damaged/${m.dump.key}`;
    const out = await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: key }));
    const bytes = Buffer.from(await out.Body!.transformToByteArray());
    bytes[Math.floor(bytes.length / 2)]! ^= 0x40;
    await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: key, Body: bytes }));
    const r = await f.run(['restore', '--from', f.repo('replace-damaged'), '--db', source, '--identity', f.identityFile, '--target-db', existing.db, '--replace']);
    expect(r.code, r.stderr).toBe(5);
    expect(errorLine(r.stderr)).toMatch(/authentication failed/);
    await expectUntouched(existing, {
      id: 'rpl-01',
      fault: 'restore --replace of a damaged object (a bit flipped in the middle)',
      injected: 'object rewritten in the bucket; the target exists with known content',
      outcome: 'exit 5 "authentication failed…" after the data went into the scratch database; scratch dropped; the existing target untouched, nothing renamed aside',
    });
  });

  it('pg_restore fails (after loading everything into the scratch database)', { timeout: 600_000 }, async () => {
    const existing = await existingTarget(pg, 'rpl_pgr');
    const wrapper = f.path('failing-pg-restore.sh');
    await fsp.writeFile(
      wrapper,
      `#!/bin/sh\nfor a in "$@"; do [ "$a" = "--list" ] && exec '${pg.binDir}/pg_restore' "$@"; done\n'${pg.binDir}/pg_restore' "$@" || exit $?\necho 'pg_restore: error: injected failure after the restore' >&2\nexit 1\n`,
      { mode: 0o755 },
    );
    const r = await runCoffer(restoreArgs(existing.db, ['--pg-restore-command', wrapper]), { env: f.env() });
    expect(r.code, r.stderr).toBe(3);
    expect(errorLine(r.stderr)).toMatch(/pg_restore.*injected failure/);
    await expectUntouched(existing, {
      id: 'rpl-02',
      fault: 'restore --replace: pg_restore fails',
      injected: '--pg-restore-command: a wrapper that runs the real pg_restore, then exits 1 with an error line',
      outcome: 'exit 3 naming pg_restore and its error; scratch dropped; the existing target untouched, nothing renamed aside',
    });
  });

  it('a failing --smoke query', { timeout: 600_000 }, async () => {
    const existing = await existingTarget(pg, 'rpl_smk');
    const r = await runCoffer(restoreArgs(existing.db, ['--smoke', 'SELECT count(*) FROM vault_status', '--smoke', 'SELECT 1/0']), { env: f.env() });
    expect(r.code, r.stderr).toBe(3);
    expect(errorLine(r.stderr)).toMatch(/^smoke check failed: SELECT 1\/0: .*division by zero/);
    await expectUntouched(existing, {
      id: 'rpl-03',
      fault: 'restore --replace: a --smoke query fails',
      injected: "--smoke 'SELECT 1/0' after a passing one",
      outcome: 'exit 3 "smoke check failed: SELECT 1/0: … division by zero"; scratch dropped; the existing target untouched, nothing renamed aside',
    });
  });
});

/**
 * The moments of the swap, and how a test reaches each:
 * - `before`: a --smoke query sleeps in the scratch database (the swap has not begun);
 * - `first-rename`: the test holds a lock on the target: RENAME target → aside waits;
 * - `second-rename`: the test holds a lock on the scratch database: RENAME target → aside is
 *   done (uncommitted), RENAME scratch → target waits;
 * - `after`: the log line "the previous database was kept aside" (the swap is committed).
 */
type Moment = 'before' | 'first-rename' | 'second-rename' | 'after';

/**
 * `before`: how long the smoke query sleeps. The signal is sent as soon as pg_stat_activity shows
 * the sleep (polled every 50 ms), so the window only has to outlast one poll and one psql round
 * trip under load; a killed run's orphaned psql then sleeps it out, and the test waits for that,
 * so every second here is a second of each `before` case. (Was 20 s: the same state, 16 s later.)
 */
const BEFORE_SLEEP_S = 4;
/** `second-rename`: the window in which the test takes its lock on the scratch database (two cases run at once). */
const SECOND_RENAME_SLEEP_S = 3;

async function signalAt(moment: Moment, signal: 'SIGTERM' | 'SIGKILL'): Promise<{ code: number | undefined; stderr: string; state: Awaited<ReturnType<typeof swapState>>; existing: TargetBaseline }> {
  const existing = await existingTarget(pg, `rpl_${moment.replace('-', '')}_${signal === 'SIGTERM' ? 't' : 'k'}`);
  const scratchLike = `${likeEscape(existing.db)}\\_\\_restoring\\_%`;
  let lock: { release(): Promise<void> } | undefined;
  const smoke = moment === 'before' ? ['--smoke', `SELECT pg_sleep(${BEFORE_SLEEP_S})`] : moment === 'second-rename' ? ['--smoke', `SELECT pg_sleep(${SECOND_RENAME_SLEEP_S})`] : [];
  if (moment === 'first-rename') lock = await holdLock(existing.db);
  const run = startRestore(existing.db, smoke);
  try {
    if (moment === 'before') {
      expect(await waitFor(() => running(scratchLike, `%pg_sleep(${BEFORE_SLEEP_S})%`), MOMENT_MS), run.stderr()).toBe(true);
    } else if (moment === 'first-rename') {
      expect(await waitFor(() => waitingOn(`ALTER DATABASE ${quoteIdent(existing.db)} RENAME TO%`), MOMENT_MS), run.stderr()).toBe(true);
    } else if (moment === 'second-rename') {
      // Lock the scratch database while the smoke query sleeps in it (before the swap begins).
      let scratch: string | undefined;
      expect(await waitFor(async () => (scratch = (await listDatabases(pg)).find((d) => d.startsWith(`${existing.db}__restoring_`))) !== undefined, MOMENT_MS)).toBe(true);
      expect(await waitFor(() => running(scratchLike, `%pg_sleep(${SECOND_RENAME_SLEEP_S})%`), MOMENT_MS), run.stderr()).toBe(true);
      lock = await holdLock(scratch!);
      expect(await waitFor(() => waitingOn(`ALTER DATABASE ${quoteIdent(scratch!)} RENAME TO%`), MOMENT_MS), run.stderr()).toBe(true);
    } else {
      expect(await waitFor(() => run.stderr().includes('the previous database was kept aside'), MOMENT_MS), run.stderr()).toBe(true);
    }
    // process.kill, not child.kill: execa's kill adds a SIGKILL 5 s later, which would cut a
    // SIGTERM's cleanup short on a loaded machine.
    try {
      process.kill(run.child.pid!, signal);
    } catch (err) {
      // After the swap the run may have ended before the signal came: a valid outcome (exit 0).
      if (!(moment === 'after' && (err as NodeJS.ErrnoException).code === 'ESRCH')) throw err;
    }
    // The signal is in; let coffer act on it before the lock goes away.
    await sleep(1500);
  } finally {
    await lock?.release();
  }
  const r = await run.child;
  // Whatever was still running on the server for the killed run (an orphaned psql) finishes.
  await waitFor(async () => !(await running(scratchLike, '%')) && !(await waitingOn(`%${likeEscape(existing.db)}%`)), MOMENT_MS);
  const state = await swapState(existing);
  return { code: r.exitCode, stderr: String(r.stderr), state, existing };
}

// Each moment with SIGTERM and with SIGKILL, those two at once (each waits for a precise moment
// of its own run: its own target and scratch database, by name); the moments one after another.
describe('restore --replace stopped at each step of the swap', () => {
  const cases: Array<{ moment: Moment; signal: 'SIGTERM' | 'SIGKILL'; id: string }> = [
    { moment: 'before', signal: 'SIGTERM', id: 'rpl-04' },
    { moment: 'first-rename', signal: 'SIGTERM', id: 'rpl-05' },
    { moment: 'second-rename', signal: 'SIGTERM', id: 'rpl-06' },
    { moment: 'after', signal: 'SIGTERM', id: 'rpl-07' },
    { moment: 'before', signal: 'SIGKILL', id: 'rpl-08' },
    { moment: 'first-rename', signal: 'SIGKILL', id: 'rpl-09' },
    { moment: 'second-rename', signal: 'SIGKILL', id: 'rpl-10' },
    { moment: 'after', signal: 'SIGKILL', id: 'rpl-11' },
  ];
  for (const moment of [...new Set(cases.map((c) => c.moment))]) {
    describe.concurrent(`at the moment: ${moment}`, () => {
      for (const c of cases.filter((x) => x.moment === moment)) {
        it(`${c.signal} ${c.moment === 'before' ? 'before the swap' : c.moment === 'after' ? 'after the swap' : `while the ${c.moment.replace('-', ' ')} waits`}`, { timeout: 600_000 }, async () => {
          const { code, stderr, state, existing } = await signalAt(c.moment, c.signal);
          const exit = code === undefined ? `killed (${c.signal})` : `exit ${code}`;
          if (c.signal === 'SIGTERM') {
            // Stopped cleanly: nothing of the run is left, whatever the outcome.
            expect(state.scratch, stderr).toEqual([]);
            if (state.state === 'untouched') expect(code, stderr).toBe(143);
          } else if (state.scratch.length > 0) {
            // SIGKILL before the swap: the scratch database is left; nothing else changed.
            expect(state.state).toBe('untouched');
          }
          if (c.moment === 'before') expect(state.state).toBe('untouched');
          if (c.moment === 'after') expect(state.state).toBe('replaced');
          // The swap committed: a SIGTERM then, whether the run still handles it or has ended,
          // does not make a finished restore look stopped or killed.
          if (c.moment === 'after' && c.signal === 'SIGTERM') expect(exit, stderr).toBe('exit 0');
          const lost = await measuredLoss(existing, state.aside);
          const what =
            state.state === 'untouched'
              ? 'the existing target untouched, nothing renamed aside'
              : 'the target fully replaced (the backup\'s content), the old database whole under <target>__before_<time>';
          const leftover =
            state.scratch.length > 0
              ? `; the scratch database <target>__restoring_<hex> is left (nothing of a killed run can drop it): the operator sees it in \\l and drops it (DROP DATABASE … WITH (FORCE))`
              : '; no scratch database left';
          const note =
            c.signal === 'SIGKILL' && state.state === 'replaced' && c.moment !== 'after'
              ? ' (the swap\'s psql, orphaned, still held the whole transaction and committed it once the lock was released: the swap is atomic whoever dies)'
              : c.signal === 'SIGTERM' && state.state === 'replaced' && c.moment !== 'after'
                ? ' (the swap, once sent, is not cancelled by the stop signal: the transaction committed)'
                : '';
          record({
            id: c.id,
            area: 'replace',
            fault: `${c.signal} to coffer ${c.moment === 'before' ? 'before the swap (a smoke query running)' : c.moment === 'after' ? 'after the swap committed' : c.moment === 'first-rename' ? 'while RENAME target → aside waits (first rename)' : 'between the two renames (RENAME scratch → target waits, target → aside done uncommitted)'}`,
            injected:
              c.moment === 'before'
                ? `--smoke 'SELECT pg_sleep(${BEFORE_SLEEP_S})'; the signal once pg_stat_activity shows it in the scratch database`
                : c.moment === 'after'
                  ? 'the signal on the log line "the previous database was kept aside"'
                  : `a test session holds a lock on the ${c.moment === 'first-rename' ? 'target' : 'scratch'} database (COMMENT ON DATABASE in an open transaction); the signal once pg_stat_activity shows the RENAME waiting; the lock released 1.5 s later`,
            outcome: `${exit}; ${what}${note}${leftover}`,
            dataLost: lost,
          });
          expect(lost).toBe('none');
          await cleanup(existing);
        });
      }
    });
  }
});
