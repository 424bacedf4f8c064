import { IntegrityError, StorageError, UsageError } from '../errors.js';
import type { ObjectStore } from '../store/object-store.js';
import { databasePrefix, MANIFEST_SUFFIX, parseKey, type ParsedKey } from './layout.js';
import { decodeManifest, type BackupManifest } from './manifest.js';

/** A completed backup: one whose manifest exists. */
export interface BackupEntry {
  id: string;
  database: string;
  tier: ParsedKey['tier'];
  manifestKey: string;
  manifest: BackupManifest;
}

/** A key-level view of a completed backup (no GetObject needed: listing only). */
export interface BackupKeyEntry {
  id: string;
  database: string;
  tier: ParsedKey['tier'];
  manifestKey: string;
}

/** Newest first: by id (UTC start time, then random suffix, so the order is total). */
export function newestFirst<T extends { id: string }>(a: T, b: T): number {
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/**
 * Completed backups by listing keys only: every `.manifest.json` in coffer's layout, across
 * every page of the listing. Needs ListBucket, not GetObject (the backup host has no read right).
 */
export async function listBackupKeys(store: ObjectStore, opts: { database?: string; signal?: AbortSignal } = {}): Promise<BackupKeyEntry[]> {
  const out: BackupKeyEntry[] = [];
  for await (const o of store.list(databasePrefix(opts.database), { signal: opts.signal })) {
    const k = parseKey(o.key);
    if (!k || k.rest !== MANIFEST_SUFFIX) continue;
    if (opts.database !== undefined && k.database !== opts.database) continue;
    out.push({ id: k.id, database: k.database, tier: k.tier, manifestKey: o.key });
  }
  return out.sort(newestFirst);
}

/**
 * Completed backups with their manifests, newest first. Manifests are fetched in parallel.
 * A manifest that cannot be parsed is reported through `onInvalid` and skipped (it is never
 * taken for a backup); without `onInvalid` it throws.
 */
export async function listBackups(
  store: ObjectStore,
  opts: { database?: string; signal?: AbortSignal; onInvalid?: (key: string, err: Error) => void; limit?: number } = {},
): Promise<BackupEntry[]> {
  let keys = await listBackupKeys(store, opts);
  if (opts.limit !== undefined) keys = keys.slice(0, opts.limit);
  const results: Array<BackupEntry | undefined> = new Array(keys.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < keys.length) {
      const i = next++;
      const k = keys[i]!;
      try {
        results[i] = await loadEntry(store, k, opts.signal);
      } catch (err) {
        if (opts.onInvalid && err instanceof IntegrityError) opts.onInvalid(k.manifestKey, err);
        else throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, keys.length) }, worker));
  return results.filter((e): e is BackupEntry => e !== undefined);
}

async function loadEntry(store: ObjectStore, k: BackupKeyEntry, signal?: AbortSignal): Promise<BackupEntry> {
  const manifest = decodeManifest(await store.getBytes(k.manifestKey, { signal }), k.manifestKey);
  if (manifest.id !== k.id || manifest.database !== k.database || manifest.tier !== k.tier) {
    throw new IntegrityError(`manifest ${k.manifestKey} describes another backup (${manifest.database}/${manifest.tier}/${manifest.id})`, {
      hint: 'the manifest was moved or swapped; do not trust this backup',
    });
  }
  const dumpParsed = parseKey(manifest.dump.key);
  if (!dumpParsed || dumpParsed.id !== k.id || dumpParsed.database !== k.database) {
    throw new IntegrityError(`manifest ${k.manifestKey} points at an object of another backup (${manifest.dump.key})`, {
      hint: 'the manifest was swapped; do not trust this backup',
    });
  }
  return { ...k, manifest };
}

/**
 * Finds one completed backup: `latest` (newest of `database`, or of the only database in the
 * repository) or an id. Throws UsageError when nothing matches or the choice is ambiguous.
 */
export async function findBackup(
  store: ObjectStore,
  opts: { database?: string; selector: string; signal?: AbortSignal },
): Promise<BackupEntry> {
  const keys = await listBackupKeys(store, { database: opts.database, signal: opts.signal });
  let chosen: BackupKeyEntry | undefined;
  if (opts.selector === 'latest') {
    const dbs = new Set(keys.map((k) => k.database));
    if (opts.database === undefined && dbs.size > 1) {
      throw new UsageError(`the repository holds backups of ${dbs.size} databases; say which with --db`, {
        hint: `databases: ${[...dbs].sort().slice(0, 10).join(', ')}`,
      });
    }
    chosen = keys[0];
  } else {
    chosen = keys.find((k) => k.id === opts.selector);
  }
  if (!chosen) {
    const what = opts.selector === 'latest' ? 'no completed backup' : `no completed backup with id ${opts.selector}`;
    throw new StorageError('NotFound', `${what}${opts.database !== undefined ? ` of database ${JSON.stringify(opts.database)}` : ''} in ${store.location}`, {
      hint: 'run `coffer list` to see what is there',
    });
  }
  return loadEntry(store, chosen, opts.signal);
}
