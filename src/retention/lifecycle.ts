import type { LifecycleRule } from '@aws-sdk/client-s3';
import { TIERS, type Tier } from '../catalog/layout.js';
import type { ObjectLockMode, RetentionPolicy } from './policy.js';

/**
 * Pure planning of a bucket's lifecycle rules for one coffer repository (bucket + prefix).
 *
 * Design: the tier is a key segment (`<prefix>/<db>/<tier>/…`), but the database segment comes
 * first, so one prefix rule per tier cannot cover every database. Backups are therefore also
 * tagged `coffer-tier=<tier>` when written, and each tier's rule filters on
 * *prefix `<prefix>/` AND tag `coffer-tier=<tier>`* (AWS S3, MinIO and Ceph RGW support tag
 * filters). One rule per tier then covers every database, including ones added later.
 * Archived WAL is tagged `coffer-tier=wal` by wal-push and expires by its own rule (`wal`, the
 * point-in-time window, `--keep-wal`). A last, prefix-only rule (`cleanup`) aborts incomplete multipart uploads after 1 day and, on
 * versioned / object-locked buckets, removes noncurrent versions 7 days after they became
 * noncurrent (a grace period for mistakes) and expired delete markers.
 *
 * coffer's rules are recognised by their ID: `coffer-<name>@<prefix>` (`coffer-daily@prod`).
 * Every other rule — another tool's, or another coffer repository's in the same bucket — is kept
 * untouched by {@link planLifecycle}.
 */

/** Tag key set on every object coffer writes; the value is the tier. */
export const TIER_TAG = 'coffer-tier';
/** Days after which an incomplete multipart upload is aborted. */
const ABORT_INCOMPLETE_DAYS = 1;
/** Days a noncurrent version is kept before the cleanup rule removes it. */
const NONCURRENT_DAYS = 7;

const CLEANUP = 'cleanup';
/** Archived WAL (wal-push tags it `coffer-tier=wal`): the point-in-time window. */
const WAL = 'wal';

/** The rule ID coffer uses for `name` (`daily`…, `wal`, `cleanup`) in the repository at `prefix`. */
function ruleId(name: Tier | typeof WAL | typeof CLEANUP, prefix: string): string {
  return `coffer-${name}@${normalizePrefix(prefix)}`;
}

/** Whether a rule ID is one of coffer's for the repository at `prefix`. */
export function isCofferRuleFor(id: string | undefined, prefix: string): boolean {
  if (id === undefined) return false;
  const p = normalizePrefix(prefix);
  return id.startsWith('coffer-') && id.endsWith(`@${p}`) && !id.slice(7, id.length - p.length - 1).includes('@');
}

/** `/a/b/` → `a/b`. */
function normalizePrefix(prefix: string): string {
  return prefix.replace(/^\/+|\/+$/g, '');
}

/** The S3 key prefix of the repository's objects: `prod/` (or `''` for the bucket root). */
function keyPrefix(prefix: string): string {
  const p = normalizePrefix(prefix);
  return p === '' ? '' : `${p}/`;
}

/** The rules coffer wants for a repository, in a fixed order (tiers, wal when the policy has it, then cleanup). */
export function desiredRules(policy: RetentionPolicy, prefix: string): LifecycleRule[] {
  const kp = keyPrefix(prefix);
  const tagged = (name: Tier | typeof WAL, days: number): LifecycleRule => ({
    ID: ruleId(name, prefix),
    Status: 'Enabled',
    Filter: kp === '' ? { Tag: { Key: TIER_TAG, Value: name } } : { And: { Prefix: kp, Tags: [{ Key: TIER_TAG, Value: name }] } },
    Expiration: { Days: days },
  });
  const rules: LifecycleRule[] = TIERS.map((tier) => tagged(tier, policy.days[tier]));
  if (policy.walDays !== undefined) rules.push(tagged(WAL, policy.walDays));
  rules.push({
    ID: ruleId(CLEANUP, prefix),
    Status: 'Enabled',
    Filter: { Prefix: kp },
    AbortIncompleteMultipartUpload: { DaysAfterInitiation: ABORT_INCOMPLETE_DAYS },
    NoncurrentVersionExpiration: { NoncurrentDays: NONCURRENT_DAYS },
    Expiration: { ExpiredObjectDeleteMarker: true },
  });
  return rules;
}

/** What a rule does, reduced to the fields coffer sets: equal canonical forms = same rule. */
export interface CanonicalRule {
  id: string;
  enabled: boolean;
  prefix: string;
  /** `key=value`, sorted. */
  tags: string[];
  expirationDays?: number;
  expiredObjectDeleteMarker?: boolean;
  noncurrentDays?: number;
  abortIncompleteDays?: number;
  /** Anything else set on the rule (transitions, size filters, dates…), as JSON. */
  other?: string;
}

/** Reduces a rule (as written, or as a provider returns it) to its {@link CanonicalRule}. */
export function canonicalRule(rule: LifecycleRule): CanonicalRule {
  const f = rule.Filter;
  const prefix = f?.And?.Prefix ?? f?.Prefix ?? rule.Prefix ?? '';
  const tagList = [...(f?.And?.Tags ?? []), ...(f?.Tag ? [f.Tag] : [])];
  const tags = tagList.map((t) => `${t.Key ?? ''}=${t.Value ?? ''}`).sort();
  const out: CanonicalRule = { id: rule.ID ?? '', enabled: rule.Status === 'Enabled', prefix, tags };
  if (rule.Expiration?.Days !== undefined) out.expirationDays = rule.Expiration.Days;
  if (rule.Expiration?.ExpiredObjectDeleteMarker) out.expiredObjectDeleteMarker = true;
  if (rule.NoncurrentVersionExpiration?.NoncurrentDays !== undefined) out.noncurrentDays = rule.NoncurrentVersionExpiration.NoncurrentDays;
  if (rule.AbortIncompleteMultipartUpload?.DaysAfterInitiation !== undefined) out.abortIncompleteDays = rule.AbortIncompleteMultipartUpload.DaysAfterInitiation;
  const other: Record<string, unknown> = {};
  if (rule.Expiration?.Date !== undefined) other.expirationDate = rule.Expiration.Date;
  if (rule.Transitions?.length) other.transitions = rule.Transitions;
  if (rule.NoncurrentVersionTransitions?.length) other.noncurrentTransitions = rule.NoncurrentVersionTransitions;
  if (rule.NoncurrentVersionExpiration?.NewerNoncurrentVersions !== undefined) other.newerNoncurrent = rule.NoncurrentVersionExpiration.NewerNoncurrentVersions;
  const sizes = { gt: f?.ObjectSizeGreaterThan ?? f?.And?.ObjectSizeGreaterThan, lt: f?.ObjectSizeLessThan ?? f?.And?.ObjectSizeLessThan };
  if (sizes.gt !== undefined || sizes.lt !== undefined) other.sizes = sizes;
  if (Object.keys(other).length > 0) out.other = JSON.stringify(other);
  return out;
}

function sameRule(a: LifecycleRule, b: LifecycleRule): boolean {
  return JSON.stringify(canonicalRule(a)) === JSON.stringify(canonicalRule(b));
}

/** One line of a plan. */
export interface RuleChange {
  action: 'add' | 'update' | 'remove' | 'keep';
  id: string;
  /** Human description of the rule coffer wants (add/update/keep) or had (remove). */
  description: string;
}

export interface LifecyclePlan {
  /** The complete rule set to write: every foreign rule unchanged, then coffer's rules. */
  rules: LifecycleRule[];
  /** coffer's rules and what happens to each. */
  changes: RuleChange[];
  /** Rules of others that are kept as they are (IDs; rules without an ID are shown as `(no id)`). */
  foreign: string[];
  /** Whether anything must be written. */
  changed: boolean;
}

/** A short description of a rule, e.g. `prefix "prod/" tag coffer-tier=daily: expire after 14 days`. */
function describeRule(rule: LifecycleRule): string {
  const c = canonicalRule(rule);
  const what: string[] = [];
  if (c.expirationDays !== undefined) what.push(`expire after ${c.expirationDays} days`);
  if (c.abortIncompleteDays !== undefined) what.push(`abort incomplete uploads after ${c.abortIncompleteDays} day${c.abortIncompleteDays === 1 ? '' : 's'}`);
  if (c.noncurrentDays !== undefined) what.push(`remove noncurrent versions after ${c.noncurrentDays} days`);
  if (c.expiredObjectDeleteMarker) what.push('remove expired delete markers');
  if (c.other) what.push(`other settings ${c.other}`);
  const filter = [`prefix ${JSON.stringify(c.prefix)}`, ...c.tags.map((t) => `tag ${t}`)].join(' ');
  return `${filter}: ${what.join(', ') || 'no action'}${c.enabled ? '' : ' (disabled)'}`;
}

/**
 * Merges coffer's desired rules for `prefix` into the bucket's `existing` rules. Foreign rules
 * are kept exactly as they are, in their order; coffer's rules for this prefix are replaced by
 * the desired ones (an obsolete coffer rule for this prefix is removed). `changed` is false when
 * the existing configuration already equals the plan (a second run writes nothing).
 */
export function planLifecycle(existing: readonly LifecycleRule[], policy: RetentionPolicy, prefix: string): LifecyclePlan {
  const desired = desiredRules(policy, prefix);
  const foreignRules = existing.filter((r) => !isCofferRuleFor(r.ID, prefix));
  const mine = new Map(existing.filter((r) => isCofferRuleFor(r.ID, prefix)).map((r) => [r.ID!, r]));
  const changes: RuleChange[] = [];
  for (const rule of desired) {
    const have = mine.get(rule.ID!);
    const action = have === undefined ? 'add' : sameRule(have, rule) ? 'keep' : 'update';
    changes.push({ action, id: rule.ID!, description: describeRule(rule) });
    mine.delete(rule.ID!);
  }
  for (const [id, rule] of mine) changes.push({ action: 'remove', id, description: describeRule(rule) });
  return {
    rules: [...foreignRules, ...desired],
    changes,
    foreign: foreignRules.map((r) => r.ID ?? '(no id)'),
    changed: changes.some((c) => c.action !== 'keep'),
  };
}

/** What coffer stores under a tier (or `wal`): the key shapes below the repository prefix. */
type Track = Tier | typeof WAL;

/**
 * The tracks (tiers, `wal`) whose objects a key prefix `rest` (below the repository prefix) can
 * match. coffer's keys are `<db>/<tier>/<id>.…` (database segments never contain `=`),
 * `cluster=<name>/<tier>/<id>.…`, and WAL-tagged `cluster=<name>/wal/…` and
 * `cluster=<name>/timeline/…`. Conservative: a prefix that could begin some database's or
 * cluster's segment matches every track that segment has.
 */
function tracksUnder(rest: string): Track[] {
  const all: Track[] = [...TIERS, WAL];
  const slash = rest.indexOf('/');
  if (slash < 0) {
    // Inside the first segment: a database segment or `cluster=<name>`.
    const clusterPossible = CLUSTER_SEGMENT.startsWith(rest) || rest.startsWith(CLUSTER_SEGMENT);
    return clusterPossible ? all : [...TIERS];
  }
  const seg = rest.slice(0, slash);
  const isCluster = seg.startsWith(CLUSTER_SEGMENT);
  if (seg === '' || (!isCluster && seg.includes('='))) return [];
  const after = rest.slice(slash + 1);
  const slash2 = after.indexOf('/');
  const dir = slash2 < 0 ? after : after.slice(0, slash2);
  const dirs: Array<[string, Track]> = [...TIERS.map((t): [string, Track] => [t, t]), ...(isCluster ? ([[WAL, WAL], ['timeline', WAL]] as Array<[string, Track]>) : [])];
  const hit = dirs.filter(([d]) => (slash2 < 0 ? d.startsWith(dir) : d === dir)).map(([, t]) => t);
  return [...new Set(hit)];
}

/** The segment every cluster's keys begin with (see catalog/cluster-layout). */
const CLUSTER_SEGMENT = 'cluster=';

/**
 * The tracks of the repository at key prefix `kp` whose objects a rule with key prefix
 * `rulePrefix` and tag filters `tags` (`key=value`) can match.
 */
export function tracksMatched(rulePrefix: string, tags: readonly string[], kp: string): Track[] {
  let tracks: Track[];
  if (kp.startsWith(rulePrefix)) tracks = [...TIERS, WAL];
  else if (rulePrefix.startsWith(kp)) tracks = tracksUnder(rulePrefix.slice(kp.length));
  else return [];
  for (const t of tags) {
    const eq = t.indexOf('=');
    const key = t.slice(0, eq);
    const value = t.slice(eq + 1);
    // coffer tags its objects with coffer-tier only: any other tag matches none of them.
    if (key !== TIER_TAG) return [];
    tracks = tracks.filter((tr) => tr === value);
  }
  return tracks;
}

/** The days the policy keeps a track; `undefined` when it does not say (WAL without --keep-wal). */
function trackDays(policy: RetentionPolicy, track: Track): number | undefined {
  return track === WAL ? policy.walDays : policy.days[track];
}

/**
 * Foreign enabled rules that could expire objects of the repository earlier than the policy, one
 * line each per tier (or WAL) they hit: for each rule, the tiers whose keys
 * (`<prefix>/<db>/<tier>/…`, `<prefix>/cluster=<name>/<tier>/…`, WAL under `cluster=<name>/wal/`)
 * its prefix can match and whose tag `coffer-tier=<tier>` its tag filters allow (an `And` filter
 * must match all its parts; a rule without a filter matches everything), whose current versions it
 * expires after fewer days than that tier's retention, or on a fixed date. Size filters are not
 * considered narrowing: coffer's objects come in every size, and losing any one loses the backup.
 */
export function conflictingRules(existing: readonly LifecycleRule[], policy: RetentionPolicy, prefix: string): string[] {
  const kp = keyPrefix(prefix);
  const out: string[] = [];
  for (const r of existing) {
    if (isCofferRuleFor(r.ID, prefix)) continue;
    const c = canonicalRule(r);
    const date = r.Expiration?.Date;
    if (!c.enabled || (c.expirationDays === undefined && date === undefined)) continue;
    const hits: string[] = [];
    for (const track of tracksMatched(c.prefix, c.tags, kp)) {
      const keep = trackDays(policy, track);
      if (keep === undefined) continue;
      const what = track === WAL ? 'archived WAL' : `${track} backups`;
      if (date !== undefined) hits.push(`${what} (kept ${keep} days) on ${new Date(date).toISOString().slice(0, 10)}`);
      else if (c.expirationDays! < keep) hits.push(`${what} after ${c.expirationDays} days (policy: ${keep})`);
    }
    if (hits.length > 0) out.push(`lifecycle rule ${r.ID ?? '(no id)'} (${describeRule(r)}) expires the repository's ${hits.join(', ')}: earlier than the policy`);
  }
  return out;
}

/** A bucket's object-lock configuration as coffer sees it. */
export interface ObjectLockState {
  enabled: boolean;
  defaultMode?: ObjectLockMode;
  defaultDays?: number;
}

/**
 * The bucket default retention coffer wants with object lock: the configured mode for the
 * shortest tier's days, so every object is locked at least that long even when a writer forgets
 * (or is made to skip) the per-object retention.
 */
export function desiredObjectLock(policy: RetentionPolicy, mode: ObjectLockMode): Required<ObjectLockState> {
  return { enabled: true, defaultMode: mode, defaultDays: Math.min(...TIERS.map((t) => policy.days[t])) };
}

/** Differences between the object-lock state and what the policy wants (empty = no drift). */
export function objectLockDrift(state: ObjectLockState, policy: RetentionPolicy, mode: ObjectLockMode): string[] {
  const want = desiredObjectLock(policy, mode);
  if (!state.enabled) return ['object lock is not enabled on the bucket (it can only be enabled when the bucket is created: coffer init --create-bucket --object-lock …)'];
  const out: string[] = [];
  if (state.defaultMode !== want.defaultMode) out.push(`default retention mode is ${state.defaultMode ?? 'unset'}, expected ${want.defaultMode}`);
  if (state.defaultDays !== want.defaultDays) out.push(`default retention is ${state.defaultDays ?? 'unset'} days, expected ${want.defaultDays}`);
  return out;
}
