import { UsageError } from '../../errors.js';
import { requireRepository } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import { decodeManifest } from '../../catalog/manifest.js';
import { FsStore } from '../../store/fs.js';
import type { ObjectStore } from '../../store/object-store.js';
import { groupRuns, planPrune, type PrunePlan } from '../../retention/prune.js';
import type { CliContext } from '../context.js';
import { retentionPolicy } from '../option-groups.js';
import type { options } from '../commands/prune.js';

/**
 * A temporary untouched for this long belongs to no live run (a live run writes its
 * temporary continuously; even a pg_dump waiting a whole night for a lock is far shorter).
 */
export const STALE_TEMP_AGE_MS = 24 * 3600 * 1000;

/**
 * `coffer prune --from DIR`: applies the retention policy to a local repository (S3 buckets
 * expire by their lifecycle rules, set by `coffer init`). Only keys in coffer's layout are
 * considered; the newest `--min-keep` good backups per database are always kept. Prints one
 * line per deleted key (`delete <key>`; with `--dry-run` the same lines, nothing deleted).
 * Temporaries left by killed runs (`.coffer-tmp-*`, untouched for a day) are removed too and
 * reported (`delete-temporary <path>`): no other command would ever see them.
 */
export async function runPruneCommand(flags: Values<typeof options>, ctx: CliContext): Promise<PrunePlan> {
  const repo = requireRepository(flags.from);
  if (repo.kind !== 'file') {
    throw new UsageError('coffer prune works on local repositories; S3 buckets expire backups with lifecycle rules', {
      hint: 'run `coffer init --to s3://…` once to set them, and `coffer retention check` to monitor them',
    });
  }
  const policy = retentionPolicy(flags);
  const minKeep = flags.minKeep;
  const fsStore = new FsStore(repo.root);
  const store: ObjectStore = fsStore;
  try {
    const keys: string[] = [];
    for await (const o of store.list('', { signal: ctx.signal })) keys.push(o.key);
    const present = new Set(keys);
    // A backup is good when its manifest reads, names this run, and its dump is there.
    const good = new Map<string, boolean>();
    for (const k of keys) {
      if (!k.endsWith('.manifest.json')) continue;
      try {
        const m = decodeManifest(await store.getBytes(k, { signal: ctx.signal }), k);
        good.set(k, k.includes(`/${m.id}.`) && present.has(m.dump.key));
      } catch {
        good.set(k, false);
      }
    }
    const plan = planPrune(groupRuns(keys, (k) => good.get(k) === true), policy, minKeep, new Date());
    const dry = flags.dryRun === true;
    for (const d of plan.decisions) {
      ctx.log.info(`${d.action === 'delete' ? (dry ? 'would delete' : 'deleting') : 'keeping'} ${d.database} ${d.tier} ${d.id}: ${d.reason}`, {
        database: d.database,
        tier: d.tier,
        id: d.id,
      });
    }
    const done: string[] = [];
    for (const key of plan.deleteKeys) {
      if (!dry) await store.delete(key);
      done.push(key);
      if (!flags.json) ctx.stdout(`delete ${key}\n`);
    }
    const temporaries = await fsStore.staleTemporaries(STALE_TEMP_AGE_MS);
    for (const t of temporaries) {
      ctx.log.warn(`${dry ? 'would remove' : 'removing'} a temporary left by a run that was killed`, { path: t.path, bytes: t.size, modified: t.modified.toISOString() });
      if (!dry) await fsStore.removeTemporary(t.path);
      if (!flags.json) ctx.stdout(`delete-temporary ${t.path}\n`);
    }
    if (flags.json) ctx.stdout(`${JSON.stringify({ dryRun: dry, deleted: done, temporaries: temporaries.map((t) => t.path), decisions: plan.decisions }, null, 2)}\n`);
    ctx.log.info(dry ? 'prune planned (dry run: nothing deleted)' : 'prune done', {
      backups: plan.decisions.length,
      deleteBackups: plan.decisions.filter((d) => d.action === 'delete').length,
      deleteKeys: plan.deleteKeys.length,
      temporaries: temporaries.length,
    });
    return plan;
  } finally {
    store.close();
  }
}
