/**
 * Network faults between coffer and S3, injected by test/harness/fault-proxy.ts in front of the
 * real RGW: transient faults are retried (the SDK replays buffered parts), permanent ones are
 * not, outages and stalls fail within their timeout leaving nothing, and downloads resume with
 * ranged GETs.
 */
import * as fsp from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { errorLine, runCoffer } from '../harness/cli.js';
import { startFaultProxy, type FaultProxy, type FaultRule } from '../harness/fault-proxy.js';
import { createDatabase, dataFingerprint, databaseExists, dropDatabase, fillLargeTable, pgFromInject, uniqueDbName, type Fingerprint } from '../harness/pg.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { backupOk, bucketState, listedIds, scratchDatabases, setupFixture, type Fixture } from './common.js';
import { record, writeResults } from './matrix.js';

const rgwInfo = inject('rgw')!;
const pgInfo = inject('pg')!;
const pg = pgFromInject(pgInfo);

let f: Fixture;
let source: string;
let sourceFp: Fingerprint;
/** A backup of `source` made without faults (for the download tests). */
let base: BackupManifest;
const proxies: FaultProxy[] = [];
const repo = (prefix: string): string => `s3://${f.bucket}/${prefix}`;
// 5 MiB parts of an uncompressed dump of ~18 MB: four parts per backup.
const BACKUP_ARGS = ['--compress', 'none', '--part-size', '5MiB'];

beforeAll(async () => {
  f = await setupFixture(rgwInfo, pgInfo, 'net');
  source = await createDatabase(pg, uniqueDbName('net'), 'varied');
  await fillLargeTable(pg, source, 8);
  sourceFp = await dataFingerprint(pg, source);
  base = await backupOk(f, repo('base'), source, BACKUP_ARGS);
});

afterAll(async () => {
  await Promise.all(proxies.map((p) => p.stop()));
  await dropDatabase(pg, source);
  f?.s3.destroy();
  if (f) await fsp.rm(f.tmp, { recursive: true, force: true });
  writeResults('network');
});

async function proxy(rules: FaultRule[]): Promise<FaultProxy> {
  const p = await startFaultProxy(rgwInfo.endpoint);
  proxies.push(p);
  p.script(rules);
  return p;
}

/** Restores the newest backup of `prefix` (directly from RGW) and compares it with the source. */
async function restoreMatches(prefix: string, endpoint?: string, extra: string[] = []): Promise<{ code: number; stderr: string }> {
  const target = uniqueDbName('net_restored');
  const r = await runCoffer(['restore', '--from', repo(prefix), '--db', source, '--identity', f.identityFile, '--target-db', target, ...extra], {
    env: f.env({}, endpoint),
  });
  if (r.code === 0) {
    expect(await dataFingerprint(pg, target)).toEqual(sourceFp);
    await dropDatabase(pg, target);
  }
  return { code: r.code, stderr: r.stderr };
}

describe.concurrent('backup through a faulty network', () => {
  it('a connection reset and a 503 SlowDown on upload parts: retried, the backup completes and restores identical', async () => {
    const p = await proxy([
      { op: 'UploadPart', nth: 2, fault: { kind: 'reset-request', afterBytes: 256 * 1024 } },
      { op: 'UploadPart', nth: 3, fault: { kind: 'status', status: 503, code: 'SlowDown' } },
      { op: 'PutObject', fault: { kind: 'status', status: 500, code: 'InternalError' } },
    ]);
    const m = await backupOk(f, repo('transient'), source, BACKUP_ARGS, f.env({}, p.endpoint));
    expect([p.fired(0), p.fired(1), p.fired(2)]).toEqual([1, 1, 1]);
    const parts = Math.ceil(m.dump.size / (5 * 1024 * 1024));
    expect(parts).toBeGreaterThanOrEqual(3);
    // Every part once, plus one replay for each of the two faulted parts.
    expect(p.requests('UploadPart').length).toBe(parts + 2);
    expect(p.requests('CompleteMultipartUpload').length).toBe(1);
    expect(await listedIds(f, repo('transient'))).toEqual([m.id]);
    expect((await bucketState(f, 'transient')).uploads).toBe(0);
    const r = await restoreMatches('transient');
    expect(r.code, r.stderr).toBe(0);
    record({
      id: 'net-01',
      area: 'network',
      fault: 'connection reset during an upload part; 503 SlowDown on another part; 500 on the manifest PUT',
      injected: 'proxy: RST after 256 KiB of the 2nd UploadPart body, 503 SlowDown for the 3rd, 500 InternalError for the first PutObject',
      outcome: 'the SDK replayed the buffered parts and the manifest PUT (parts + 2 UploadPart requests); exit 0; restore data fingerprint identical',
      dataLost: 'none',
    });
  });

  // Before: the retry's 412 (write-once manifests) was taken for a failure, and the dump was
  // deleted under a manifest that was listed: a visible backup that could not be restored.
  it("the manifest is stored but the answer is lost: the retry's 412 is checked against the listing, and the backup stands", async () => {
    const p = await proxy([{ op: 'PutObject', fault: { kind: 'stall-response', afterBytes: 0 } }]);
    const r = await runCoffer(['backup', '--to', repo('lost-answer'), '--db', source, '--recipient', f.recipient, '--json', '--s3-timeout', '2s', ...BACKUP_ARGS], {
      env: f.env({}, p.endpoint),
    });
    expect(r.code, r.stderr).toBe(0);
    expect(p.fired(0)).toBe(1);
    expect(p.requests('PutObject').length).toBe(2);
    expect(r.stderr).toMatch(/the manifest is stored: the backup is complete/);
    const m = (JSON.parse(r.stdout) as BackupManifest[])[0]!;
    expect(await listedIds(f, repo('lost-answer'))).toEqual([m.id]);
    expect((await bucketState(f, 'lost-answer')).keys).toContain(`lost-answer/${m.dump.key}`);
    const restored = await restoreMatches('lost-answer');
    expect(restored.code, restored.stderr).toBe(0);
    record({
      id: 'net-08',
      area: 'network',
      fault: 'the manifest PUT reaches the server, its answer is lost',
      injected: 'proxy: forwards the first PutObject, then never sends the answer; coffer --s3-timeout 2s (the SDK retries; the retry gets 412, manifests being write-once)',
      outcome: 'coffer finds its manifest in the listing and reports the backup complete (exit 0); the dump is kept; restore data fingerprint identical',
      dataLost: 'none',
    });
  });

  // This once hung: after the upload failed, nobody read zstd's stdout any more, so the child's
  // 'close' never came (fixed in spawnChild and streamObject).
  it('a permanent error (403 AccessDenied) is not retried: exit 4 after one request, nothing left', async () => {
    const p = await proxy([{ op: 'CreateMultipartUpload', times: Infinity, fault: { kind: 'status', status: 403, code: 'AccessDenied' } }]);
    const r = await runCoffer(['backup', '--to', repo('denied'), '--db', source, '--recipient', f.recipient, ...BACKUP_ARGS], { env: f.env({}, p.endpoint) });
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/access denied.*check the credentials/);
    expect(p.requests('CreateMultipartUpload').length).toBe(1);
    expect(await bucketState(f, 'denied')).toEqual({ keys: [], uploads: 0 });
    record({
      id: 'net-02',
      area: 'network',
      fault: 'permanent error: 403 AccessDenied on CreateMultipartUpload',
      injected: 'proxy: 403 AccessDenied for every CreateMultipartUpload',
      outcome: 'one request, no retry; exit 4 "access denied (check the credentials and the bucket policy)"; no object, no upload',
      dataLost: 'none',
    });
  });

  it('a persistent outage (503 on every part): fails within its --timeout with exit 4, no manifest, the multipart upload aborted', async () => {
    const p = await proxy([{ op: 'UploadPart', times: Infinity, fault: { kind: 'status', status: 503, code: 'SlowDown' } }]);
    const r = await runCoffer(['--timeout', '5m', 'backup', '--to', repo('outage'), '--db', source, '--recipient', f.recipient, ...BACKUP_ARGS], {
      env: f.env({}, p.endpoint),
    });
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/SlowDown.*HTTP 503/);
    // Retried (maxAttempts 5) before giving up, then aborted.
    expect(p.requests('UploadPart').length).toBeGreaterThanOrEqual(5);
    expect(p.requests('AbortMultipartUpload').length).toBeGreaterThanOrEqual(1);
    expect(await bucketState(f, 'outage')).toEqual({ keys: [], uploads: 0 });
    expect(await listedIds(f, repo('outage'))).toEqual([]);
    record({
      id: 'net-03',
      area: 'network',
      fault: 'persistent outage: every upload part answered 503 SlowDown',
      injected: 'proxy: 503 SlowDown for every UploadPart; run under --timeout 5m',
      outcome: 'each part tried 5 times with backoff, then exit 4 (before the timeout); multipart upload aborted; no object, no manifest, nothing listed',
      dataLost: 'none',
    });
  });

  it('a stalled connection (server reads the part, never answers) fails by --s3-timeout, exit 4, nothing left', async () => {
    const p = await proxy([{ op: 'UploadPart', times: Infinity, fault: { kind: 'stall' } }]);
    const r = await runCoffer(['--timeout', '5m', 'backup', '--to', repo('stall'), '--db', source, '--recipient', f.recipient, '--s3-timeout', '1s', ...BACKUP_ARGS], {
      env: f.env({}, p.endpoint),
    });
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/cannot reach the S3 endpoint \(TimeoutError\)/);
    expect(p.requests('UploadPart').length).toBeGreaterThanOrEqual(5);
    expect(await bucketState(f, 'stall')).toEqual({ keys: [], uploads: 0 });
    record({
      id: 'net-04',
      area: 'network',
      fault: 'stalled connection during upload',
      injected: 'proxy: reads every UploadPart body and never answers; coffer --s3-timeout 1s, --timeout 5m',
      outcome: 'each attempt failed after 1 s of silence, 5 attempts, then exit 4 "cannot reach the S3 endpoint (TimeoutError)"; upload aborted; nothing left',
      dataLost: 'none',
    });
  });
});

describe.concurrent('restore through a faulty network', () => {
  it('a download cut twice completes via ranged resumes; the data is identical', async () => {
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
    record({
      id: 'net-05',
      area: 'network',
      fault: 'restore download cut twice',
      injected: 'proxy: RST after 3 MiB of the first two GETs of the dump object',
      outcome: 'two ranged GETs (bytes=N-) resumed where the stream stopped; sha256 matched; exit 0; data fingerprint identical',
      dataLost: 'none',
    });
  });

  it('a truncated body and a stalled body during a download: resumed (stall ended by --s3-timeout); data identical', async () => {
    const p = await proxy([
      { op: 'GetObject', path: /\.dump\.age$/, nth: 1, fault: { kind: 'truncate-response', afterBytes: 2 * 1024 * 1024 } },
      { op: 'GetObject', path: /\.dump\.age$/, nth: 2, fault: { kind: 'stall-response', afterBytes: 1024 * 1024 } },
    ]);
    const r = await restoreMatches('base', p.endpoint, ['--s3-timeout', '1s']);
    expect(r.code, r.stderr).toBe(0);
    expect([p.fired(0), p.fired(1)]).toEqual([1, 1]);
    expect(p.requests('GetObject').filter((e) => e.path.endsWith('.dump.age')).length).toBe(3);
    record({
      id: 'net-06',
      area: 'network',
      fault: 'truncated GET body, then a stalled GET body',
      injected: 'proxy: FIN after 2 MiB of the first GET; the second GET sends 1 MiB then goes silent; coffer --s3-timeout 1s',
      outcome: 'both detected (short body; 1 s idle timeout) and resumed with ranged GETs; exit 0; data fingerprint identical',
      dataLost: 'none',
    });
  });

  it('a download that keeps failing gives up with exit 4; target untouched, scratch dropped', async () => {
    const p = await proxy([{ op: 'GetObject', path: /\.dump\.age$/, times: Infinity, fault: { kind: 'reset-response', afterBytes: 512 * 1024 } }]);
    const target = uniqueDbName('net_never');
    const r = await runCoffer(['restore', '--from', repo('base'), '--db', source, '--identity', f.identityFile, '--target-db', target], { env: f.env({}, p.endpoint) });
    expect(r.code, r.stderr).toBe(4);
    expect(errorLine(r.stderr)).toMatch(/download .*after 5 resumes/);
    expect(await databaseExists(pg, target)).toBe(false);
    expect((await scratchDatabases(pg)).filter((d) => d.startsWith(target))).toEqual([]);
    record({
      id: 'net-07',
      area: 'network',
      fault: 'download fails persistently',
      injected: 'proxy: RST after 512 KiB of every GET of the dump object',
      outcome: 'five ranged resumes with backoff, then exit 4; the target database was never created; scratch database dropped',
      dataLost: 'none',
    });
  });
});

it('the fixture backup is what the download tests read', () => {
  expect(base.dump.key.endsWith('.dump.age')).toBe(true);
});
