/**
 * Network faults between coffer and S3, injected by test/harness/fault-proxy.ts in front of the
 * real RGW: transient faults are retried (the SDK replays buffered parts), permanent ones are
 * not, outages and stalls fail within their timeout leaving nothing, and downloads resume with
 * ranged GETs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorLine, runCoffer } from '../harness/cli.js';
import type { FaultProxy, FaultRule } from '../harness/fault-proxy.js';
import { useFixture } from '../harness/fixture.js';
import { dataFingerprint, dropDatabase, listDatabases, schemaDump, uniqueDbName, type Fingerprint } from '../harness/pg.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { bucketState, dataLoss, existingTarget, listedIds, repoBaseline, seedRepository, type GoldenBackup, type RepoBaseline } from './common.js';
import { lossSummary, record, writeResults, type MatrixRow } from './matrix.js';

const f = useFixture({ name: 'net', s3: true });
const pg = f.pg;

let source: string;
let sourceFp: Fingerprint;
/** A backup of `source` made without faults (for the download tests). */
let base: BackupManifest;
/** The same backup as the golden one every backup-side fault test's repository starts with. */
let golden: GoldenBackup;
/** The 'base' repository as it was before the restore-side faults. */
let baseRepo: RepoBaseline;
// 5 MiB parts of an uncompressed dump of ~14 MB: three parts per backup (a fault on the 2nd and
// on the 3rd part; a download cut at 3 MiB twice still leaves a third stretch). Every test moves
// the whole dump several times (backup, restore, the data-loss check's verify and restore): it
// was ~18 MB (four parts) for nothing more.
const BACKUP_ARGS = ['--compress', 'none', '--part-size', '5MiB'];

beforeAll(async () => {
  source = await f.database({ fixture: 'varied', prefix: 'net', fillMB: 6 });
  sourceFp = await dataFingerprint(pg, source);
  base = await f.backup(f.repo('base'), source, BACKUP_ARGS);
  golden = { prefix: 'base', manifest: base, database: source, schema: await schemaDump(pg, source), fingerprint: sourceFp };
  baseRepo = await repoBaseline(f, 'base', golden);
});

/** Records the row with the measured data loss, then requires it to be none. */
async function recordMeasured(row: Omit<MatrixRow, 'dataLost'>, measure: { repo?: RepoBaseline; targets?: Awaited<ReturnType<typeof existingTarget>>[] }): Promise<void> {
  const lost = await dataLoss(f, pg, measure);
  record({ ...row, dataLost: lost });
  expect(lost).toBe('none');
}

/** Keys of a repository beyond its baseline. */
async function newKeys(prefix: string, baseline: RepoBaseline): Promise<string[]> {
  return (await bucketState(f, prefix)).keys.filter((k) => !baseline.keys.includes(k));
}

afterAll(() => writeResults('network'));

async function proxy(rules: FaultRule[]): Promise<FaultProxy> {
  const p = await f.faultProxy();
  p.script(rules);
  return p;
}

/** Restores the newest backup of `prefix` (directly from RGW) and compares it with the source. */
async function restoreMatches(prefix: string, endpoint?: string, extra: string[] = []): Promise<{ code: number; stderr: string }> {
  const target = uniqueDbName('net_restored');
  const r = await runCoffer(['restore', '--from', f.repo(prefix), '--db', source, '--identity', f.identityFile, '--target-db', target, ...extra], {
    env: f.env({}, endpoint),
  });
  if (r.code === 0) {
    expect(await dataFingerprint(pg, target)).toEqual(sourceFp);
    await dropDatabase(pg, target);
  }
  return { code: r.code, stderr: r.stderr };
}

describe.concurrent('backup through a faulty network (into a repository that already holds a good backup)', () => {
  it('a connection reset and a 503 SlowDown on upload parts: retried, the backup completes and restores identical', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'transient');
    const p = await proxy([
      { op: 'UploadPart', nth: 2, fault: { kind: 'reset-request', afterBytes: 256 * 1024 } },
      { op: 'UploadPart', nth: 3, fault: { kind: 'status', status: 503, code: 'SlowDown' } },
      { op: 'PutObject', fault: { kind: 'status', status: 500, code: 'InternalError' } },
    ]);
    const m = await f.backup(f.repo('transient'), source, BACKUP_ARGS, f.env({}, p.endpoint));
    expect([p.fired(0), p.fired(1), p.fired(2)]).toEqual([1, 1, 1]);
    const parts = Math.ceil(m.dump.size / (5 * 1024 * 1024));
    expect(parts).toBeGreaterThanOrEqual(3);
    // Every part once, plus one replay for each of the two faulted parts.
    expect(p.requests('UploadPart').length).toBe(parts + 2);
    expect(p.requests('CompleteMultipartUpload').length).toBe(1);
    expect(await listedIds(f, f.repo('transient'))).toEqual([...baseline.backups.map((b) => b.id), m.id].sort());
    expect((await bucketState(f, 'transient')).uploads).toBe(0);
    const r = await restoreMatches('transient');
    expect(r.code, r.stderr).toBe(0);
    await recordMeasured(
      {
        id: 'net-01',
        area: 'network',
        fault: 'connection reset during an upload part; 503 SlowDown on another part; 500 on the manifest PUT',
        injected: 'proxy: RST after 256 KiB of the 2nd UploadPart body, 503 SlowDown for the 3rd, 500 InternalError for the first PutObject',
        outcome: 'the SDK replayed the buffered parts and the manifest PUT (parts + 2 UploadPart requests); exit 0; restore data fingerprint identical',
      },
      { repo: baseline },
    );
  });

  // Before: the retry's 412 (write-once manifests) was taken for a failure, and the dump was
  // deleted under a manifest that was listed: a visible backup that could not be restored.
  it("the manifest is stored but the answer is lost: the retry's 412 is checked against the listing, and the backup stands", { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'lost-answer');
    const p = await proxy([{ op: 'PutObject', fault: { kind: 'stall-response', afterBytes: 0 } }]);
    const r = await runCoffer(['backup', '--to', f.repo('lost-answer'), '--db', source, '--recipient', f.recipient, '--json', '--s3-timeout', '2s', ...BACKUP_ARGS], {
      env: f.env({}, p.endpoint),
    });
    expect(r.code, r.stderr).toBe(0);
    expect(p.fired(0)).toBe(1);
    expect(p.requests('PutObject').length).toBe(2);
    expect(r.stderr).toMatch(/the manifest is stored: the backup is complete/);
    const m = (JSON.parse(r.stdout) as BackupManifest[])[0]!;
    expect(await listedIds(f, f.repo('lost-answer'))).toEqual([...baseline.backups.map((b) => b.id), m.id].sort());
    expect((await bucketState(f, 'lost-answer')).keys).toContain(`lost-answer/${m.dump.key}`);
    const restored = await restoreMatches('lost-answer');
    expect(restored.code, restored.stderr).toBe(0);
    await recordMeasured(
      {
        id: 'net-08',
        area: 'network',
        fault: 'the manifest PUT reaches the server, its answer is lost',
        injected: 'proxy: forwards the first PutObject, then never sends the answer; coffer --s3-timeout 2s (the SDK retries; the retry gets 412, manifests being write-once)',
        outcome: 'coffer finds its manifest in the listing and reports the backup complete (exit 0); the dump is kept; restore data fingerprint identical',
      },
      { repo: baseline },
    );
  });

  // This once hung: after the upload failed, nobody read zstd's stdout any more, so the child's
  // 'close' never came (fixed in spawnChild and streamObject).
  it('a permanent error (403 AccessDenied) is not retried: exit 4 after one request, nothing left', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'denied');
    const p = await proxy([{ op: 'CreateMultipartUpload', times: Infinity, fault: { kind: 'status', status: 403, code: 'AccessDenied' } }]);
    const r = await runCoffer(['backup', '--to', f.repo('denied'), '--db', source, '--recipient', f.recipient, ...BACKUP_ARGS], { env: f.env({}, p.endpoint) });
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/access denied.*check the credentials/);
    expect(p.requests('CreateMultipartUpload').length).toBe(1);
    expect(await bucketState(f, 'denied')).toEqual({ keys: baseline.keys, uploads: 0 });
    await recordMeasured(
      {
        id: 'net-02',
        area: 'network',
        fault: 'permanent error: 403 AccessDenied on CreateMultipartUpload',
        injected: 'proxy: 403 AccessDenied for every CreateMultipartUpload',
        outcome: 'one request, no retry; exit 4 "access denied (check the credentials and the bucket policy)"; no new object, no upload',
      },
      { repo: baseline },
    );
  });

  it('a persistent outage (503 on every part): fails within its --timeout with exit 4, no manifest, the multipart upload aborted', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'outage');
    const p = await proxy([{ op: 'UploadPart', times: Infinity, fault: { kind: 'status', status: 503, code: 'SlowDown' } }]);
    const r = await runCoffer(['--timeout', '5m', 'backup', '--to', f.repo('outage'), '--db', source, '--recipient', f.recipient, ...BACKUP_ARGS], {
      env: f.env({}, p.endpoint),
    });
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/SlowDown.*HTTP 503/);
    // Retried (maxAttempts 5) before giving up, then aborted.
    expect(p.requests('UploadPart').length).toBeGreaterThanOrEqual(5);
    expect(p.requests('AbortMultipartUpload').length).toBeGreaterThanOrEqual(1);
    expect(await bucketState(f, 'outage')).toEqual({ keys: baseline.keys, uploads: 0 });
    expect(await listedIds(f, f.repo('outage'))).toEqual(baseline.backups.map((b) => b.id).sort());
    await recordMeasured(
      {
        id: 'net-03',
        area: 'network',
        fault: 'persistent outage: every upload part answered 503 SlowDown',
        injected: 'proxy: 503 SlowDown for every UploadPart; run under --timeout 5m',
        outcome: 'each part tried 5 times with backoff, then exit 4 (before the timeout); multipart upload aborted; no new object, no manifest, nothing new listed',
      },
      { repo: baseline },
    );
  });

  it('a stalled connection (server reads the part, never answers) fails by --s3-timeout, exit 4, nothing left', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'stall');
    const p = await proxy([{ op: 'UploadPart', times: Infinity, fault: { kind: 'stall' } }]);
    const r = await runCoffer(['--timeout', '5m', 'backup', '--to', f.repo('stall'), '--db', source, '--recipient', f.recipient, '--s3-timeout', '1s', ...BACKUP_ARGS], {
      env: f.env({}, p.endpoint),
    });
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/cannot reach the S3 endpoint \(TimeoutError\)/);
    expect(p.requests('UploadPart').length).toBeGreaterThanOrEqual(5);
    expect(await bucketState(f, 'stall')).toEqual({ keys: baseline.keys, uploads: 0 });
    await recordMeasured(
      {
        id: 'net-04',
        area: 'network',
        fault: 'stalled connection during upload',
        injected: 'proxy: reads every UploadPart body and never answers; coffer --s3-timeout 1s, --timeout 5m',
        outcome: 'each attempt failed after 1 s of silence, 5 attempts, then exit 4 "cannot reach the S3 endpoint (TimeoutError)"; upload aborted; no new object',
      },
      { repo: baseline },
    );
  });
});

describe.concurrent('restore through a faulty network', () => {
  it('a download cut twice completes via ranged resumes; the data is identical', { timeout: 480_000 }, async () => {
    const p = await proxy([{ op: 'GetObject', path: /\.dump\.age$/, times: 2, fault: { kind: 'reset-response', afterBytes: 3 * 1024 * 1024 } }]);
    const r = await restoreMatches('base', p.endpoint);
    expect(r.code, r.stderr).toBe(0);
    expect(p.fired(0)).toBe(2);
    const gets = p.requests('GetObject').filter((e) => e.path.endsWith('.dump.age'));
    expect(gets.length).toBe(3);
    expect(gets[0]!.range).toBeUndefined();
    const starts = gets.slice(1).map((g) => Number(/^bytes=(\d+)-$/.exec(g.range ?? '')?.[1]));
    expect(starts[0]).toBeGreaterThan(0);
    expect(starts[1]).toBeGreaterThan(starts[0]!);
    expect(r.stderr).toMatch(/download interrupted; resuming with a ranged GET/);
    await recordMeasured(
      {
        id: 'net-05',
        area: 'network',
        fault: 'restore download cut twice',
        injected: 'proxy: RST after 3 MiB of the first two GETs of the dump object',
        outcome: 'two ranged GETs (bytes=N-) resumed where the stream stopped; sha256 matched; exit 0; data fingerprint identical',
      },
      { repo: baseRepo },
    );
  });

  it('a truncated body and a stalled body during a download: resumed (stall ended by --s3-timeout); data identical', { timeout: 480_000 }, async () => {
    const p = await proxy([
      { op: 'GetObject', path: /\.dump\.age$/, nth: 1, fault: { kind: 'truncate-response', afterBytes: 2 * 1024 * 1024 } },
      { op: 'GetObject', path: /\.dump\.age$/, nth: 2, fault: { kind: 'stall-response', afterBytes: 1024 * 1024 } },
    ]);
    // 3 s of silence ends the stalled GET; a shorter timeout also fires on healthy GETs of a
    // loaded 2-core CI machine (this file's cases run at once, beside another test file).
    const r = await restoreMatches('base', p.endpoint, ['--s3-timeout', '3s']);
    expect(r.code, r.stderr).toBe(0);
    expect([p.fired(0), p.fired(1)]).toEqual([1, 1]);
    expect(p.requests('GetObject').filter((e) => e.path.endsWith('.dump.age')).length).toBe(3);
    await recordMeasured(
      {
        id: 'net-06',
        area: 'network',
        fault: 'truncated GET body, then a stalled GET body',
        injected: 'proxy: FIN after 2 MiB of the first GET; the second GET sends 1 MiB then goes silent; coffer --s3-timeout 3s',
        outcome: 'both detected (short body; 3 s idle timeout) and resumed with ranged GETs; exit 0; data fingerprint identical',
      },
      { repo: baseRepo },
    );
  });

  it('a download that keeps failing gives up with exit 4; the existing target (--replace) untouched, scratch dropped', { timeout: 480_000 }, async () => {
    const p = await proxy([{ op: 'GetObject', path: /\.dump\.age$/, times: Infinity, fault: { kind: 'reset-response', afterBytes: 512 * 1024 } }]);
    const existing = await existingTarget(pg, 'net_existing');
    const r = await runCoffer(['restore', '--from', f.repo('base'), '--db', source, '--identity', f.identityFile, '--target-db', existing.db, '--replace'], {
      env: f.env({}, p.endpoint),
    });
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/download .*after 5 resumes/);
    expect((await listDatabases(pg)).filter((d) => d.startsWith(existing.db))).toEqual([existing.db]);
    await recordMeasured(
      {
        id: 'net-07',
        area: 'network',
        fault: 'download fails persistently (restore --replace onto an existing database)',
        injected: 'proxy: RST after 512 KiB of every GET of the dump object',
        outcome: 'five ranged resumes with backoff, then exit 4; the existing target untouched (nothing renamed aside); scratch database dropped',
      },
      { repo: baseRepo, targets: [existing] },
    );
    await dropDatabase(pg, existing.db);
  });
});

describe.concurrent('commit-time and clean-up faults (into a repository that already holds a good backup)', () => {
  /** A backup run into `prefix` through a proxy with `rules`; the run's result and the proxy. */
  async function faultyBackup(prefix: string, rules: FaultRule[], extra: string[] = [], env: Record<string, string> = {}): Promise<{ r: Awaited<ReturnType<typeof runCoffer>>; p: FaultProxy }> {
    const p = await proxy(rules);
    const r = await runCoffer(['--timeout', '5m', 'backup', '--to', f.repo(prefix), '--db', source, '--recipient', f.recipient, '--json', ...BACKUP_ARGS, ...extra], {
      env: f.env(env, p.endpoint),
      timeoutMs: 400_000,
    });
    return { r, p };
  }

  it("CompleteMultipartUpload: the object is completed, the answer lost; the SDK's retry is answered 200 (RGW completes idempotently) and the backup stands", { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'complete-lost');
    const { r, p } = await faultyBackup('complete-lost', [{ op: 'CompleteMultipartUpload', fault: { kind: 'lost-answer' } }], ['--s3-timeout', '2s']);
    expect(p.fired(0)).toBe(1);
    expect(p.requests('CompleteMultipartUpload').length).toBe(2);
    expect(r.code, r.stderr).toBe(0);
    const m = (JSON.parse(r.stdout) as BackupManifest[])[0]!;
    expect(await listedIds(f, f.repo('complete-lost'))).toEqual([...baseline.backups.map((b) => b.id), m.id].sort());
    expect(await newKeys('complete-lost', baseline)).toEqual([`complete-lost/${m.dump.key}`, `complete-lost/${m.dump.key.replace(/\.dump\.age$/, '.manifest.json')}`].sort());
    const restored = await restoreMatches('complete-lost');
    expect(restored.code, restored.stderr).toBe(0);
    await recordMeasured(
      {
        id: 'net-09',
        area: 'network',
        fault: 'CompleteMultipartUpload: the server completes the object, the answer is lost',
        injected: 'proxy: forwards the first CompleteMultipartUpload, drops the answer; coffer --s3-timeout 2s (the SDK retries)',
        outcome: "the SDK's retry of CompleteMultipartUpload was answered 200 (RGW completes an already completed upload again); the object's size checked against what was sent; manifest written; exit 0; the backup listed and restores identical",
      },
      { repo: baseline },
    );
  });

  it('CompleteMultipartUpload answered 500, then a connection reset after the server completed it: the backup completes or nothing is listed', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'complete-500');
    const { r, p } = await faultyBackup('complete-500', [{ op: 'CompleteMultipartUpload', fault: { kind: 'status', status: 500, code: 'InternalError' } }]);
    expect(p.fired(0)).toBe(1);
    expect(r.code, r.stderr).toBe(0);
    const m = (JSON.parse(r.stdout) as BackupManifest[])[0]!;
    expect(p.requests('CompleteMultipartUpload').length).toBe(2);
    expect(await listedIds(f, f.repo('complete-500'))).toEqual([...baseline.backups.map((b) => b.id), m.id].sort());
    expect((await bucketState(f, 'complete-500')).uploads).toBe(0);

    const baseline2 = await seedRepository(f, golden, 'complete-reset');
    const reset = await faultyBackup('complete-reset', [{ op: 'CompleteMultipartUpload', fault: { kind: 'lost-answer', how: 'reset' } }]);
    expect(reset.p.fired(0)).toBe(1);
    const listed = await listedIds(f, f.repo('complete-reset'));
    if (reset.r.code === 0) {
      const m2 = (JSON.parse(reset.r.stdout) as BackupManifest[])[0]!;
      expect(listed).toEqual([...baseline2.backups.map((b) => b.id), m2.id].sort());
    } else {
      expect(reset.r.code, reset.r.stderr).toBe(4);
      expect(listed).toEqual(baseline2.backups.map((b) => b.id).sort());
      // The object the server completed is removed with the rest: no key of the run is left.
      expect(await newKeys('complete-reset', baseline2)).toEqual([]);
    }
    const resetOutcome = reset.r.code === 0 ? 'exit 0, the backup listed' : `exit 4 "${errorLine(reset.r.stderr).slice(0, 100)}", nothing new listed, no object of the run left`;
    const lost2 = await dataLoss(f, pg, { repo: baseline2 });
    await recordMeasured(
      {
        id: 'net-10',
        area: 'network',
        fault: 'CompleteMultipartUpload answered 500; in a second run, its connection reset after the server completed the object',
        injected: 'proxy: 500 InternalError for the first CompleteMultipartUpload; second run: forwards it, then RST instead of the answer',
        outcome: `500: the SDK retried, exit 0, the backup listed (2 CompleteMultipartUpload requests); reset: ${resetOutcome}; earlier backups of both repositories: ${lost2 === 'none' ? 'intact' : lost2}`,
      },
      { repo: baseline },
    );
    expect(lost2).toBe('none');
  });

  it('AbortMultipartUpload fails after a failed upload: the upload cause is reported, the upload is left for the lifecycle rule', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'abort-fails');
    const { r, p } = await faultyBackup('abort-fails', [
      { op: 'UploadPart', times: Infinity, fault: { kind: 'status', status: 403, code: 'AccessDenied' } },
      { op: 'AbortMultipartUpload', times: Infinity, fault: { kind: 'status', status: 500, code: 'InternalError' } },
    ]);
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/access denied/);
    // coffer's own 5 tries, each retried by the SDK.
    expect(p.requests('AbortMultipartUpload').length).toBeGreaterThanOrEqual(5);
    const state = await bucketState(f, 'abort-fails');
    expect(state.keys).toEqual(baseline.keys);
    expect(state.uploads).toBe(1);
    expect(await listedIds(f, f.repo('abort-fails'))).toEqual(baseline.backups.map((b) => b.id).sort());
    await recordMeasured(
      {
        id: 'net-11',
        area: 'network',
        fault: 'AbortMultipartUpload fails after a failed upload',
        injected: 'proxy: 403 AccessDenied for every UploadPart, 500 InternalError for every AbortMultipartUpload',
        outcome: `exit 4 with the upload's cause (access denied), not the abort's; at least 5 AbortMultipartUpload requests (coffer's 5 tries, each retried by the SDK); one incomplete multipart upload left for the AbortIncompleteMultipartUpload rule; no object, nothing new listed`,
      },
      { repo: baseline },
    );
  });

  it('ListObjects fails before the dump (tier choice): exit 4, nothing started', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'list-before');
    const { r, p } = await faultyBackup('list-before', [{ op: 'ListObjects', times: Infinity, fault: { kind: 'status', status: 503, code: 'ServiceUnavailable' } }]);
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/^list s3:\/\/[^ ]+\/list-before: ServiceUnavailable/);
    expect(p.requests('CreateMultipartUpload')).toEqual([]);
    expect(await bucketState(f, 'list-before')).toEqual({ keys: baseline.keys, uploads: 0 });
    await recordMeasured(
      {
        id: 'net-12',
        area: 'network',
        fault: 'ListObjects fails before the dump (the listing that chooses the tier)',
        injected: 'proxy: 503 ServiceUnavailable for every ListObjects',
        outcome: 'exit 4 "list s3://…: ServiceUnavailable" after the SDK\'s retries; pg_dump never started, no upload created; nothing new stored',
      },
      { repo: baseline },
    );
  });

  it('the manifest answer is lost and ListObjects fails for the commit check: coffer says it cannot tell, keeps the dump; the backup is in fact complete', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'list-after');
    const { r, p } = await faultyBackup(
      'list-after',
      [
        { op: 'PutObject', fault: { kind: 'lost-answer' } },
        { op: 'ListObjects', afterOp: 'PutObject', times: Infinity, fault: { kind: 'status', status: 503, code: 'ServiceUnavailable' } },
      ],
      ['--s3-timeout', '2s'],
    );
    expect(p.fired(0), r.stderr).toBe(1);
    expect(p.fired(1), r.stderr).toBeGreaterThanOrEqual(1);
    expect(r.code, r.stderr).toBe(4);
    expect(r.stderr).toMatch(/could not tell whether the manifest was stored; the dump is left in place/);
    expect(p.requests('DeleteObject')).toEqual([]);
    // The manifest did land: the backup is listed (directly, without the proxy) and restores.
    const listed = await listedIds(f, f.repo('list-after'));
    expect(listed.length).toBe(baseline.backups.length + 1);
    const restored = await restoreMatches('list-after');
    expect(restored.code, restored.stderr).toBe(0);
    await recordMeasured(
      {
        id: 'net-13',
        area: 'network',
        fault: "the manifest PUT's answer is lost and the commit check's ListObjects fails",
        injected: 'proxy: forwards the first PutObject and drops its answer; 503 for every ListObjects after it (the tier choice listed normally); coffer --s3-timeout 2s',
        outcome: 'exit 4 with "could not tell whether the manifest was stored; the dump is left in place"; no DeleteObject sent; the manifest had landed, so the backup is listed and restores identical (a false failure, never a false success)',
      },
      { repo: baseline },
    );
  });

  it('the manifest PUT fails for good: the dump is removed; when that DeleteObject fails too, the orphan is reported and left', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'manifest-fails');
    const { r, p } = await faultyBackup('manifest-fails', [{ op: 'PutObject', times: Infinity, fault: { kind: 'status', status: 403, code: 'AccessDenied' } }]);
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/access denied/);
    expect(p.requests('DeleteObject').length).toBe(1);
    expect(await bucketState(f, 'manifest-fails')).toEqual({ keys: baseline.keys, uploads: 0 });

    const baseline2 = await seedRepository(f, golden, 'orphan-stays');
    const second = await faultyBackup('orphan-stays', [
      { op: 'PutObject', times: Infinity, fault: { kind: 'status', status: 403, code: 'AccessDenied' } },
      { op: 'DeleteObject', times: Infinity, fault: { kind: 'status', status: 500, code: 'InternalError' } },
    ]);
    expect(second.r.code, second.r.stderr).toBe(4);
    expect(errorLine(second.r.stderr)).toMatch(/access denied/);
    expect(second.r.stderr).toMatch(/could not remove an object of the failed run/);
    const orphans = await newKeys('orphan-stays', baseline2);
    expect(orphans.length).toBe(1);
    expect(orphans[0]).toMatch(/\.dump\.age$/);
    expect(await listedIds(f, f.repo('orphan-stays'))).toEqual(baseline2.backups.map((b) => b.id).sort());
    const lost2 = await dataLoss(f, pg, { repo: baseline2 });
    await recordMeasured(
      {
        id: 'net-14',
        area: 'network',
        fault: 'the manifest PUT fails for good; in a second run, the DeleteObject of the orphaned dump fails too',
        injected: 'proxy: 403 AccessDenied for every PutObject; second run: also 500 InternalError for every DeleteObject',
        outcome: `exit 4 "access denied" both times; first run: the listing showed no manifest, so the dump was deleted (one DeleteObject), nothing new left; second run: warning "could not remove an object of the failed run", the dump object left without a manifest (not listed; lifecycle rules expire it); earlier backups of the second repository: ${lost2 === 'none' ? 'intact' : lost2}`,
      },
      { repo: baseline },
    );
    expect(lost2).toBe('none');
  });

  it('the manifest GET fails during a restore: exit 4, the existing target (--replace) untouched', { timeout: 480_000 }, async () => {
    const p = await proxy([{ op: 'GetObject', path: /\.manifest\.json$/, times: Infinity, fault: { kind: 'status', status: 500, code: 'InternalError' } }]);
    const existing = await existingTarget(pg, 'net_mget');
    const r = await runCoffer(['restore', '--from', f.repo('base'), '--db', source, '--identity', f.identityFile, '--target-db', existing.db, '--replace'], { env: f.env({}, p.endpoint) });
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/^download s3:\/\/[^ ]+\.manifest\.json: InternalError/);
    expect(p.fired(0)).toBeGreaterThanOrEqual(1);
    expect(p.requests('GetObject').filter((e) => e.path.endsWith('.dump.age'))).toEqual([]);
    expect((await listDatabases(pg)).filter((d) => d.startsWith(existing.db))).toEqual([existing.db]);
    await recordMeasured(
      {
        id: 'net-15',
        area: 'network',
        fault: 'the manifest GET fails during a restore (--replace onto an existing database)',
        injected: 'proxy: 500 InternalError for every GET of a .manifest.json',
        outcome: 'exit 4 "download s3://…/<id>.manifest.json: InternalError" after the SDK\'s retries; the dump never downloaded; no scratch database; the existing target untouched',
      },
      { repo: baseRepo, targets: [existing] },
    );
    await dropDatabase(pg, existing.db);
  });
});

describe('the data-loss check itself', () => {
  it('detects a broken cleanup: a failed run that deletes an earlier backup (test-only fault point) is reported as data lost', { timeout: 480_000 }, async () => {
    const baseline = await seedRepository(f, golden, 'broken-cleanup');
    const p = await proxy([{ op: 'CreateMultipartUpload', times: Infinity, fault: { kind: 'status', status: 403, code: 'AccessDenied' } }]);
    const r = await runCoffer(['backup', '--to', f.repo('broken-cleanup'), '--db', source, '--recipient', f.recipient, ...BACKUP_ARGS], {
      env: f.env({ COFFER_TEST_FAULTS: 'delete-earlier-backup=1' }, p.endpoint),
    });
    expect(r.code, r.stderr).toBe(4);
    const lost = await dataLoss(f, pg, { repo: baseline });
    // The check FAILS: it names the backup and what happened to it.
    expect(lost).not.toBe('none');
    expect(lost).toContain(baseline.backups[0]!.id);
    expect(lost).toMatch(/no longer listed.*manifest deleted/);
    // And a row with that result turns the page's summary red.
    const row = { id: 'net-xx', area: 'network' as const, fault: 'x', injected: 'x', outcome: 'x', dataLost: lost };
    expect(lossSummary([row])).toMatch(/^DATA LOST in 1 row\(s\): net-xx/);
    expect(lossSummary([{ ...row, dataLost: 'none' }])).toMatch(/^Data lost in any row: none/);
    record({
      id: 'ctl-01',
      area: 'control',
      fault: 'a deliberately broken cleanup: a failed backup run deletes the manifest of an earlier backup',
      injected: 'COFFER_TEST_FAULTS=delete-earlier-backup=1 (src/run/faults.ts); the run fails on a 403 from the proxy',
      outcome: 'the data-loss check reported the loss (this column), and a row with it turns the summary line to "DATA LOST"',
      dataLost: lost.replace(baseline.backups[0]!.id, '<earlier id>'),
    });
  });
});

it('the fixture backup is what the download tests read', () => {
  expect(base.dump.key.endsWith('.dump.age')).toBe(true);
});
