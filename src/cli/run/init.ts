import { UsageError } from '../../errors.js';
import { requireRepository, resolveS3Settings } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import { openBucketAdmin } from '../../store/open.js';
import { desiredObjectLock, planLifecycle, type LifecyclePlan } from '../../retention/lifecycle.js';
import type { CliContext } from '../context.js';
import { retentionPolicy } from '../option-groups.js';
import type { options } from '../commands/init.js';

/** What `coffer init` did (or would do, with `--dry-run`). */
export interface InitResult {
  bucket: string;
  prefix: string;
  createdBucket: boolean;
  objectLock: 'unchanged' | 'set' | 'none';
  lifecycle: LifecyclePlan;
  dryRun: boolean;
}

/**
 * `coffer init --to s3://bucket/prefix`: run once by an admin, idempotent. Creates the bucket
 * when asked (with object lock when asked), sets the object-lock default retention, and merges
 * coffer's lifecycle rules into the bucket's configuration, never touching other rules.
 * Prints one line per rule (add / update / remove / keep) and what was changed.
 */
export async function runInitCommand(flags: Values<typeof options>, ctx: CliContext): Promise<InitResult> {
  const repo = requireRepository(flags.to);
  if (repo.kind !== 's3') {
    throw new UsageError('coffer init configures S3 buckets; a local repository has no lifecycle', { hint: 'use `coffer prune` on local repositories' });
  }
  const policy = retentionPolicy(flags);
  const mode = flags.objectLock;
  const s3 = resolveS3Settings(flags, ctx.env);
  const admin = await openBucketAdmin(repo, s3);
  const { bucket, prefix } = admin;
  const dry = flags.dryRun === true;
  const say = (line: string): void => ctx.stdout(`${dry ? '[dry-run] ' : ''}${line}\n`);
  const signal = ctx.signal;
  try {
    let createdBucket = false;
    const exists = await admin.exists(signal);
    if (!exists) {
      if (!flags.createBucket) {
        throw new UsageError(`bucket s3://${bucket} does not exist`, { hint: 'add --create-bucket (and --object-lock governance|compliance to create it with object lock)' });
      }
      say(`create bucket s3://${bucket}${mode ? ` with object lock (${mode.toLowerCase()})` : ''}`);
      if (!dry) await admin.create(mode !== undefined, signal);
      createdBucket = true;
    } else {
      say(`bucket s3://${bucket} exists`);
    }

    let objectLock: InitResult['objectLock'] = 'none';
    if (mode) {
      const want = desiredObjectLock(policy, mode);
      const have = createdBucket && dry ? { enabled: true } : await admin.objectLock(signal);
      if (!have.enabled) {
        throw new UsageError(`bucket s3://${bucket} was created without object lock; it cannot be added to an existing bucket here`, {
          hint: 'create a new bucket with `coffer init --create-bucket --object-lock …`, or run init without --object-lock',
        });
      }
      if (have.defaultMode === want.defaultMode && have.defaultDays === want.defaultDays) {
        say(`keep    object lock default retention: ${want.defaultMode} ${want.defaultDays} days`);
        objectLock = 'unchanged';
      } else {
        say(`set     object lock default retention: ${want.defaultMode} ${want.defaultDays} days (was ${have.defaultMode ?? 'none'}${have.defaultDays !== undefined ? ` ${have.defaultDays} days` : ''})`);
        if (!dry) await admin.putObjectLockDefault(want.defaultMode, want.defaultDays, signal);
        objectLock = 'set';
      }
    }

    const existing = createdBucket && dry ? [] : await admin.lifecycleRules(signal);
    const plan = planLifecycle(existing, policy, prefix);
    for (const c of plan.changes) say(`${c.action.padEnd(7)} lifecycle rule ${c.id}: ${c.description}`);
    for (const id of plan.foreign) say(`other   lifecycle rule ${id}: not coffer's, kept as it is`);
    if (plan.changed && !dry) await admin.putLifecycleRules(plan.rules, signal);
    const changed = createdBucket || objectLock === 'set' || plan.changed;
    say(changed ? (dry ? 'changes planned (run without --dry-run to apply)' : 'changes applied') : 'no changes: the bucket already matches the policy');
    ctx.log.info(dry ? 'init planned' : 'init done', { bucket, prefix, changed, createdBucket, objectLock, rulesChanged: plan.changes.filter((c) => c.action !== 'keep').length });
    return { bucket, prefix, createdBucket, objectLock, lifecycle: plan, dryRun: dry };
  } finally {
    admin.close();
  }
}
