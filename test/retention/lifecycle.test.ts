/**
 * `coffer init` and `coffer retention check` against a real S3 server (Ceph RGW), and lifecycle
 * rules that really expire backups (RGW runs with `rgw lc debug interval = 10`: a 1-day rule acts
 * on objects older than 10 s, in RGW's next lifecycle pass over the bucket).
 */
import * as fsp from 'node:fs/promises';
import { GetBucketLifecycleConfigurationCommand, PutBucketLifecycleConfigurationCommand, PutObjectCommand, type LifecycleRule } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { createTestBucket, listAllKeys, processLifecycle, putBucketPolicy } from '../harness/rgw.js';
import { baseEnv, errorLine, runCoffer, s3Env } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { canonicalRule, desiredRules } from '../../src/retention/lifecycle.js';
import { parseRetentionPolicy } from '../../src/retention/policy.js';

const f = useFixture({ name: 'lifecycle-test', s3: true, bucket: false, db: 'empty' });

/** A rule of another tool, already in the bucket: init must keep it exactly. */
const FOREIGN: LifecycleRule = { ID: 'other-tool-logs', Status: 'Enabled', Filter: { Prefix: 'logs/' }, Expiration: { Days: 3 } };

async function rulesOf(bucket: string): Promise<LifecycleRule[]> {
  try {
    return (await f.s3.send(new GetBucketLifecycleConfigurationCommand({ Bucket: bucket }))).Rules ?? [];
  } catch (err) {
    if ((err as { name?: string }).name === 'NoSuchLifecycleConfiguration') return [];
    throw err;
  }
}

function canonicalSet(rules: LifecycleRule[]): string[] {
  return rules.map((r) => JSON.stringify(canonicalRule(r))).sort();
}

describe('coffer init', () => {
  it('creates the rules, keeps an unrelated rule, and a second run changes nothing; retention check sees drift', async () => {
    const bucket = await createTestBucket(f.s3);
    await f.s3.send(new PutBucketLifecycleConfigurationCommand({ Bucket: bucket, LifecycleConfiguration: { Rules: [FOREIGN] } }));
    const repo = `s3://${bucket}/prod`;

    const dry = await f.run(['init', '--to', repo, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/\[dry-run\] add\s+lifecycle rule coffer-daily@prod: prefix "prod\/" tag coffer-tier=daily: expire after 14 days/);
    expect(dry.stdout).toContain('other   lifecycle rule other-tool-logs');
    expect(canonicalSet(await rulesOf(bucket))).toEqual(canonicalSet([FOREIGN])); // nothing written

    const first = await f.run(['init', '--to', repo]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toContain('changes applied');
    const after = await rulesOf(bucket);
    const wanted = desiredRules(parseRetentionPolicy({}), 'prod');
    expect(canonicalSet(after)).toEqual(canonicalSet([FOREIGN, ...wanted]));
    // Read back, coffer's rules say what the policy says (12mo = 372 days, rounded up).
    const byId = new Map(after.map((r) => [r.ID, canonicalRule(r)]));
    expect(byId.get('coffer-daily@prod')).toMatchObject({ prefix: 'prod/', tags: ['coffer-tier=daily'], expirationDays: 14 });
    expect(byId.get('coffer-weekly@prod')).toMatchObject({ expirationDays: 56 });
    expect(byId.get('coffer-monthly@prod')).toMatchObject({ expirationDays: 372 });
    expect(byId.get('coffer-manual@prod')).toMatchObject({ expirationDays: 90 });
    expect(byId.get('coffer-wal@prod')).toMatchObject({ prefix: 'prod/', tags: ['coffer-tier=wal'], expirationDays: 14 });
    expect(byId.get('coffer-cleanup@prod')).toMatchObject({ prefix: 'prod/', abortIncompleteDays: 1, noncurrentDays: 7, expiredObjectDeleteMarker: true });

    const second = await f.run(['init', '--to', repo]);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toContain('no changes');
    expect(second.stdout).not.toMatch(/^(add|update|remove) /m);
    expect(canonicalSet(await rulesOf(bucket))).toEqual(canonicalSet(after));

    const ok = await f.run(['retention', 'check', '--from', repo]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toContain('matches the retention policy');

    // A different policy is drift: exit 7, one line per difference.
    const drift = await f.run(['retention', 'check', '--from', repo, '--keep-daily', '7d', '--json']);
    expect(drift.code, drift.stderr).toBe(7);
    expect((JSON.parse(drift.stdout) as { drift: string[] }).drift).toEqual([expect.stringContaining('lifecycle rule coffer-daily@prod differs (wanted: prefix "prod/" tag coffer-tier=daily: expire after 7 days)')]);
    expect(errorLine(drift.stderr)).toMatch(/retention drift on s3:\/\/.*\/prod: 1 difference/);
    // Asking for object lock on a bucket without it is drift too.
    const lock = await f.run(['retention', 'check', '--from', repo, '--object-lock-mode', 'governance']);
    expect(lock.code, lock.stderr).toBe(7);
    expect(lock.stdout).toContain('object lock is not enabled');
    // Updating the policy: only the daily rule changes, the foreign rule stays.
    const upd = await f.run(['init', '--to', repo, '--keep-daily', '7d']);
    expect(upd.code, upd.stderr).toBe(0);
    expect(upd.stdout).toMatch(/^update\s+lifecycle rule coffer-daily@prod/m);
    expect(upd.stdout.match(/^update /gm)).toHaveLength(1);
    expect(canonicalSet((await rulesOf(bucket)).filter((r) => r.ID === FOREIGN.ID))).toEqual(canonicalSet([FOREIGN]));
    // A foreign rule on coffer's monthly tag, shorter than monthly but longer than daily, is drift too.
    const tagRule: LifecycleRule = { ID: 'other-tag', Status: 'Enabled', Filter: { Tag: { Key: 'coffer-tier', Value: 'monthly' } }, Expiration: { Days: 30 } };
    await f.s3.send(new PutBucketLifecycleConfigurationCommand({ Bucket: bucket, LifecycleConfiguration: { Rules: [...(await rulesOf(bucket)), tagRule] } }));
    const early = await f.run(['retention', 'check', '--from', repo, '--keep-daily', '7d']);
    expect(early.code, early.stderr).toBe(7);
    expect(early.stdout).toMatch(/^drift: lifecycle rule other-tag .*monthly backups after 30 days \(policy: 372\)/m);
    expect(errorLine(early.stderr)).toMatch(/remove or narrow the other lifecycle rule named/);
  });

  it('refuses a missing bucket without --create-bucket, and local repositories', async () => {
    const missing = await f.run(['init', '--to', 's3://coffer-no-such-bucket-x1/prod']);
    expect(missing.code).toBe(2);
    expect(errorLine(missing.stderr)).toMatch(/does not exist.*--create-bucket/);
    const local = await f.run(['init', '--to', f.tmp]);
    expect(local.code).toBe(2);
    expect(errorLine(local.stderr)).toMatch(/coffer prune/);
    const badLock = await f.run(['init', '--to', 's3://coffer-no-such-bucket-x1/prod', '--object-lock', 'strict']);
    expect(badLock.code).toBe(2);
  });
});

describe('admin role (minio/coffer-admin.json)', () => {
  it('is enough for init with object lock and retention check, and reads no backups', async () => {
    const bucket = await createTestBucket(f.s3, undefined, { objectLock: true });
    await f.s3.send(new PutObjectCommand({ Bucket: bucket, Key: 'backups/x/daily/20260101T000000Z-00000000.manifest.json', Body: '{}' }));
    const policy = JSON.parse((await fsp.readFile(new URL('../../minio/coffer-admin.json', import.meta.url), 'utf8')).replaceAll('arn:aws:s3:::coffer', `arn:aws:s3:::${bucket}`)) as { Statement: object[] };
    await putBucketPolicy(f.s3, bucket, {
      Version: '2012-10-17',
      Statement: policy.Statement.map((st) => ({ ...st, Principal: { AWS: ['arn:aws:iam:::user/other'] } })),
    });
    const asOther = baseEnv({ ...s3Env(f.rgw!, 'other') });
    const repo = `s3://${bucket}/backups`;
    const init = await runCoffer(['init', '--to', repo, '--object-lock', 'compliance'], { env: asOther });
    expect(init.code, init.stderr).toBe(0);
    expect(init.stdout).toMatch(/^set\s+object lock default retention: COMPLIANCE 14 days/m);
    const check = await runCoffer(['retention', 'check', '--from', repo, '--object-lock-mode', 'compliance'], { env: asOther });
    expect(check.code, check.stderr).toBe(0);
    const again = await runCoffer(['init', '--to', repo, '--object-lock', 'compliance'], { env: asOther });
    expect(again.stdout).toContain('no changes');
    const verify = await runCoffer(['list', '--from', repo], { env: asOther });
    expect(verify.code, verify.stderr).toBe(4); // listing works, reading a manifest is denied
  });
});

describe('lifecycle expiry', () => {
  it('a daily backup under a 1-day policy disappears while a monthly one stays', async () => {
    const bucket = await createTestBucket(f.s3);
    const repo = `s3://${bucket}/lc`;
    const init = await f.run(['init', '--to', repo, '--keep-daily', '1d']);
    expect(init.code, init.stderr).toBe(0);
    const keysOf = async (tier: string): Promise<string[]> => {
      const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient, '--tier', tier, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const m = (JSON.parse(r.stdout) as BackupManifest[])[0]!;
      // The dump, its archive index (tagged with the tier like the others) and the manifest.
      return [`lc/${m.dump.key}`, `lc/${m.index!.key}`, `lc/${m.dump.key.replace(/\.dump\.zst\.age$/, '.manifest.json')}`];
    };
    const daily = await keysOf('daily');
    const dailyDone = Date.now();
    const monthly = await keysOf('monthly');
    expect(await listAllKeys(f.s3, bucket, 'lc/')).toEqual(expect.arrayContaining([...daily, ...monthly]));

    // RGW counts 10 s as a lifecycle day (`rgw lc debug interval`). Once the daily backup is older
    // than that, RGW's own lifecycle engine is run over this bucket (processLifecycle) until it
    // acts: the gateway's lifecycle thread, which may also get there first, took from 20 s to over
    // 6 minutes per pass over the run's many buckets with rules.
    await new Promise((r) => setTimeout(r, Math.max(0, dailyDone + 12_000 - Date.now())));
    let left = await listAllKeys(f.s3, bucket, 'lc/');
    const passes: string[] = [];
    for (let i = 0; i < 20 && daily.some((k) => left.includes(k)); i++) {
      passes.push((await processLifecycle(f.rgw!.dir, bucket)) ?? 'ok');
      left = await listAllKeys(f.s3, bucket, 'lc/');
      if (daily.some((k) => left.includes(k))) await new Promise((r) => setTimeout(r, 3000));
    }
    expect(left.filter((k) => daily.includes(k)), `lifecycle passes: ${passes.join('; ')}`).toEqual([]);
    expect(left.sort()).toEqual([...monthly].sort());
  }, 240_000);
});
