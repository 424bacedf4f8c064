import { StaleError, UsageError } from '../../errors.js';
import { requireRepository, resolveS3Settings } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import { openBucketAdmin } from '../../store/open.js';
import type { BucketAdmin } from '../../store/bucket-admin.js';
import type { ObjectLockMode, RetentionPolicy } from '../../retention/policy.js';
import { conflictingRules, objectLockDrift, planLifecycle } from '../../retention/lifecycle.js';
import type { CliContext } from '../context.js';
import { retentionPolicy } from '../option-groups.js';
import type { options } from '../commands/retention.js';

/** The outcome of `coffer retention check`. */
export interface RetentionCheckResult {
  bucket: string;
  prefix: string;
  /** One line per difference; empty when the bucket matches the policy. */
  drift: string[];
  objectLock: { enabled: boolean; defaultMode?: string; defaultDays?: number };
}

/**
 * How the bucket's lifecycle rules and object-lock configuration differ from the policy (one
 * line per difference; none when they match). Needs the bucket configuration's read rights
 * (the admin's): `retention check`, and `report` when its credentials have them.
 */
export async function retentionDrift(admin: BucketAdmin, policy: RetentionPolicy, mode: ObjectLockMode | undefined, signal: AbortSignal): Promise<{ drift: string[]; objectLock: RetentionCheckResult['objectLock']; foreign: Set<string> }> {
  const prefix = admin.prefix;
  const rules = await admin.lifecycleRules(signal);
  const plan = planLifecycle(rules, policy, prefix);
  const drift: string[] = [];
  for (const c of plan.changes) {
    if (c.action === 'add') drift.push(`lifecycle rule ${c.id} is missing (wanted: ${c.description})`);
    if (c.action === 'update') drift.push(`lifecycle rule ${c.id} differs (wanted: ${c.description})`);
    if (c.action === 'remove') drift.push(`lifecycle rule ${c.id} is not part of the policy (${c.description})`);
  }
  const foreign = new Set(conflictingRules(rules, policy, prefix));
  drift.push(...foreign);
  const objectLock = await admin.objectLock(signal);
  if (mode) drift.push(...objectLockDrift(objectLock, policy, mode).map((d) => `object lock: ${d}`));
  return { drift, objectLock, foreign };
}

/**
 * `coffer retention check --from s3://bucket/prefix`: reads the bucket's lifecycle and
 * object-lock configuration and compares them with the policy (keep flags, and
 * `--object-lock-mode` when backups are to be locked). Drift is printed one line each and
 * exits 7, so monitoring can alert on it.
 */
export async function runRetentionCheckCommand(flags: Values<typeof options>, ctx: CliContext): Promise<RetentionCheckResult> {
  const repo = requireRepository(flags.from);
  if (repo.kind !== 's3') {
    throw new UsageError('coffer retention check reads S3 bucket configuration; a local repository has no lifecycle', { hint: 'use `coffer prune --dry-run` on local repositories' });
  }
  const policy = retentionPolicy(flags);
  const mode = flags.objectLockMode;
  const admin = await openBucketAdmin(repo, resolveS3Settings(flags, ctx.env));
  const { bucket, prefix } = admin;
  try {
    if (!(await admin.exists(ctx.signal))) {
      throw new UsageError(`bucket s3://${bucket} does not exist`, { hint: 'create it with `coffer init --create-bucket`' });
    }
    const { drift, objectLock: lock, foreign } = await retentionDrift(admin, policy, mode, ctx.signal);
    const result: RetentionCheckResult = { bucket, prefix, drift, objectLock: lock };
    if (flags.json) ctx.stdout(`${JSON.stringify(result, null, 2)}\n`);
    else {
      for (const d of drift) ctx.stdout(`drift: ${d}\n`);
      if (drift.length === 0) ctx.stdout(`ok: s3://${bucket}${prefix ? `/${prefix}` : ''} matches the retention policy\n`);
    }
    if (drift.length > 0) {
      throw new StaleError(`retention drift on s3://${bucket}${prefix ? `/${prefix}` : ''}: ${drift.length} difference${drift.length === 1 ? '' : 's'} (${drift[0]})`, {
        hint: drift.some((d) => foreign.has(d))
          ? 'remove or narrow the other lifecycle rule named (coffer init never changes rules that are not its own); run `coffer init` with the same policy for the rest'
          : 'run `coffer init` with the same policy to fix it',
      });
    }
    return result;
  } finally {
    admin.close();
  }
}
