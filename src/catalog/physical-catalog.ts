/**
 * The completed physical backups of a repository (issue 14): those whose manifest exists, under
 * `cluster=<name>/<tier>/` (src/catalog/cluster-layout.ts). Archived WAL (`cluster=<name>/wal/`)
 * is not a backup and is skipped.
 */
import { IntegrityError, StorageError } from '../errors.js';
import type { ObjectStore } from '../store/object-store.js';
import { loadManifests, newestFirst } from './catalog.js';
import { clusterPrefix, parseClusterKey } from './cluster-layout.js';
import { MANIFEST_SUFFIX, parseBackupSelector, type Tier } from './layout.js';
import { decodePhysicalManifest, type PhysicalManifest } from './physical-manifest.js';

/** A completed physical backup: one whose manifest exists. */
export interface PhysicalEntry {
  id: string;
  cluster: string;
  tier: Tier;
  manifestKey: string;
  manifest: PhysicalManifest;
}

/** A key-level view of a completed physical backup (listing only: no GetObject needed). */
export interface PhysicalKeyEntry {
  id: string;
  cluster: string;
  tier: Tier;
  manifestKey: string;
}

/**
 * Completed physical backups by listing keys only, newest first: every manifest under
 * `cluster=…/<tier>/`. Needs ListBucket, not GetObject (the backup host chooses tiers with it).
 */
export async function listPhysicalKeys(store: ObjectStore, opts: { cluster?: string; signal?: AbortSignal } = {}): Promise<PhysicalKeyEntry[]> {
  const out: PhysicalKeyEntry[] = [];
  for await (const o of store.list(clusterPrefix(opts.cluster), { signal: opts.signal })) {
    const k = parseClusterKey(o.key);
    if (!k || k.rest !== MANIFEST_SUFFIX) continue;
    if (opts.cluster !== undefined && k.cluster !== opts.cluster) continue;
    out.push({ id: k.id, cluster: k.cluster, tier: k.tier, manifestKey: o.key });
  }
  return out.sort(newestFirst);
}

/**
 * Completed physical backups with their manifests, newest first (manifests fetched in
 * parallel). A manifest that cannot be parsed, or that describes another backup than the key it
 * was found at, is reported through `onInvalid` and skipped; without `onInvalid` it throws.
 */
export async function listPhysicalBackups(
  store: ObjectStore,
  opts: { cluster?: string; signal?: AbortSignal; onInvalid?: (key: string, err: Error) => void } = {},
): Promise<PhysicalEntry[]> {
  const keys = await listPhysicalKeys(store, opts);
  return loadManifests(keys, (k) => loadPhysicalEntry(store, k, opts.signal), opts.onInvalid);
}

/** A manifest read and checked against the key it was found at (and the objects it names). */
export async function loadPhysicalEntry(store: ObjectStore, k: PhysicalKeyEntry, signal?: AbortSignal): Promise<PhysicalEntry> {
  const manifest = decodePhysicalManifest(await store.getBytes(k.manifestKey, { signal }), k.manifestKey);
  if (manifest.id !== k.id || manifest.cluster !== k.cluster || manifest.tier !== k.tier) {
    throw new IntegrityError(`manifest ${k.manifestKey} describes another backup (cluster ${manifest.cluster}/${manifest.tier}/${manifest.id})`, {
      hint: 'the manifest was moved or swapped; do not trust this backup',
    });
  }
  for (const o of [manifest.archive, ...manifest.attachments]) {
    const p = parseClusterKey(o.key);
    if (!p || p.id !== k.id || p.cluster !== k.cluster || p.tier !== k.tier) {
      throw new IntegrityError(`manifest ${k.manifestKey} points at an object of another backup (${o.key})`, { hint: 'the manifest was swapped; do not trust this backup' });
    }
  }
  return { ...k, manifest };
}

/**
 * One completed physical backup of `cluster`: `latest` (the newest, of either kind) or an id.
 * StorageError NotFound when there is none.
 */
export async function findPhysicalBackup(store: ObjectStore, opts: { cluster: string; selector: 'latest' | string; signal?: AbortSignal }): Promise<PhysicalEntry> {
  const keys = await listPhysicalKeys(store, { cluster: opts.cluster, signal: opts.signal });
  if (keys.length === 0) await store.assertPresent?.({ signal: opts.signal });
  const of = `of cluster ${JSON.stringify(opts.cluster)} in ${store.location}`;
  if (opts.selector === 'latest') {
    const newest = keys[0];
    if (!newest) throw new StorageError('NotFound', `no completed physical backup ${of}`, { hint: 'run `coffer list --cluster NAME` to see what is there' });
    return loadPhysicalEntry(store, newest, opts.signal);
  }
  parseBackupSelector(opts.selector);
  const chosen = keys.find((k) => k.id === opts.selector);
  if (!chosen) throw new StorageError('NotFound', `no completed physical backup with id ${opts.selector} ${of}`, { hint: 'run `coffer list --cluster NAME` to see what is there' });
  return loadPhysicalEntry(store, chosen, opts.signal);
}
