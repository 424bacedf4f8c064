import { IntegrityError, StorageError, UsageError } from '../../errors.js';
import { requireRepository } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import { decodeManifest } from '../../catalog/manifest.js';
import { replacedIds } from '../../catalog/catalog.js';
import { FsStore } from '../../store/fs.js';
import type { ObjectStore } from '../../store/object-store.js';
import { groupRuns, planPrune, planWalPrune, type PruneKind, type PrunePlan, type WalNeeds, type WalPruneObject } from '../../retention/prune.js';
import { parseClusterKey, parseWalKey } from '../../catalog/cluster-layout.js';
import { MANIFEST_SUFFIX, parseKey } from '../../catalog/layout.js';
import { decodePhysicalManifest, type PhysicalManifest } from '../../catalog/physical-manifest.js';
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
 * considered; the newest `--min-keep` good backups per database and kind (full, schema-only,
 * data-only: a partial backup never stands in for a full one) and per cluster are always
 * kept. Archived WAL expires after `--keep-wal`, except what the oldest kept base backup needs. Prints one
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
    // A repository that is not there (a typo, a volume not mounted) is no empty one: exit 4.
    await fsStore.assertPresent();
    const keys: string[] = [];
    const wal: WalPruneObject[] = [];
    for await (const o of store.list('', { signal: ctx.signal })) {
      keys.push(o.key);
      if (parseWalKey(o.key)) wal.push({ key: o.key, lastModified: o.lastModified });
    }
    const present = new Set(keys);
    // A backup is good when its manifest reads, names this run, and its dump (or archive and
    // attachments) is there: for a logical backup, this run's dump of the kind the manifest
    // says (what restore accepts). Its kind decides what it counts among for --min-keep.
    const good = new Map<string, boolean>();
    const kinds = new Map<string, PruneKind>();
    const physical = new Map<string, PhysicalManifest>();
    const unreadable = new Set<string>();
    const replacing: Array<{ manifest: string; database: string; id: string; replaced: string[] }> = [];
    for (const k of keys) {
      if (!k.endsWith(MANIFEST_SUFFIX)) continue;
      try {
        const bytes = await store.getBytes(k, { signal: ctx.signal });
        if (parseClusterKey(k)) {
          const m = decodePhysicalManifest(bytes, k);
          const whole = k.includes(`/${m.id}.`) && [m.archive, ...m.attachments].every((o) => present.has(o.key));
          good.set(k, whole);
          if (whole) physical.set(k, m);
        } else {
          const m = decodeManifest(bytes, k);
          const run = parseKey(k);
          const dump = parseKey(m.dump.key);
          const ownDump = run !== undefined && dump !== undefined && dump.database === run.database && dump.tier === run.tier && dump.id === run.id && (m.kind === 'custom' ? /^\.dump(\.zst)?\.age$/ : /^\.sql(\.zst)?\.age$/).test(dump.rest);
          const named = run !== undefined && m.id === run.id && m.database === run.database && m.tier === run.tier;
          good.set(k, named && ownDump && present.has(m.dump.key));
          if (named) kinds.set(k, m.kind);
          if (named && m.replaces) replacing.push({ manifest: k, database: m.database, id: m.id, replaced: replacedIds(m) });
        }
      } catch (err) {
        // Only a manifest that is not one (or vanished) makes a backup bad; a read that failed
        // for another reason (I/O, a stop) ends the run before anything is deleted.
        if (!(err instanceof IntegrityError || (err instanceof StorageError && err.code === 'NotFound'))) throw err;
        good.set(k, false);
        const c = parseClusterKey(k);
        if (c) unreadable.add(c.cluster);
      }
    }
    // A backup that `coffer rekey` replaced holds the same data as its replacement: not a second
    // one for --min-keep (it still expires by its age, as its replacement does). Only a good
    // replacement stands in for it: when the replacement is damaged (dump missing, manifest
    // unreadable) the replaced backup is still the good one and counts (and stays by --min-keep).
    const replacedBy = new Map<string, string>();
    for (const r of replacing) {
      if (good.get(r.manifest) !== true) continue;
      for (const id of r.replaced) if (id !== r.id) replacedBy.set(`${r.database}\0${id}`, r.id);
    }
    const replacementOf = (k: string): string | undefined => {
      const run = parseClusterKey(k) ? undefined : parseKey(k);
      return run ? replacedBy.get(`${run.database}\0${run.id}`) : undefined;
    };
    const now = new Date();
    const plan = planPrune(groupRuns(keys, (k) => good.get(k) === true, (k) => kinds.get(k), replacementOf), policy, minKeep, now);
    // Archived WAL: what the backups that stay need, and the --keep-wal window. A cluster with a
    // manifest that did not read keeps all of its WAL (what that backup needs is unknown).
    const needs = new Map<string, WalNeeds>();
    const whole = new Map<string, string>();
    for (const d of plan.decisions) {
      const m = d.action === 'keep' && d.cluster !== undefined ? physical.get(d.keys[0]!) : undefined;
      if (!m) continue;
      const need = needs.get(m.cluster) ?? {};
      const start = m.wal?.startSegment;
      if (start !== undefined && (need.fromSegment === undefined || start < need.fromSegment)) need.fromSegment = start;
      const since = new Date(m.startedAt);
      if (m.kind === 'volume' && (need.storedSince === undefined || since < need.storedSince)) need.storedSince = since;
      needs.set(m.cluster, need);
    }
    for (const c of unreadable) {
      needs.delete(c);
      whole.set(c, 'a manifest of this cluster could not be read: what its backup needs is unknown');
    }
    const walPlan = planWalPrune(wal, needs, flags.keepWal, now, whole);
    const dry = flags.dryRun === true;
    for (const d of plan.decisions) {
      ctx.log.info(`${d.action === 'delete' ? (dry ? 'would delete' : 'deleting') : 'keeping'} ${d.cluster !== undefined ? `cluster ${d.cluster}` : d.database} ${d.tier} ${d.id}: ${d.reason}`, {
        ...(d.cluster !== undefined ? { cluster: d.cluster } : { database: d.database }),
        tier: d.tier,
        id: d.id,
      });
    }
    for (const c of walPlan.clusters) {
      if (c.reason !== undefined) {
        ctx.log.warn(`archived WAL of cluster ${c.cluster}: keeping all ${c.kept} files: ${c.reason}`, { cluster: c.cluster });
        continue;
      }
      const kept = [c.keepFrom ? `from ${c.keepFrom} (the oldest kept base backup's start)` : '', c.keepSince ? `stored since ${c.keepSince} (the oldest kept volume archive)` : '', `the last ${flags.keepWal} days`].filter(Boolean).join(', ');
      ctx.log.info(`archived WAL of cluster ${c.cluster}: ${dry ? 'would delete' : 'deleting'} ${c.deleted}, keeping ${c.kept} (${kept})`, { cluster: c.cluster });
    }
    const done: string[] = [];
    for (const key of [...plan.deleteKeys, ...walPlan.deleteKeys]) {
      ctx.signal.throwIfAborted();
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
    if (flags.json) ctx.stdout(`${JSON.stringify({ dryRun: dry, deleted: done, temporaries: temporaries.map((t) => t.path), decisions: plan.decisions, wal: walPlan.clusters }, null, 2)}\n`);
    ctx.log.info(dry ? 'prune planned (dry run: nothing deleted)' : 'prune done', {
      backups: plan.decisions.length,
      deleteBackups: plan.decisions.filter((d) => d.action === 'delete').length,
      deleteKeys: plan.deleteKeys.length,
      deleteWal: walPlan.deleteKeys.length,
      temporaries: temporaries.length,
    });
    return plan;
  } finally {
    store.close();
  }
}
