/**
 * The fault sweep (issue 11): damage at positions spread over the whole stored object, in every
 * way a backup is read (restore from S3, from a file repository, `--file`, `--jobs 2`, verify,
 * drill), plus pg_restore and psql killed at random moments, S3 downloads reset at several
 * offsets and the target server restarted mid-restore. Every case asserts the documented exit
 * code, the cause in the one-line message, and that nothing is left: no `__restoring_`
 * database, no spool file, no target, and never node's "nothing left to wait for" (a run whose
 * event loop drained with its cleanup pending).
 *
 * Positions come from a seeded generator (the seed is printed; COFFER_TEST_SEED reproduces a
 * run). CI runs a fixed set plus a few seeded positions; `COFFER_FAULT_SWEEP=full` runs every
 * position in every mode plus seeded ones: more than 500 cases.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { execa } from 'execa';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { startThrowawayCluster, type ThrowawayCluster } from '../../src/demo/throwaway-cluster.js';
import { baseEnv, drillNames, errorLine, runCoffer, signalIfRunning, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { COPY_STRATEGY, dataFingerprint, dropDatabase, listDatabases, quoteIdent, schemaDump, uniqueDbName } from '../harness/pg.js';
import { dataLoss, databaseDiff, existingTarget, repoBaseline, seededRandom, sleep, waitFor, type RepoBaseline, type TargetBaseline } from './common.js';
import { record, writeResults } from './matrix.js';

const f = useFixture({ name: 'sweep', s3: true });
const pg = f.pg;
const FULL = process.env.COFFER_FAULT_SWEEP === 'full';
const rnd = seededRandom('sweep');
const SEALED_CHUNK = 64 * 1024 + 16;
/** Row ids: the soak's rows stand beside the CI run's. */
const rid = (id: string): string => (FULL ? `${id}-soak` : id);

let source: string;
let s3Manifest: BackupManifest;
let fileManifest: BackupManifest;
let good: Buffer;
let payloadStart: number;
let fileRepo: string;
/** An existing database with known content: half the damaged restores go `--replace` onto a copy of it. */
let existing: TargetBaseline;
/** The S3 repository's good backup before any fault: the data-loss check of every row. */
let baseRepo: RepoBaseline;

beforeAll(async () => {
  source = await f.database({ fixture: 'vault', prefix: 'sweep', fillMB: 2 }); // ~2 MB stored: 30-odd sealed chunks
  s3Manifest = await f.backup(f.repo('base'), source);
  baseRepo = await repoBaseline(f, 'base', { database: source, schema: await schemaDump(pg, source), fingerprint: await dataFingerprint(pg, source) });
  existing = await existingTarget(pg, 'swp_existing');
  f.dropAtEnd(existing.db);
  fileRepo = f.path('base-repo');
  fileManifest = await f.backup(fileRepo, source);
  good = await fsp.readFile(path.join(fileRepo, fileManifest.dump.key));
  // The payload starts after the header's MAC line and the 16-byte nonce.
  const mac = good.indexOf('\n--- ');
  payloadStart = good.indexOf(0x0a, mac + 1) + 1 + 16;
}, 180_000);

afterAll(async () => {
  // The soak's rows are kept in a results file of their own: a normal run does not erase them.
  writeResults(FULL ? 'sweep-soak' : 'sweep');
});

type Damage = { kind: 'flip'; at: number; label: string } | { kind: 'cut'; at: number; label: string };
type Mode = 'restore-s3' | 'restore-file-repo' | 'restore-file' | 'restore-jobs2' | 'verify-s3' | 'verify-file' | 'drill';
const MODES: Mode[] = ['restore-s3', 'restore-file-repo', 'restore-file', 'restore-jobs2', 'verify-s3', 'verify-file', 'drill'];

/** The positions the issue names, over an object of `size` bytes with its payload at `start`. */
function fixedDamage(size: number, start: number): Damage[] {
  const chunks = Math.ceil((size - start) / SEALED_CHUNK);
  const chunkAt = (k: number, off: number): number => Math.min(size - 1, start + k * SEALED_CHUNK + off);
  const d: Damage[] = [
    { kind: 'flip', at: start - 20, label: 'header MAC line' },
    { kind: 'flip', at: start - 3, label: 'payload nonce' },
    { kind: 'flip', at: start + 100, label: 'first chunk' },
  ];
  for (let p = 10; p <= 90; p += 10) d.push({ kind: 'flip', at: Math.floor((size * p) / 100), label: `${p} %` });
  for (let k = 3; k >= 1; k--) d.push({ kind: 'flip', at: chunkAt(chunks - k, 40 + k), label: `last chunk - ${k - 1}` });
  d.push({ kind: 'flip', at: size - 1, label: 'last byte' });
  d.push({ kind: 'cut', at: size - 1, label: 'truncated by 1 byte' });
  d.push({ kind: 'cut', at: size - SEALED_CHUNK, label: 'truncated by one chunk' });
  d.push({ kind: 'cut', at: Math.floor(size / 2), label: 'truncated to half' });
  d.push({ kind: 'cut', at: start, label: 'truncated after the header' });
  return d;
}

function randomDamage(size: number, n: number): Damage[] {
  const out: Damage[] = [];
  for (let i = 0; i < n; i++) {
    const at = Math.floor(rnd.next() * size);
    out.push(rnd.next() < 0.8 ? { kind: 'flip', at, label: `seeded flip @${at}` } : { kind: 'cut', at: Math.max(1, at), label: `seeded cut @${at}` });
  }
  return out;
}

function damaged(d: Damage): Buffer {
  if (d.kind === 'cut') return Buffer.from(good.subarray(0, d.at));
  const b = Buffer.from(good);
  b[d.at] = b[d.at]! ^ (1 + Math.floor(rnd.next() * 255));
  return b;
}

let caseNo = 0;

/** The measured data loss after a family of faults: the earlier backup and the existing database. */
const lossNow = (): Promise<string> => dataLoss(f, pg, { repo: baseRepo, targets: [existing] });

/** Presents `bytes` as the stored backup in `mode`, runs coffer, and checks the outcome. */
async function runDamaged(mode: Mode, bytes: Buffer, d: Damage): Promise<string> {
  const n = ++caseNo;
  const target = uniqueDbName(`swp${n}`);
  // Every other restore replaces an existing database (a copy of `existing`), which must survive untouched.
  const replace = mode.startsWith('restore') && n % 2 === 0;
  if (replace) await pg.psql(`CREATE DATABASE ${quoteIdent(target)} TEMPLATE ${quoteIdent(existing.db)} ${COPY_STRATEGY};`);
  const onto = replace ? ['--replace'] : [];
  const spool = f.path(`spool-${n}`);
  await fsp.mkdir(spool, { recursive: true });
  const ids = ['--identity', f.identityFile];
  let args: string[];
  if (mode === 'restore-s3' || mode === 'verify-s3') {
    // The backup's manifest and the damaged object under a prefix of their own.
    const prefix = `case-${n}`;
    await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: `${prefix}/${s3Manifest.dump.key}`, Body: bytes }));
    const mKey = s3Manifest.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json');
    await f.s3.send(new PutObjectCommand({ Bucket: f.bucket, Key: `${prefix}/${mKey}`, Body: `${JSON.stringify(s3Manifest, null, 2)}\n` }));
    args = mode === 'verify-s3' ? ['verify', '--from', f.repo(prefix), ...ids] : ['restore', '--from', f.repo(prefix), ...ids, '--target-db', target, ...onto];
  } else if (mode === 'restore-file') {
    const file = f.path(`case-${n}.age`);
    await fsp.writeFile(file, bytes);
    args = ['restore', '--file', file, ...ids, '--target-db', target, ...onto];
  } else {
    const repo = f.path(`case-${n}`);
    const dump = path.join(repo, fileManifest.dump.key);
    await fsp.mkdir(path.dirname(dump), { recursive: true });
    await fsp.writeFile(dump, bytes);
    await fsp.copyFile(path.join(fileRepo, fileManifest.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json')), dump.replace(/\.dump\.zst\.age$/, '.manifest.json'));
    args =
      mode === 'verify-file'
        ? ['verify', '--from', repo, ...ids]
        : mode === 'drill'
          ? ['drill', '--from', repo, ...ids]
          : ['restore', '--from', repo, ...ids, '--target-db', target, ...onto, ...(mode === 'restore-jobs2' ? ['--jobs', '2', '--spool-dir', spool] : [])];
  }
  const r = await f.run(args);
  const what = `${mode}, ${d.label} (${d.kind} at ${d.at} of ${good.length}): ${r.stderr.slice(-1500)}`;
  expect(r.code, what).toBe(5);
  const line = errorLine(r.stderr);
  expect(line, what).toMatch(/modified or corrupted|truncated/);
  expect(r.stderr, what).not.toMatch(/nothing left to wait for|cleanup did not finish|could not drop/);
  // A drill's own database, by the name its log gives ('backup opened', before any database is
  // made): the other worker may be running a drill of its own at the same time.
  const drills = mode === 'drill' ? drillNames(r.stderr) : [];
  expect((await listDatabases(pg)).filter((db) => db.startsWith(target) || drills.some((d) => db.startsWith(d))), what).toEqual(replace ? [target] : []);
  if (replace) {
    expect(await databaseDiff(pg, target, existing), what).toBe('');
    await dropDatabase(pg, target);
  }
  expect(await fsp.readdir(spool), what).toEqual([]);
  if (mode === 'drill') expect((JSON.parse(r.stdout) as { ok: boolean }).ok, what).toBe(false);
  return line;
}

describe('damage anywhere in the stored object: exit 5, the cause named, nothing left', () => {
  it('sweep', async () => {
    const fixed = fixedDamage(good.length, payloadStart);
    const cases: Array<{ mode: Mode; d: Damage }> = [];
    if (FULL) {
      for (const d of fixed) for (const mode of MODES) cases.push({ mode, d });
      for (const d of randomDamage(good.length, 60)) for (const mode of MODES) cases.push({ mode, d });
    } else {
      // Each position in one mode (rotating: every mode gets several), plus seeded positions in a
      // seeded mode. The soak (COFFER_FAULT_SWEEP=full) runs every position in every mode.
      fixed.forEach((d, i) => cases.push({ mode: MODES[i % MODES.length]!, d }));
      for (const d of randomDamage(good.length, 8)) cases.push({ mode: MODES[Math.floor(rnd.next() * MODES.length)]!, d });
      // And every mode once with a seeded flip in the object's middle half: damage the pipeline
      // finds while the run is still busy elsewhere (--jobs prepares its spool first; that race
      // once ended in "nothing left to wait for", exit 1).
      for (const mode of MODES) {
        const at = Math.floor(good.length * (0.25 + rnd.next() / 2));
        cases.push({ mode, d: { kind: 'flip', at, label: `seeded mid-object flip @${at}` } });
      }
    }
    const causes = new Map<string, number>();
    // Two at a time: each case is a whole coffer run.
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < cases.length) {
        const c = cases[next++]!;
        const line = await runDamaged(c.mode, damaged(c.d), c.d);
        const key = /sha256/.test(line) ? 'sha256 ≠ manifest' : /header/.test(line) ? 'age header' : /truncated/.test(line) ? 'truncated' : /authentication failed/.test(line) ? 'age chunk authentication' : 'other';
        causes.set(key, (causes.get(key) ?? 0) + 1);
      }
    };
    await Promise.all([worker(), worker()]);
    const summary = [...causes].sort().map(([k, v]) => `${k}: ${v}`).join(', ');
    console.log(`[sweep] ${cases.length} damaged-object cases passed (seed ${rnd.seed}): ${summary}`);
    record({
      id: rid('swp-01'),
      area: 'integrity',
      fault: `damaged stored object, ${fixed.length} named positions (header MAC, nonce, first chunk, 10-90 %, each of the last three chunks, last byte, cuts by 1 byte / one chunk / to half / after the header) plus seeded ones`,
      injected: `${cases.length} cases over ${MODES.length} ways of reading (restore from S3, file repository, --file, --jobs 2; verify S3/file; drill), flipped byte or truncation${FULL ? ` (soak: COFFER_FAULT_SWEEP=full on a developer machine, seed ${rnd.seed})` : ' (the CI set)'}`,
      outcome: 'every case: exit 5, cause named (age header / chunk authentication / truncated / sha256 ≠ manifest), no new or __restoring_ database, no spool file, no event-loop drain; every other restore ran with --replace onto an existing database, which stayed byte-for-byte the same',
      dataLost: await lossNow(),
    });
  }, FULL ? 3_600_000 : 300_000);
});

/** The pid of a child of `ppid` (polling /proc) for which `match(name, cmdline)` holds. */
async function childWith(ppid: number, match: (name: string, cmdline: string) => boolean, limitMs = 30_000): Promise<number | undefined> {
  let found: number | undefined;
  await waitFor(async () => {
    for (const e of await fsp.readdir('/proc')) {
      if (!/^\d+$/.test(e)) continue;
      const stat = await fsp.readFile(`/proc/${e}/stat`, 'utf8').catch(() => '');
      const m = /^\d+ \((.*)\) \S (\d+)/.exec(stat);
      if (!m || Number(m[2]) !== ppid) continue;
      const cmd = (await fsp.readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ');
      if (match(m[1]!, cmd)) {
        found = Number(e);
        return true;
      }
    }
    return false;
  }, limitMs);
  return found;
}

/**
 * `n` restores, each with the child that `match` picks (the restoring pg_restore, the loading
 * psql) SIGKILLed a seeded 0-`maxDelayMs` after it appeared: exit 3 naming it (`cause`), or the
 * restore had completed (exit 0); no target and no scratch database left.
 */
async function killDuringRestores(n: number, prefix: string, source: string[], match: (name: string, cmdline: string) => boolean, maxDelayMs: number, cause: RegExp): Promise<void> {
  for (let i = 0; i < n; i++) {
    const target = uniqueDbName(prefix);
    const child = startCoffer(['restore', ...source, '--identity', f.identityFile, '--target-db', target], { env: f.env() });
    const pid = await childWith(child.pid!, match, 20_000);
    const delay = Math.floor(rnd.next() * maxDelayMs);
    await sleep(delay);
    if (pid) signalIfRunning(pid, 'SIGKILL');
    const r = await child;
    const what = `kill after ${delay} ms: ${String(r.stderr).slice(-1200)}`;
    if (r.exitCode === 0) {
      await dropDatabase(pg, target);
      continue;
    }
    expect(r.exitCode, what).toBe(3);
    expect(errorLine(String(r.stderr)), what).toMatch(cause);
    expect((await listDatabases(pg)).filter((d) => d.startsWith(target)), what).toEqual([]);
  }
}

describe('children killed mid-restore, downloads reset, the server restarted', () => {
  it('pg_restore killed at seeded moments: exit 3 naming it (or a complete restore), nothing left', async () => {
    const n = FULL ? 12 : 3;
    await killDuringRestores(n, 'swp_kill', ['--from', fileRepo], (name, cmd) => name === 'pg_restore' && !cmd.includes('--list') && !cmd.includes('--version'), 400, /pg_restore was killed by SIGKILL/);
    record({ id: rid('swp-02'), area: 'interruption', fault: 'pg_restore killed (SIGKILL) mid-restore', injected: `${n} restores, pg_restore killed 0-400 ms after it started (seeded)`, outcome: 'exit 3 "pg_restore was killed by SIGKILL" (or the restore had completed: exit 0); no target, scratch dropped', dataLost: await lossNow() });
  });

  it('psql killed while loading a plain-SQL backup: exit 3 naming it, nothing left', async () => {
    const sqlRepo = f.path('sql-repo');
    await f.backup(sqlRepo, source, ['--schema-only']);
    // A psql wrapper that holds the restore's psql for a moment (queries pass at once), so there
    // is a loading psql to kill.
    const wrapper = f.path('slow-psql.sh');
    await fsp.writeFile(wrapper, `#!/bin/sh\ncase "$*" in *__restoring_*ON_ERROR_STOP*) sleep 1 ;; esac\nexec '${pg.binDir}/psql' "$@"\n`, { mode: 0o755 });
    const n = FULL ? 6 : 2;
    await killDuringRestores(n, 'swp_psql', ['--from', sqlRepo, '--kind', 'schema-only', '--psql-command', wrapper], (_name, cmd) => cmd.includes('__restoring_') && cmd.includes('ON_ERROR_STOP'), 800, /psql \(restore\) was killed by SIGKILL/);
    record({ id: rid('swp-05'), area: 'interruption', fault: 'psql killed (SIGKILL) while loading a plain-SQL backup', injected: `${n} restores of a schema-only backup, the loading psql killed 0-800 ms in (seeded)`, outcome: 'exit 3 "psql (restore) was killed by SIGKILL" (or complete: exit 0); no target, scratch dropped', dataLost: await lossNow() });
  });

  it('S3 download reset at seeded offsets: resumed, the restore is identical', async () => {
    const offsets = Array.from({ length: FULL ? 8 : 3 }, () => 1 + Math.floor(rnd.next() * (s3Manifest.dump.size - 2)));
    for (const at of offsets) {
      const p = await f.faultProxy();
      p.script([{ op: 'GetObject', path: /\.dump\.zst\.age$/, times: 1, fault: { kind: 'reset-response', afterBytes: at } }]);
      const target = uniqueDbName('swp_reset');
      const r = await runCoffer(['restore', '--from', f.repo('base'), '--identity', f.identityFile, '--target-db', target], { env: f.env({}, p.endpoint) });
      expect(r.code, `reset at ${at}: ${r.stderr.slice(-1200)}`).toBe(0);
      expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, source));
      await dropDatabase(pg, target);
    }
    record({ id: rid('swp-03'), area: 'network', fault: 'download connection reset at seeded offsets', injected: `proxy: GetObject of the dump reset once after N bytes, N at ${offsets.length} seeded offsets`, outcome: 'resumed with a ranged GET; exit 0; restored content identical to the source', dataLost: await lossNow() });
  });

  it('backup: the upload reset at seeded offsets of a part: a complete backup (the part is resent) or exit 4 with nothing stored; the locks are free after', async () => {
    const offsets = Array.from({ length: FULL ? 8 : 3 }, () => 1 + Math.floor(rnd.next() * 2_000_000));
    const locks = f.path('sweep-locks');
    for (const [i, at] of offsets.entries()) {
      const p = await f.faultProxy();
      p.script([{ op: 'UploadPart', times: 1, fault: { kind: 'reset-request', afterBytes: at } }]);
      const prefix = `up-reset-${i}`;
      const r = await runCoffer(['backup', '--to', f.repo(prefix), '--db', source, '--recipient', f.recipient, '--lock-dir', locks, '--json'], { env: f.env({}, p.endpoint) });
      const what = `reset at ${at}: ${r.stderr.slice(-1200)}`;
      const listed = await f.run(['list', '--from', f.repo(prefix), '--json']);
      const ids = (JSON.parse(listed.stdout) as Array<{ id: string }>).map((x) => x.id);
      if (r.code === 0) {
        expect(ids, what).toHaveLength(1);
        const v = await f.run(['verify', '--from', f.repo(prefix), '--identity', f.identityFile]);
        expect(v.code, v.stderr).toBe(0);
      } else {
        expect(r.code, what).toBe(4);
        expect(ids, what).toEqual([]);
      }
      // The locks were released: the next run takes them without waiting.
      const again = await f.run(['backup', '--to', `s3://${f.bucket}/${prefix}-next`, '--db', source, '--recipient', f.recipient, '--lock-dir', locks]);
      expect(again.code, again.stderr).toBe(0);
    }
    record({ id: rid('swp-06'), area: 'network', fault: 'upload connection reset inside a part at seeded offsets', injected: `proxy: one UploadPart reset after N request bytes, N at ${offsets.length} seeded offsets`, outcome: 'the part is resent: a complete backup that verifies (or exit 4 with nothing listed); the locks are free for the next run', dataLost: await lossNow() });
  });

  describe('the target server restarted mid-restore', () => {
    let other: ThrowawayCluster;
    beforeAll(async () => {
      other = await startThrowawayCluster({ binDir: pg.binDir });
    }, 120_000);
    afterAll(async () => {
      await other?.stop();
    });

    it('exit 3, and the scratch database is dropped once the server is back', async () => {
      const target = 'restart_target';
      const env = baseEnv({ ...other.env(), COFFER_PG_BIN: pg.binDir });
      // pg_restore gets the first 256 KiB at once (it connects and starts loading), then its
      // input pauses while the server is restarted under it.
      const marker = f.path('restart-marker');
      const wrapper = f.path('pausing-pg_restore.sh');
      await fsp.writeFile(
        wrapper,
        `#!/bin/bash\ncase "$*" in *--list*|--version) exec '${pg.binDir}/pg_restore' "$@" ;; esac\nexec '${pg.binDir}/pg_restore' "$@" < <(head -c 262144; touch '${marker}'; sleep 2; cat)\n`,
        { mode: 0o755 },
      );
      const child = startCoffer(['restore', '--file', path.join(fileRepo, fileManifest.dump.key), '--identity', f.identityFile, '--target-db', target, '--pg-restore-command', wrapper], { env });
      expect(await waitFor(() => fs.existsSync(marker), 60_000)).toBe(true);
      // As the server's OS user (postgres refuses root), with its log in its own data directory.
      const asServer = process.getuid?.() === 0 ? { uid: Number((await execa('id', ['-u', 'postgres'])).stdout), gid: Number((await execa('id', ['-g', 'postgres'])).stdout) } : {};
      const restarted = await execa(path.join(pg.binDir, 'pg_ctl'), ['restart', '-D', other.dataDir, '-m', 'immediate', '-w', '-l', path.join(other.dataDir, 'restart.log')], { ...asServer, cwd: other.dataDir, reject: false, stdio: 'ignore' });
      expect(restarted.exitCode).toBe(0);
      const r = await child;
      const stderr = String(r.stderr);
      expect(r.exitCode, stderr).toBe(3);
      expect(errorLine(stderr)).toMatch(/pg_restore exited with code 1/);
      expect(stderr).not.toMatch(/nothing left to wait for|could not drop/);
      const dbs = (await other.psql("SELECT datname FROM pg_database WHERE datname LIKE 'restart%'")).split('\n').filter(Boolean);
      expect(dbs, stderr).toEqual([]);
      record({ id: rid('swp-04'), area: 'interruption', fault: 'target server restarted (immediate) mid-restore', injected: 'pg_ctl restart -m immediate of the restore target while pg_restore is connected and loading', outcome: 'exit 3 (pg_restore failed: the server went away); the scratch database is dropped once the server answers again (retried up to 30 s); the target name never created', dataLost: await lossNow() });
    }, 180_000);
  });
});
