import { IntegrityError, StorageError, UsageError } from '../errors.js';
import type { ObjectStore } from '../store/object-store.js';
import { databasePrefix, MANIFEST_SUFFIX, parseDrillKey, parseKey, type ParsedKey } from './layout.js';
import { decodeManifest, type BackupManifest } from './manifest.js';

/** A completed backup: one whose manifest exists. */
export interface BackupEntry {
  id: string;
  database: string;
  tier: ParsedKey['tier'];
  manifestKey: string;
  manifest: BackupManifest;
}

/**
 * What a backup holds, as far as its keys tell: `full` (a pg_dump custom archive: `.dump…`),
 * `partial` (plain SQL: a schema-only or data-only dump, `.sql…`), or `unknown` (its dump object
 * is not in the listing).
 */
export type KeyContent = 'full' | 'partial' | 'unknown';

/** A key-level view of a completed backup (no GetObject needed: listing only). */
export interface BackupKeyEntry {
  id: string;
  database: string;
  tier: ParsedKey['tier'];
  manifestKey: string;
  content: KeyContent;
}

/** The kinds a restore can ask for; `latest` means the newest backup of the kind (default: full). */
export type BackupKind = 'custom' | 'schema-only' | 'data-only';

/** Newest first: by id (UTC start time, then random suffix, so the order is total). */
export function newestFirst<T extends { id: string }>(a: T, b: T): number {
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/**
 * Completed backups by listing keys only: every `.manifest.json` in coffer's layout, across
 * every page of the listing. Needs ListBucket, not GetObject (the backup host has no read right).
 */
export async function listBackupKeys(store: ObjectStore, opts: { database?: string; signal?: AbortSignal; drills?: Map<string, string[]> } = {}): Promise<BackupKeyEntry[]> {
  const out: BackupKeyEntry[] = [];
  /** Dump objects seen, by `<database>/<tier>/<id>`. */
  const dumps = new Map<string, KeyContent>();
  for await (const o of store.list(databasePrefix(opts.database), { signal: opts.signal })) {
    const k = parseKey(o.key);
    if (!k) {
      // Drill records (`coffer drill --record`), by database, when asked for: the same listing.
      const d = opts.drills ? parseDrillKey(o.key) : undefined;
      if (d && (opts.database === undefined || d.database === opts.database)) opts.drills!.set(d.database, [...(opts.drills!.get(d.database) ?? []), o.key]);
      continue;
    }
    if (opts.database !== undefined && k.database !== opts.database) continue;
    if (k.rest === MANIFEST_SUFFIX) out.push({ id: k.id, database: k.database, tier: k.tier, manifestKey: o.key, content: 'unknown' });
    else if (/^\.dump(\.zst)?\.age$/.test(k.rest)) dumps.set(`${k.database}/${k.tier}/${k.id}`, 'full');
    else if (/^\.sql(\.zst)?\.age$/.test(k.rest)) dumps.set(`${k.database}/${k.tier}/${k.id}`, 'partial');
  }
  for (const e of out) e.content = dumps.get(`${e.database}/${e.tier}/${e.id}`) ?? 'unknown';
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
  return loadManifests(keys, (k) => loadEntry(store, k, opts.signal), opts.onInvalid);
}

/**
 * Loads the entries of `keys` (16 manifests at a time), in their order. An entry whose manifest
 * is invalid (IntegrityError) is reported through `onInvalid` and skipped; without `onInvalid`,
 * or for any other error, it throws.
 */
export async function loadManifests<K extends { manifestKey: string }, E>(keys: K[], load: (k: K) => Promise<E>, onInvalid?: (key: string, err: Error) => void): Promise<E[]> {
  const results: Array<E | undefined> = new Array(keys.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < keys.length) {
      const i = next++;
      const k = keys[i]!;
      try {
        results[i] = await load(k);
      } catch (err) {
        if (onInvalid && err instanceof IntegrityError) onInvalid(k.manifestKey, err);
        else throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, keys.length) }, worker));
  return results.filter((e): e is E => e !== undefined);
}

/**
 * The one reader of a backup's manifest: decoded, and checked to be the manifest of the backup
 * its key names (id, database, tier, and a dump object of that backup). IntegrityError when it is
 * invalid, or moved or swapped from another backup's key.
 */
export async function loadEntry(store: ObjectStore, k: BackupKeyEntry, signal?: AbortSignal): Promise<BackupEntry> {
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

/** What to do about a backup whose origin the trusted signers do not vouch for. */
export const UNTRUSTED_HINT = 'it was not written by a trusted backup host; do not restore it, and find out who wrote it';

/**
 * The entries that no other entry of the list replaces (`coffer rekey` writes a backup that
 * replaces another: the same data under a new age header; the replaced one stays readable with
 * its old recipients until it expires, but is not a second backup). Order is kept.
 */
export function withoutReplaced<T extends { id: string; database: string; manifest: BackupManifest }>(entries: T[]): T[] {
  const replaced = new Set(entries.flatMap((e) => replacedIds(e.manifest).map((id) => `${e.database}\0${id}`)));
  return entries.filter((e) => !replaced.has(`${e.database}\0${e.id}`));
}

/** The ids a manifest replaces: the backup it was rekeyed from, and those that one replaced. */
export function replacedIds(m: BackupManifest): string[] {
  return m.replaces ? [...(m.replaces.earlier ?? []), m.replaces.id] : [];
}

/**
 * The backup that replaces `entry` (rekeyed), following a chain of rekeys, or `entry` itself. A
 * replacement keeps the replaced backup's start time, so its id has the same time part: only the
 * completed backups of that second are read.
 */
export async function findReplacement(store: ObjectStore, keys: BackupKeyEntry[], entry: BackupEntry, signal?: AbortSignal): Promise<BackupEntry> {
  let current = entry;
  const seen = new Set([entry.id]);
  for (;;) {
    const second = current.id.slice(0, 16);
    const siblings = keys.filter((k) => k.database === current.database && k.id.startsWith(second) && !seen.has(k.id));
    let next: BackupEntry | undefined;
    for (const k of siblings) {
      const e = await loadEntry(store, k, signal).catch((err: unknown) => {
        if (err instanceof IntegrityError) return undefined;
        throw err;
      });
      if (e && replacedIds(e.manifest).includes(current.id)) next = e;
    }
    if (!next) return current;
    seen.add(next.id);
    current = next;
  }
}

/**
 * Finds one completed backup: `latest` or an id. `latest` is the newest backup of `kind`
 * (a backup replaced by `coffer rekey` gives way to its replacement; an id is taken as given)
 * (default `custom`, a full backup: a schema-only or data-only backup is never taken for the
 * latest copy of a database unless asked for) of `database`, or of the only database in the
 * repository. Throws UsageError when the choice is ambiguous, StorageError NotFound when
 * nothing matches.
 */
export async function findBackup(
  store: ObjectStore,
  opts: {
    database?: string;
    selector: string;
    kind?: BackupKind;
    signal?: AbortSignal;
    /**
     * The origin check (`--trusted-signers`): why a backup may not be used (one line), or
     * undefined when it may. `latest` passes over such backups, telling `onSkip`, and takes the
     * newest trusted one; an id is refused (IntegrityError). May throw to refuse everything.
     */
    untrustedBecause?: (entry: BackupEntry) => Promise<string | undefined>;
    onSkip?: (why: string) => void;
  },
): Promise<BackupEntry> {
  const keys = await listBackupKeys(store, { database: opts.database, signal: opts.signal });
  // Nothing at all: a repository that is not there (an unmounted directory) says so, not "no backup".
  if (keys.length === 0) await store.assertPresent?.({ signal: opts.signal });
  const kind = opts.kind ?? 'custom';
  const of = opts.database !== undefined ? ` of database ${JSON.stringify(opts.database)}` : '';
  if (opts.selector !== 'latest') {
    const chosen = keys.find((k) => k.id === opts.selector);
    if (!chosen) throw new StorageError('NotFound', `no completed backup with id ${opts.selector}${of} in ${store.location}`, { hint: 'run `coffer list` to see what is there' });
    const entry = await loadEntry(store, chosen, opts.signal);
    const why = await opts.untrustedBecause?.(entry);
    if (why !== undefined) throw new IntegrityError(why, { hint: UNTRUSTED_HINT });
    return entry;
  }
  const dbs = new Set(keys.map((k) => k.database));
  if (opts.database === undefined && dbs.size > 1) {
    // Quoted: a name with a comma, a space or nothing visible in it still reads as one name.
    throw new UsageError(`the repository holds backups of ${dbs.size} databases; say which with --db`, {
      hint: `databases: ${[...dbs]
        .sort()
        .map((d) => JSON.stringify(d))
        .join(', ')}`,
    });
  }
  // Newest first; the keys tell full from partial, the manifest tells schema-only from data-only.
  const wantContent: KeyContent = kind === 'custom' ? 'full' : 'partial';
  const skipped: string[] = [];
  const skippedIds = new Set<string>();
  for (const k of keys) {
    if (k.content !== wantContent && k.content !== 'unknown') continue;
    const entry = await loadEntry(store, k, opts.signal);
    const says: KeyContent = entry.manifest.kind === 'custom' ? 'full' : 'partial';
    if (k.content !== 'unknown' && k.content !== says) {
      throw new IntegrityError(`manifest ${k.manifestKey} says the backup is ${entry.manifest.kind}, but its dump object is ${k.content === 'full' ? 'a custom archive' : 'plain SQL'}`, {
        hint: 'the manifest or the object was replaced; do not trust this backup',
      });
    }
    if (entry.manifest.kind !== kind) continue;
    // A rekeyed backup gives way to its replacement, unless the trusted signers do not vouch for
    // that one (a replacement is a manifest like any other: one forged with the writer's
    // credentials must not hide the genuine backup it claims to replace).
    const replacement = await findReplacement(store, keys, entry, opts.signal);
    for (const candidate of replacement === entry ? [entry] : [replacement, entry]) {
      const why = await opts.untrustedBecause?.(candidate);
      if (why === undefined) return candidate;
      if (skippedIds.has(candidate.id)) continue;
      skippedIds.add(candidate.id);
      skipped.push(why);
      opts.onSkip?.(why);
    }
  }
  if (skipped.length > 0) {
    throw new IntegrityError(`no trusted ${kind === 'custom' ? 'full backup' : `${kind} backup`}${of} in ${store.location}: ${skipped.length} untrusted one(s) refused, the newest: ${skipped[0]}`, { hint: UNTRUSTED_HINT });
  }
  const others = keys.length;
  const what = kind === 'custom' ? 'full backup' : `${kind} backup`;
  throw new StorageError('NotFound', `no completed ${what}${of} in ${store.location}`, {
    hint: others > 0 ? `there are ${others} backup(s) of other kinds: choose one with --backup ID, or --kind schema-only|data-only` : 'run `coffer list` to see what is there',
  });
}

/**
 * For a failed first read of a backup's dump object (NotFound, or AccessDenied: S3's answer for a
 * missing key to a reader whose ListBucket is limited to a prefix): lists the exact key (which
 * the reader may do where HeadObject would be 403 too) and, when it is not there, the error that
 * says the dump is missing. `undefined` when it is there or the listing fails: the GET's own error
 * stands.
 */
export function missingDump(store: ObjectStore, m: BackupManifest, signal?: AbortSignal): (err: StorageError) => Promise<StorageError | undefined> {
  return async (err) => {
    try {
      for await (const o of store.list(m.dump.key, { signal })) if (o.key === m.dump.key) return undefined;
    } catch {
      return undefined;
    }
    return new StorageError('NotFound', `the dump object of backup ${m.id} is missing (deleted or expired?): ${store.location}/${m.dump.key}`, {
      cause: err,
      hint: "restore another backup with --backup ID (coffer list shows them); a bucket's lifecycle rules must not expire a dump before its manifest",
    });
  };
}
