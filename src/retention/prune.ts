import { parseClusterKey, parseSegmentName, parseWalKey } from '../catalog/cluster-layout.js';
import { backupIdTime, MANIFEST_SUFFIX, parseKey, type Tier } from '../catalog/layout.js';
import type { RetentionPolicy } from './policy.js';

/**
 * Pure planning of `coffer prune` for repositories without lifecycle rules (local directories).
 *
 * Only keys in coffer's layout are considered (`<db>/<tier>/<id>.<suffix>`, physical backups
 * `cluster=<name>/<tier>/<id>.<suffix>`, archived WAL `cluster=<name>/wal/…`: {@link planWalPrune});
 * anything else is never touched. The files of one run (same database, tier and id) form one backup. A backup
 * expires when its age (from the start time in its id) is more than its tier's retention. The
 * newest `minKeep` *good* backups (manifest present and readable, dump present) of each database
 * **and kind** are kept whatever their age: full backups (pg_dump custom archives) count only
 * among full backups, schema-only ones among schema-only ones, data-only ones among data-only
 * ones, so a partial backup never stands in for a full one (`restore` never takes one for
 * `latest`, `status` never counts one). Files of a run that never completed (no manifest) expire
 * by the same rule. Pure: `now` is passed in.
 */

/** What a logical backup holds: the manifest's `kind` (`custom` = a full backup). */
export type PruneKind = 'custom' | 'schema-only' | 'data-only';

/** One backup (or the leftovers of an incomplete run) found in the repository. */
export interface PruneCandidate {
  /** The database; `''` for a physical backup (then `cluster` is set). */
  database: string;
  cluster?: string;
  tier: Tier;
  id: string;
  /**
   * A logical backup's kind: from its manifest when the caller read it, else a `.dump…` object
   * says `custom`; unset when unknown (a plain-SQL dump without a readable manifest) and for
   * physical backups (one track per cluster). `minKeep` counts per database and kind.
   */
  kind?: PruneKind;
  /** Every key of this run, manifest first (deleting it first makes the backup disappear at once). */
  keys: string[];
  complete: boolean;
  /** Manifest readable and naming the run, its dump present (regardless of {@link replacedBy}). */
  good: boolean;
  /**
   * The id of a good backup that `coffer rekey` wrote to replace this one: then this one does not
   * count for `minKeep` (the replacement holds the same data).
   */
  replacedBy?: string;
}

export interface PruneDecision extends PruneCandidate {
  action: 'delete' | 'keep';
  reason: string;
}

export interface PrunePlan {
  /** Every backup, newest first per database, with its decision. */
  decisions: PruneDecision[];
  /** The keys to delete, in order. */
  deleteKeys: string[];
}

/** The suffixes (after `<id>`) coffer writes for a logical backup: dump, globals, index, manifest, its signatures. */
const LOGICAL_SUFFIX = /^\.(?:(?:dump|sql)(?:\.zst)?\.age|globals\.sql\.age|index\.json\.age|manifest\.json(?:\.[0-9a-f]{64}\.sig)?)$/;
/** The suffixes coffer writes for a physical backup: archive, attachments, manifest, its signatures (`backup --physical --signing-key`). */
const PHYSICAL_SUFFIX = /^\.(?:(?:base|volume)\.tar\.zst\.age|attach-\d+\.age|manifest\.json(?:\.[0-9a-f]{64}\.sig)?)$/;

/**
 * Groups listed keys into runs. Only the exact files coffer writes are taken (see
 * {@link LOGICAL_SUFFIX}, {@link PHYSICAL_SUFFIX}): anything else beside them — `<id>.dump.zst.age.bak`,
 * `<id>.txt`, notes named like a run — is no part of a run and never deleted. `isGood(manifestKey)` says whether a complete run's manifest
 * could be read and its dump exists (decided by the caller, which reads the manifests);
 * `kindOf(manifestKey)` the kind its manifest says (a logical backup's), when it was read.
 */
export function groupRuns(
  keys: Iterable<string>,
  isGood: (manifestKey: string) => boolean,
  kindOf: (manifestKey: string) => PruneKind | undefined = () => undefined,
  replacedByOf: (manifestKey: string) => string | undefined = () => undefined,
): PruneCandidate[] {
  const runs = new Map<string, { database: string; cluster?: string; tier: Tier; id: string; keys: string[] }>();
  for (const key of keys) {
    const k = parseKey(key);
    const c = k ? undefined : parseClusterKey(key);
    if (!k && !c) continue;
    if (!(k ? LOGICAL_SUFFIX : PHYSICAL_SUFFIX).test((k ?? c)!.rest)) continue;
    const who = k ? { database: k.database } : { database: '', cluster: c!.cluster };
    const { tier, id } = (k ?? c)!;
    const runKey = `${who.cluster !== undefined ? `cluster\0${who.cluster}` : who.database}\0${tier}\0${id}`;
    let run = runs.get(runKey);
    if (!run) runs.set(runKey, (run = { ...who, tier, id, keys: [] }));
    run.keys.push(key);
  }
  return [...runs.values()].map((r) => {
    const manifest = r.keys.find((k) => k.endsWith(MANIFEST_SUFFIX));
    const keys = [...(manifest ? [manifest] : []), ...r.keys.filter((k) => k !== manifest).sort()];
    const good = manifest !== undefined && isGood(manifest);
    // The manifest says which kind; without it, a custom archive's suffix says full (a plain-SQL
    // dump is schema-only or data-only: only its manifest tells which).
    const kind = r.cluster !== undefined ? undefined : ((manifest !== undefined ? kindOf(manifest) : undefined) ?? (keys.some((k) => /\.dump(\.zst)?\.age$/.test(k)) ? 'custom' : undefined));
    const replacedBy = manifest !== undefined && good ? replacedByOf(manifest) : undefined;
    return { ...r, ...(kind !== undefined ? { kind } : {}), keys, complete: manifest !== undefined, good, ...(replacedBy !== undefined ? { replacedBy } : {}) };
  });
}

/** What `minKeep` counts a backup among, in reasons: full, schema-only or data-only backups. */
const KIND_WORDS: Record<PruneKind, string> = { custom: 'full', 'schema-only': 'schema-only', 'data-only': 'data-only' };

/**
 * Decides what to delete. The newest `minKeep` (≥ 1) good backups per database and kind (and per
 * cluster) always stay: a schema-only or data-only backup never takes a full backup's place.
 */
export function planPrune(candidates: readonly PruneCandidate[], policy: RetentionPolicy, minKeep: number, now: Date): PrunePlan {
  if (!Number.isInteger(minKeep) || minKeep < 1) throw new RangeError(`minKeep must be a whole number ≥ 1 (got ${minKeep})`);
  const byDb = new Map<string, PruneCandidate[]>();
  for (const c of candidates) {
    const owner = c.cluster !== undefined ? `cluster=${c.cluster}` : c.database;
    const list = byDb.get(owner) ?? [];
    list.push(c);
    byDb.set(owner, list);
  }
  const decisions: PruneDecision[] = [];
  for (const db of [...byDb.keys()].sort()) {
    const list = byDb.get(db)!.sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
    /** Good backups seen so far (newest first), per kind: each kind has its own min-keep. */
    const goodSeen = new Map<string, number>();
    for (const c of list) {
      const ageDays = (now.getTime() - backupIdTime(c.id).getTime()) / 86_400_000;
      const limit = policy.days[c.tier];
      const track = c.cluster !== undefined ? 'cluster' : (c.kind ?? 'unknown');
      const seen = goodSeen.get(track) ?? 0;
      const counts = c.good && c.replacedBy === undefined;
      if (counts) goodSeen.set(track, seen + 1);
      if (counts && seen < minKeep) {
        const what = c.kind !== undefined ? `good ${KIND_WORDS[c.kind]} backups` : c.cluster !== undefined ? 'good backups' : 'good backups of an unknown kind';
        decisions.push({ ...c, action: 'keep', reason: ageDays > limit ? `one of the newest ${minKeep} ${what} (min-keep)` : 'within retention' });
        continue;
      }
      if (ageDays > limit) {
        const what = !c.complete ? 'incomplete run (no manifest)' : c.replacedBy !== undefined ? `backup replaced by rekey (backup ${c.replacedBy})` : c.good ? 'backup' : 'backup with an unreadable manifest or missing dump';
        decisions.push({ ...c, action: 'delete', reason: `${what} older than ${limit} days (${c.tier})` });
      } else {
        decisions.push({ ...c, action: 'keep', reason: !c.complete ? 'incomplete run, within retention' : c.replacedBy !== undefined ? `within retention (replaced by rekey: backup ${c.replacedBy})` : 'within retention' });
      }
    }
  }
  return { decisions, deleteKeys: decisions.filter((d) => d.action === 'delete').flatMap((d) => d.keys) };
}

/** One archived WAL object, as listed. */
export interface WalPruneObject {
  key: string;
  lastModified: Date;
}

/** What the kept backups of one cluster need of its archived WAL. */
export interface WalNeeds {
  /** The start segment of the oldest kept base backup: it and every later segment stay. */
  fromSegment?: string;
  /**
   * The start time of the oldest kept volume archive (a stopped cluster's directory): WAL stored
   * from then on stays (replaying after it needs the segments written after the restart).
   */
  storedSince?: Date;
}

export interface WalPrunePlan {
  /** Per cluster: what its kept backups need (null: kept whole, `reason` says why), and what is deleted. */
  clusters: Array<{ cluster: string; keepFrom: string | null; keepSince: string | null; deleted: number; kept: number; reason?: string }>;
  deleteKeys: string[];
}

/**
 * Which archived WAL to delete: an object expires when it is older than `walDays` (stored
 * before the point-in-time window) **and** no kept backup of its cluster needs it
 * ({@link WalNeeds}: names sort by timeline, then position). Timeline `.history` files are never
 * deleted (a few bytes, and recovery reads them to follow timelines). A cluster missing from
 * `needs` (no kept backup coffer can read: base backups taken by another tool, or manifests that
 * did not read) keeps all of its WAL, with `kept` naming why (`whole`). Pure: `now` is passed in.
 */
export function planWalPrune(objects: readonly WalPruneObject[], needs: ReadonlyMap<string, WalNeeds>, walDays: number, now: Date, whole: ReadonlyMap<string, string> = new Map()): WalPrunePlan {
  const byCluster = new Map<string, { deleted: number; kept: number }>();
  const deleteKeys: string[] = [];
  for (const o of objects) {
    const w = parseWalKey(o.key);
    if (!w) continue;
    const tally = byCluster.get(w.cluster) ?? { deleted: 0, kept: 0 };
    byCluster.set(w.cluster, tally);
    const need = needs.get(w.cluster);
    const segment = w.file.slice(0, 24);
    const old = now.getTime() - o.lastModified.getTime() > walDays * 86_400_000;
    const needed =
      need === undefined ||
      parseSegmentName(segment) === undefined ||
      (need.fromSegment !== undefined && segment >= need.fromSegment) ||
      (need.storedSince !== undefined && o.lastModified.getTime() >= need.storedSince.getTime());
    if (old && !needed && !w.file.endsWith('.history')) {
      deleteKeys.push(o.key);
      tally.deleted++;
    } else tally.kept++;
  }
  const clusters = [...byCluster]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([cluster, t]) => {
      const need = needs.get(cluster);
      const reason = need === undefined ? (whole.get(cluster) ?? 'no backup of this cluster is kept in this repository') : undefined;
      return { cluster, keepFrom: need?.fromSegment ?? null, keepSince: need?.storedSince?.toISOString() ?? null, ...t, ...(reason !== undefined ? { reason } : {}) };
    });
  return { clusters, deleteKeys };
}
