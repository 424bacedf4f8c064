/** Pure planning: retention periods, lifecycle merge, tier promotion and prune decisions (`now` passed in). */
import type { LifecycleRule } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { chooseTier } from '../../src/retention/tiers.js';
import { parseRetentionPeriod, parseRetentionPolicy, retainUntil } from '../../src/retention/policy.js';
import { canonicalRule, conflictingRules, desiredRules, isCofferRuleFor, objectLockDrift, planLifecycle } from '../../src/retention/lifecycle.js';
import { groupRuns, planPrune, planWalPrune } from '../../src/retention/prune.js';
import { backupIdTime, compactTimestamp, type Tier } from '../../src/catalog/layout.js';

const DEFAULT = parseRetentionPolicy({});

describe('retention policy', () => {
  it('defaults follow the procedure: 14 days, 8 weeks, 12 months (372 days), 90 days', () => {
    expect(DEFAULT.days).toEqual({ daily: 14, weekly: 56, monthly: 372, manual: 90 });
  });

  it('converts units to whole days, rounding up so nothing expires early', () => {
    expect(parseRetentionPeriod('1d', 'x')).toBe(1);
    expect(parseRetentionPeriod('1.5w', 'x')).toBe(11);
    expect(parseRetentionPeriod('0.1d', 'x')).toBe(1);
    expect(parseRetentionPeriod('1mo', 'x')).toBe(31);
    expect(parseRetentionPeriod('2y', 'x')).toBe(732);
    expect(parseRetentionPolicy({ keepDaily: '7d', keepManual: '1y' }).days).toEqual({ daily: 7, weekly: 56, monthly: 372, manual: 366 });
  });

  it('rejects periods without a unit, zero, or unknown units with a usage error naming the flag', () => {
    for (const bad of ['14', '0d', '3m', '-1d', 'd', '1e3d', '200y']) {
      expect(() => parseRetentionPolicy({ keepDaily: bad }), bad).toThrow(UsageError);
    }
    expect(() => parseRetentionPolicy({ keepWeekly: '8' })).toThrow(/--keep-weekly: invalid retention period "8"/);
  });

  it('retains an object until now + its tier', () => {
    const now = new Date('2026-11-26T03:00:00Z');
    expect(retainUntil(DEFAULT, 'weekly', now).toISOString()).toBe('2027-01-21T03:00:00.000Z');
  });
});

describe('lifecycle planning', () => {
  const foreign: LifecycleRule = { ID: 'logs', Status: 'Enabled', Filter: { Prefix: 'logs/' }, Expiration: { Days: 3 } };
  const otherRepo = desiredRules(DEFAULT, 'staging');

  it('on an empty bucket adds one rule per tier, the WAL rule and the cleanup rule', () => {
    const plan = planLifecycle([], DEFAULT, 'prod');
    expect(plan.changes.map((c) => `${c.action} ${c.id}`)).toEqual([
      'add coffer-daily@prod',
      'add coffer-weekly@prod',
      'add coffer-monthly@prod',
      'add coffer-manual@prod',
      'add coffer-wal@prod',
      'add coffer-cleanup@prod',
    ]);
    expect(plan.changed).toBe(true);
  });

  it("keeps foreign rules and another repository's coffer rules exactly; a second run changes nothing", () => {
    const plan = planLifecycle([foreign, ...otherRepo], DEFAULT, 'prod');
    expect(plan.rules.slice(0, 1 + otherRepo.length)).toEqual([foreign, ...otherRepo]);
    expect(plan.foreign).toEqual(['logs', ...otherRepo.map((r) => r.ID)]);
    const again = planLifecycle(plan.rules, DEFAULT, 'prod');
    expect(again.changed).toBe(false);
    expect(again.rules).toEqual(plan.rules);
  });

  it('compares rules by what they do, whatever shape the provider returns them in', () => {
    const written = desiredRules(DEFAULT, 'prod');
    // e.g. a provider that returns the tag filter with Prefix inside And and adds empty fields.
    const readBack = written.map((r) => ({ ...r, Filter: r.Filter?.Prefix !== undefined ? { Prefix: r.Filter.Prefix } : { And: { ...r.Filter!.And, ObjectSizeGreaterThan: undefined } } }));
    expect(planLifecycle(readBack, DEFAULT, 'prod').changed).toBe(false);
  });

  it('updates only what the policy changed, and removes an obsolete coffer rule of this repository', () => {
    const current = [...desiredRules(DEFAULT, 'prod'), { ID: 'coffer-hourly@prod', Status: 'Enabled', Filter: { Prefix: 'prod/' }, Expiration: { Days: 1 } } as LifecycleRule];
    const plan = planLifecycle(current, parseRetentionPolicy({ keepDaily: '7d' }), 'prod');
    expect(plan.changes.filter((c) => c.action !== 'keep').map((c) => `${c.action} ${c.id}`)).toEqual(['update coffer-daily@prod', 'remove coffer-hourly@prod']);
    expect(plan.rules.find((r) => r.ID === 'coffer-daily@prod')?.Expiration?.Days).toBe(7);
  });

  it('recognises only its own rule ids', () => {
    expect(isCofferRuleFor('coffer-daily@prod', 'prod')).toBe(true);
    expect(isCofferRuleFor('coffer-daily@', '')).toBe(true);
    expect(isCofferRuleFor('coffer-daily@prod', 'pro')).toBe(false);
    expect(isCofferRuleFor('coffer-daily@a@prod', 'prod')).toBe(false);
    expect(isCofferRuleFor('mine-daily@prod', 'prod')).toBe(false);
    expect(isCofferRuleFor(undefined, 'prod')).toBe(false);
  });

  it('expires archived WAL by its own tag after the point-in-time window (--keep-wal, default 14 days); without walDays there is no WAL rule', () => {
    expect(DEFAULT.walDays).toBe(14);
    const wal = desiredRules(parseRetentionPolicy({ keepWal: '3w' }), 'prod').find((r) => r.ID === 'coffer-wal@prod')!;
    expect(canonicalRule(wal)).toMatchObject({ prefix: 'prod/', tags: ['coffer-tier=wal'], expirationDays: 21 });
    expect(desiredRules({ days: DEFAULT.days }, 'prod').map((r) => r.ID)).not.toContain('coffer-wal@prod');
    const plan = planLifecycle(desiredRules(DEFAULT, 'prod'), parseRetentionPolicy({ keepWal: '7d' }), 'prod');
    expect(plan.changes.filter((c) => c.action !== 'keep').map((c) => `${c.action} ${c.id}`)).toEqual(['update coffer-wal@prod']);
  });

  it('uses a tag-only filter at the bucket root', () => {
    expect(canonicalRule(desiredRules(DEFAULT, '')[0]!)).toMatchObject({ prefix: '', tags: ['coffer-tier=daily'], expirationDays: 14 });
  });

  it('flags foreign rules that would expire the repository early', () => {
    const early: LifecycleRule = { ID: 'wipe', Status: 'Enabled', Filter: { Prefix: '' }, Expiration: { Days: 2 } };
    expect(conflictingRules([foreign, early], DEFAULT, 'prod')).toEqual([expect.stringContaining('wipe')]);
  });

  it('compares each foreign rule with the retention of every tier it can hit (prefix, tag, And, no filter), not just the shortest', () => {
    const rule = (id: string, filter: LifecycleRule['Filter'] | undefined, days: number, status: 'Enabled' | 'Disabled' = 'Enabled'): LifecycleRule => ({ ID: id, Status: status, ...(filter ? { Filter: filter } : {}), Expiration: { Days: days } });
    const tag = (v: string) => ({ Key: 'coffer-tier', Value: v });
    const hits = (r: LifecycleRule, prefix = 'prod') => {
      const out = conflictingRules([r], DEFAULT, prefix);
      return out.length === 0 ? [] : [...out[0]!.matchAll(/(daily|weekly|monthly|manual) backups|archived WAL/g)].map((m) => m[1] ?? 'wal');
    };
    // Tag only, per tier: drift exactly when the rule is shorter than that tier (daily 14, weekly 56, monthly 372, manual 90).
    for (const [tier, keep] of Object.entries(DEFAULT.days)) {
      expect(hits(rule(`t-${tier}`, { Tag: tag(tier) }, keep - 1)), tier).toEqual([tier]);
      expect(hits(rule(`t-${tier}`, { Tag: tag(tier) }, keep)), tier).toEqual([]);
    }
    expect(hits(rule('t-wal', { Tag: tag('wal') }, 13))).toEqual(['wal']);
    // Prefix AND tag.
    expect(hits(rule('and', { And: { Prefix: 'prod/', Tags: [tag('monthly')] } }, 30))).toEqual(['monthly']);
    expect(hits(rule('and-other-tag', { And: { Prefix: 'prod/', Tags: [tag('monthly'), { Key: 'team', Value: 'x' }] } }, 30))).toEqual([]);
    expect(hits(rule('foreign-tag', { Tag: { Key: 'team', Value: 'x' } }, 1))).toEqual([]);
    // Prefix into a tier directory of one database (or of a cluster), or of a database only.
    expect(hits(rule('pfx', { Prefix: 'prod/app/monthly/' }, 100))).toEqual(['monthly']);
    expect(hits(rule('pfx-part', { Prefix: 'prod/app/m' }, 80))).toEqual(['monthly', 'manual']);
    expect(hits(rule('pfx-db', { Prefix: 'prod/other/' }, 60))).toEqual(['monthly', 'manual']);
    expect(hits(rule('pfx-db-daily', { Prefix: 'prod/other/daily/' }, 30))).toEqual([]);
    expect(hits(rule('pfx-drills', { Prefix: 'prod/app/drills/' }, 1))).toEqual([]);
    expect(hits(rule('pfx-cluster-wal', { Prefix: 'prod/cluster=main/wal/' }, 3))).toEqual(['wal']);
    expect(hits(rule('pfx-cluster', { Prefix: 'prod/cluster=main/' }, 20))).toEqual(['weekly', 'monthly', 'manual']);
    expect(hits(rule('pfx-db-wal', { Prefix: 'prod/app/wal/' }, 1))).toEqual([]);
    // Prefix outside the repository (a sibling with a common start, another repository): no drift.
    expect(hits(rule('outside', { Prefix: 'prodx/' }, 1))).toEqual([]);
    expect(hits(rule('outside2', { Prefix: 'staging/prod/' }, 1))).toEqual([]);
    // A prefix covering the repository, an empty filter, no filter at all, a legacy top-level Prefix.
    expect(hits(rule('cover', { Prefix: 'pr' }, 20))).toEqual(['weekly', 'monthly', 'manual']);
    expect(hits(rule('empty', {}, 20))).toEqual(['weekly', 'monthly', 'manual']);
    expect(hits(rule('nofilter', undefined, 10))).toEqual(['daily', 'weekly', 'monthly', 'manual', 'wal']);
    expect(hits({ ID: 'legacy', Status: 'Enabled', Prefix: 'prod/', Expiration: { Days: 10 } })).toEqual(['daily', 'weekly', 'monthly', 'manual', 'wal']);
    // Size filters do not narrow it (a manifest or a dump of any size lost is a backup lost).
    expect(hits(rule('size', { And: { Prefix: 'prod/', ObjectSizeGreaterThan: 1_000_000 } }, 20))).toEqual(['weekly', 'monthly', 'manual']);
    expect(hits(rule('size-tag', { And: { ObjectSizeLessThan: 4096, Tags: [tag('weekly')] } }, 20))).toEqual(['weekly']);
    // Disabled rules, and rules that expire nothing current: no drift.
    expect(hits(rule('off', { Tag: tag('monthly') }, 1, 'Disabled'))).toEqual([]);
    expect(conflictingRules([{ ID: 'nc', Status: 'Enabled', Filter: { Prefix: '' }, NoncurrentVersionExpiration: { NoncurrentDays: 1 } }], DEFAULT, 'prod')).toEqual([]);
    // A fixed expiry date expires everything it matches.
    expect(hits({ ID: 'date', Status: 'Enabled', Filter: { Tag: tag('manual') }, Expiration: { Date: new Date('2027-01-01T00:00:00Z') } })).toEqual(['manual']);
    // At the bucket root every key is the repository's; the line names the rule.
    expect(hits(rule('root', { Prefix: 'app/monthly/' }, 30), '')).toEqual(['monthly']);
    expect(conflictingRules([rule('other-tag', { Tag: tag('monthly') }, 30)], DEFAULT, 'prod')).toEqual([expect.stringMatching(/^lifecycle rule other-tag .*monthly backups after 30 days \(policy: 372\)/)]);
    // Without walDays (commands without --keep-wal) WAL is not compared.
    expect(conflictingRules([rule('w', { Tag: tag('wal') }, 1)], { days: DEFAULT.days }, 'prod')).toEqual([]);
  });

  it('reports object-lock drift', () => {
    expect(objectLockDrift({ enabled: false }, DEFAULT, 'GOVERNANCE')[0]).toMatch(/not enabled/);
    expect(objectLockDrift({ enabled: true, defaultMode: 'GOVERNANCE', defaultDays: 14 }, DEFAULT, 'GOVERNANCE')).toEqual([]);
    expect(objectLockDrift({ enabled: true, defaultMode: 'GOVERNANCE', defaultDays: 14 }, DEFAULT, 'COMPLIANCE')).toHaveLength(1);
  });
});

describe('tier promotion (by listing)', () => {
  const id = (iso: string): string => `${compactTimestamp(new Date(iso))}-0000abcd`;
  it('first of a month is monthly, first of a week weekly, the next daily', () => {
    // 2026-11-02 is a Monday.
    expect(chooseTier([], new Date('2026-11-02T01:00:00Z'))).toBe('monthly');
    const existing: Array<{ id: string; tier: Tier }> = [{ id: id('2026-11-02T01:00:00Z'), tier: 'monthly' }];
    expect(chooseTier(existing, new Date('2026-11-03T01:00:00Z'))).toBe('daily'); // same ISO week
    expect(chooseTier(existing, new Date('2026-11-09T01:00:00Z'))).toBe('weekly'); // next Monday
    existing.push({ id: id('2026-11-09T01:00:00Z'), tier: 'weekly' });
    expect(chooseTier(existing, new Date('2026-11-10T01:00:00Z'))).toBe('daily');
    expect(chooseTier(existing, new Date('2026-12-01T01:00:00Z'))).toBe('monthly'); // a Tuesday, new month
  });

  it('a failed first day does not lose the week: the next successful backup is promoted', () => {
    const existing: Array<{ id: string; tier: Tier }> = [
      { id: id('2026-11-02T01:00:00Z'), tier: 'monthly' },
      { id: id('2026-11-08T01:00:00Z'), tier: 'daily' }, // Sunday of the same week
    ];
    // Monday's backup failed (nothing written); Tuesday's becomes the weekly.
    expect(chooseTier(existing, new Date('2026-11-10T01:00:00Z'))).toBe('weekly');
    // Manual backups do not count as weekly ones.
    expect(chooseTier([...existing, { id: id('2026-11-09T05:00:00Z'), tier: 'manual' }], new Date('2026-11-10T01:00:00Z'))).toBe('weekly');
  });
});

describe('prune planning', () => {
  const now = new Date('2026-11-26T12:00:00Z');
  const daysAgo = (n: number): string => `${compactTimestamp(new Date(now.getTime() - n * 86_400_000))}-${(1000 + n).toString(16).padStart(8, '0')}`;
  const run = (db: string, tier: Tier, id: string, complete = true): string[] => [
    `${db}/${tier}/${id}.dump.zst.age`,
    ...(complete ? [`${db}/${tier}/${id}.manifest.json`] : []),
  ];

  it('takes only the exact files coffer writes into a run, logical and physical; anything else beside them is never planned', () => {
    const old = daysAgo(40);
    const ours = [
      ...['.dump.zst.age', '.dump.age', '.sql.zst.age', '.sql.age', '.globals.sql.age', '.index.json.age', '.manifest.json', `.manifest.json.${'0f'.repeat(32)}.sig`].map((x) => `vault/daily/${old}${x}`),
      ...['.base.tar.zst.age', '.volume.tar.zst.age', '.attach-0.age', '.attach-12.age', '.manifest.json', `.manifest.json.${'0f'.repeat(32)}.sig`].map((x) => `cluster=main/daily/${old}${x}`),
    ];
    const foreign = [
      ...['.dump.zst.age.bak', '.txt', '.manifest.json.bak', '.manifest.json.sig', `.manifest.json.${'0F'.repeat(32)}.sig`, '.dump.zst', '.age', '.globals.sql', '.dump.zst.age~'].map((x) => `vault/daily/${old}${x}`),
      `vault/daily/20200101T000000Z-deadbeef.notes`,
      ...['.base.tar.zst.age.old', '.attach-x.age', '.attach-.age', `.manifest.json.${'0F'.repeat(32)}.sig`, '.dump.zst.age'].map((x) => `cluster=main/daily/${old}${x}`),
    ];
    const candidates = groupRuns([...ours, ...foreign], () => true);
    expect(candidates.flatMap((c) => c.keys).sort()).toEqual([...ours].sort());
    expect(planPrune(candidates, DEFAULT, 1, now).decisions.map((d) => d.id)).toEqual([old, old]);
  });

  it('deletes expired backups whole, manifest first; keeps what is within retention', () => {
    const keys = [...run('vault', 'daily', daysAgo(20)), ...run('vault', 'daily', daysAgo(1)), ...run('vault', 'monthly', daysAgo(20)), ...run('vault', 'daily', daysAgo(2)), ...run('vault', 'daily', daysAgo(3))];
    const plan = planPrune(groupRuns(keys, () => true), DEFAULT, 3, now);
    expect(plan.deleteKeys).toEqual([`vault/daily/${daysAgo(20)}.manifest.json`, `vault/daily/${daysAgo(20)}.dump.zst.age`]);
  });

  it('keeps the newest minKeep good backups per database even when all are older than the policy', () => {
    const keys = [20, 30, 40, 50, 60].flatMap((n) => run('vault', 'daily', daysAgo(n))).concat(run('other', 'daily', daysAgo(100)));
    const plan = planPrune(groupRuns(keys, () => true), DEFAULT, 3, now);
    const kept = plan.decisions.filter((d) => d.action === 'keep').map((d) => `${d.database} ${d.id}`);
    expect(kept).toEqual(['other ' + daysAgo(100), `vault ${daysAgo(20)}`, `vault ${daysAgo(30)}`, `vault ${daysAgo(40)}`]);
    expect(plan.deleteKeys.filter((k) => k.endsWith('.manifest.json'))).toEqual([`vault/daily/${daysAgo(50)}.manifest.json`, `vault/daily/${daysAgo(60)}.manifest.json`]);
  });

  it('does not count incomplete or unreadable backups toward minKeep', () => {
    const bad = daysAgo(30);
    const keys = [...run('vault', 'daily', daysAgo(20), false), ...run('vault', 'daily', bad), ...run('vault', 'daily', daysAgo(40))];
    const plan = planPrune(groupRuns(keys, (k) => !k.includes(bad)), DEFAULT, 1, now);
    expect(plan.decisions.map((d) => `${d.id} ${d.action}`)).toEqual([`${daysAgo(20)} delete`, `${bad} delete`, `${daysAgo(40)} keep`]);
  });

  describe('min-keep counts full backups apart from schema-only and data-only ones', () => {
    type Kind = 'custom' | 'schema-only' | 'data-only';
    /** A run of `kind` (a custom archive or plain SQL, as backup writes them), and its manifest's kind. */
    const logical = (db: string, tier: Tier, kind: Kind, n: number): { keys: string[]; kind: Kind } => {
      const id = daysAgo(n);
      const dump = kind === 'custom' ? 'dump.zst' : 'sql.zst';
      return { keys: [`${db}/${tier}/${id}.${dump}.age`, `${db}/${tier}/${id}.manifest.json`], kind };
    };
    const plan = (runs: Array<{ keys: string[]; kind: Kind }>, minKeep: number) => {
      const kinds = new Map(runs.map((r) => [r.keys[1]!, r.kind]));
      const p = planPrune(
        groupRuns(runs.flatMap((r) => r.keys), () => true, (k) => kinds.get(k)),
        DEFAULT,
        minKeep,
        now,
      );
      return p.decisions.map((d) => `${d.database} ${kinds.get(d.keys[0]!)} ${ageOf(d.id)} ${d.action}`);
    };
    /** A backup's age in whole days (from the time in its id). */
    const ageOf = (id: string): number => Math.round((now.getTime() - backupIdTime(id).getTime()) / 86_400_000);

    it('one old full backup and recent schema-only ones: the full one stays (the only restorable backup)', () => {
      const runs = [logical('vault', 'daily', 'custom', 32), ...[1, 2, 3].map((n) => logical('vault', 'daily', 'schema-only', n))];
      for (const minKeep of [1, 3]) {
        expect(plan(runs, minKeep), `min-keep ${minKeep}`).toEqual(['vault schema-only 1 keep', 'vault schema-only 2 keep', 'vault schema-only 3 keep', 'vault custom 32 keep']);
      }
      const p = planPrune(groupRuns(runs.flatMap((r) => r.keys), () => true, (k) => (k.includes(daysAgo(32)) ? 'custom' : 'schema-only')), DEFAULT, 3, now);
      expect(p.deleteKeys).toEqual([]);
      expect(p.decisions.find((d) => d.kind === 'custom')?.reason).toBe('one of the newest 3 good full backups (min-keep)');
    });

    it('several old full backups among recent schema-only and data-only ones: the newest min-keep full ones stay', () => {
      const runs = [
        ...[40, 50, 60, 70].map((n) => logical('vault', 'daily', 'custom', n)),
        ...[1, 2, 3].map((n) => logical('vault', 'daily', 'schema-only', n)),
        ...[1, 2, 3].map((n) => logical('vault', 'daily', 'data-only', n)),
      ];
      const decided = plan(runs, 2);
      expect(decided.filter((d) => d.includes(' custom '))).toEqual(['vault custom 40 keep', 'vault custom 50 keep', 'vault custom 60 delete', 'vault custom 70 delete']);
      expect(decided.filter((d) => !d.includes(' custom ')).every((d) => d.endsWith(' keep'))).toBe(true);
      // Another database's backups count for that database only.
      expect(plan([...runs, logical('other', 'weekly', 'custom', 100)], 2).filter((d) => d.startsWith('other '))).toEqual(['other custom 100 keep']);
    });

    it('old data-only and schema-only backups keep their own newest min-keep, apart from the full ones', () => {
      const runs = [
        ...[1, 2].map((n) => logical('vault', 'daily', 'custom', n)),
        ...[30, 40].map((n) => logical('vault', 'daily', 'data-only', n)),
        ...[35, 45].map((n) => logical('vault', 'weekly', 'schema-only', n)),
      ];
      const decided = plan(runs, 1);
      expect(decided.sort()).toEqual(
        ['vault custom 1 keep', 'vault custom 2 keep', 'vault data-only 30 keep', 'vault data-only 40 delete', 'vault schema-only 35 keep', 'vault schema-only 45 keep'].sort(),
      );
      // The weekly schema-only ones are within their tier's 56 days; at 1 day they expire but the newest stays.
      const tight = planPrune(
        groupRuns(runs.flatMap((r) => r.keys), () => true, (k) => runs.find((r) => r.keys[1] === k)?.kind),
        parseRetentionPolicy({ keepDaily: '1d', keepWeekly: '1d' }),
        1,
        now,
      );
      expect(tight.decisions.map((d) => `${d.kind} ${ageOf(d.id)} ${d.action}`).sort()).toEqual(
        ['custom 1 keep', 'custom 2 delete', 'data-only 30 keep', 'data-only 40 delete', 'schema-only 35 keep', 'schema-only 45 delete'].sort(),
      );
    });

    it('a plain-SQL backup whose kind is not known never counts as a full one; a custom archive is full by its key', () => {
      const keys = [...run('vault', 'daily', daysAgo(30)), `vault/daily/${daysAgo(1)}.sql.zst.age`, `vault/daily/${daysAgo(1)}.manifest.json`];
      const p = planPrune(groupRuns(keys, () => true), DEFAULT, 1, now);
      expect(p.decisions.map((d) => `${d.kind ?? '?'} ${ageOf(d.id)} ${d.action}`)).toEqual(['? 1 keep', 'custom 30 keep']);
    });
  });

  it('never considers keys outside the layout', () => {
    const keys = ['notes.txt', 'vault/daily/readme.md', 'vault/yearly/20200101T000000Z-00000000.dump.age', 'x/y/z/20200101T000000Z-00000000.manifest.json'];
    expect(groupRuns(keys, () => true)).toEqual([]);
  });

  it('refuses minKeep below 1', () => {
    expect(() => planPrune([], DEFAULT, 0, now)).toThrow(RangeError);
  });

  it('physical backups: grouped per cluster (apart from a database of the same name), their tier rule and minKeep', () => {
    const phys = (cluster: string, tier: Tier, id: string): string[] => [`cluster=${cluster}/${tier}/${id}.base.tar.zst.age`, `cluster=${cluster}/${tier}/${id}.attach-1.age`, `cluster=${cluster}/${tier}/${id}.manifest.json`];
    const keys = [...[20, 30, 40].flatMap((n) => phys('main', 'daily', daysAgo(n))), ...phys('main', 'monthly', daysAgo(20)), ...run('main', 'daily', daysAgo(50))];
    const plan = planPrune(groupRuns(keys, () => true), DEFAULT, 1, now);
    const decided = plan.decisions.map((d) => `${d.cluster ?? '-'} ${d.database || '-'} ${d.tier} ${d.id} ${d.action}`);
    expect(decided.sort()).toEqual(
      [`- main daily ${daysAgo(50)} keep`, `main - daily ${daysAgo(20)} keep`, `main - monthly ${daysAgo(20)} keep`, `main - daily ${daysAgo(30)} delete`, `main - daily ${daysAgo(40)} delete`].sort(),
    );
    // Each backup whole, manifest first (it disappears from list at once), then its other objects.
    const whole = (id: string) => [`cluster=main/daily/${id}.manifest.json`, `cluster=main/daily/${id}.attach-1.age`, `cluster=main/daily/${id}.base.tar.zst.age`];
    expect(plan.deleteKeys).toEqual([...whole(daysAgo(30)), ...whole(daysAgo(40))]);
  });
});

describe('planWalPrune', () => {
  const now = new Date('2026-11-26T12:00:00Z');
  const at = (days: number) => new Date(now.getTime() - days * 86_400_000);
  const key = (cluster: string, file: string) => `cluster=${cluster}/wal/${file}.${'ab'.repeat(32)}.zst.age`;
  it('deletes WAL older than the window that no kept backup needs: before the oldest kept base backup start, stored before the oldest kept volume archive; history files and clusters without a readable kept backup stay whole', () => {
    const objects = [
      { key: key('main', '000000010000000000000001'), lastModified: at(40) }, // old, before start: goes
      { key: key('main', '000000010000000000000002.00000028.backup'), lastModified: at(40) }, // old, before start: goes
      { key: key('main', '000000010000000000000003'), lastModified: at(40) }, // old, but the kept backup starts here: stays
      { key: key('main', '000000010000000000000004'), lastModified: at(40) }, // old, after start: stays
      { key: key('main', '000000010000000000000002'), lastModified: at(3) }, // before start, but inside the window: stays
      { key: key('main', '00000002.history'), lastModified: at(400) }, // history: stays
      { key: key('main', '000000020000000000000001'), lastModified: at(40) }, // a later timeline sorts after the start: stays
      { key: key('cold', '000000010000000000000007'), lastModified: at(40) }, // before the volume archive: goes
      { key: key('cold', '000000010000000000000008'), lastModified: at(20) }, // after it (replayed after it): stays
      { key: key('other', '000000010000000000000009'), lastModified: at(400) }, // no kept backup known: stays
      { key: 'cluster=main/wal/notes.txt', lastModified: at(400) }, // not coffer's: never
    ];
    const needs = new Map([
      ['main', { fromSegment: '000000010000000000000003' }],
      ['cold', { storedSince: at(30) }],
    ]);
    const plan = planWalPrune(objects, needs, 14, now, new Map([['other', 'a manifest could not be read']]));
    expect(plan.deleteKeys).toEqual([key('main', '000000010000000000000001'), key('main', '000000010000000000000002.00000028.backup'), key('cold', '000000010000000000000007')]);
    expect(plan.clusters).toEqual([
      { cluster: 'cold', keepFrom: null, keepSince: at(30).toISOString(), deleted: 1, kept: 1 },
      { cluster: 'main', keepFrom: '000000010000000000000003', keepSince: null, deleted: 2, kept: 5 },
      { cluster: 'other', keepFrom: null, keepSince: null, deleted: 0, kept: 1, reason: 'a manifest could not be read' },
    ]);
  });
});
