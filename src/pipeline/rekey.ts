/**
 * `coffer rekey`: change the recipients of existing backups without uploading their data again.
 *
 * Each object of a backup (dump, globals) is an age file whose payload depends only on its file
 * key and nonce. Rekeying unwraps the file key with an identity, writes a new header wrapping
 * the same key for the new recipients, and copies the old payload bytes after it: on S3 by
 * UploadPartCopy (server-side, the header padded to S3's 5 MiB smallest part, see
 * src/crypto/rekey.ts), for a file repository or a small object (< {@link SERVER_COPY_MIN})
 * through this process. The archive index (small, its offsets depend on the header length) is
 * decrypted, adjusted and encrypted anew. A new manifest, written through the same commit as a
 * backup's, names the backup it replaces; the old objects are left to the lifecycle rules and
 * object lock unless `--delete-old`.
 *
 * Plan, then act: {@link planRekey} decides per backup (recipients before and after) and
 * `--dry-run` prints it; {@link runRekey} executes it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream';
import { createEncryptStream, MAX_HEADER_SIZE, openDecryptStream, readHeaderFileKey } from '../crypto/age.js';
import { buildHeader, PAD_STANZA_TYPE } from '../crypto/rekey.js';
import { findBackup, findReplacement, listBackupKeys, listBackups, replacedIds, withoutReplaced, type BackupEntry } from '../catalog/catalog.js';
import { BACKUP_ID_RE, compactTimestamp, backupIdTime, parseKey, MANIFEST_SUFFIX } from '../catalog/layout.js';
import { encodeManifest, type BackupManifest, type StoredObject } from '../catalog/manifest.js';
import { decodeIndex, encodeIndex, type ArchiveIndex } from '../catalog/archive-index.js';
import { CofferError, IntegrityError, StorageError, UsageError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import type { ObjectRetention, ObjectStore } from '../store/object-store.js';
import type { Tier } from '../catalog/layout.js';
import { TIER_TAG } from '../retention/lifecycle.js';
import { commitManifest } from './backup.js';
import { checkRecipientMix } from '../crypto/keys.js';
import { pluginRecipientName } from '../crypto/plugin.js';
import { parseSignatureKey, previousSignedManifest, type ManifestSigner } from '../trust/manifest-trust.js';
import { holdAt } from '../run/faults.js';

/** Objects smaller than this are rewritten through coffer (header + payload), not composed server-side: a padded 5 MiB header would cost more than the copy saves. */
export const SERVER_COPY_MIN = 10 * 1024 * 1024;
/** First read of an object's head; a longer one follows for a longer (padded, rekeyed) header. */
const HEAD_READ = 64 * 1024;
const NONCE = 16;

/** What to rekey and how. */
export interface RekeyRequest {
  store: ObjectStore;
  database?: string;
  /** A backup id, `latest` (the newest full backup) or `all` (every backup not replaced already). */
  selector: string;
  add: string[];
  remove: string[];
  identities: string[];
  dryRun: boolean;
  deleteOld: boolean;
  /** Object lock of the new objects, for the backup's tier and ORIGINAL start time (they expire when the old ones would). */
  retentionFor?: (tier: Tier, startedAt: Date) => ObjectRetention | undefined;
  log: Logger;
  signal: AbortSignal;
  now?: () => Date;
  /** Signs the replacement's manifest and chains it to the newest signed manifest of its database (as a backup does). */
  signer?: ManifestSigner;
  /**
   * Takes the lock a backup of (repository, `database`) takes (src/ops/lock.ts), so that rekeys
   * of one database (and a backup of it on this host) run one at a time; throws BusyError when
   * it is held. Absent: no lock (tests of the pipeline alone).
   */
  lock?: (database: string) => Promise<{ release(): Promise<void> }>;
}

/** One backup in the plan. */
export interface RekeyPlanItem {
  id: string;
  database: string;
  tier: Tier;
  manifestKey: string;
  before: string[];
  after: string[];
  /** `unchanged`: the recipients are already those (nothing is written). */
  action: 'rekey' | 'unchanged';
}

/** What was done to one object. */
export interface RekeyedObject {
  what: 'dump' | 'globals' | 'index';
  oldKey: string;
  key: string;
  /** `server-copy`: head uploaded, payload copied by the store; `rewrite`: every byte through coffer; `reencrypt`: decrypted and encrypted anew (the index). */
  method: 'server-copy' | 'rewrite' | 'reencrypt';
  oldHeaderBytes: number;
  headerBytes: number;
  /** Bytes of padding stanzas in the new header. */
  padBytes: number;
  /** Bytes copied by the store without passing through coffer. */
  copiedBytes: number;
  size: number;
}

export interface RekeyItemResult extends RekeyPlanItem {
  newId?: string;
  newManifestKey?: string;
  objects: RekeyedObject[];
  /** With --delete-old: whether the old backup's objects were deleted. */
  oldDeleted?: boolean;
}

export interface RekeyResult {
  dryRun: boolean;
  items: RekeyItemResult[];
}

/**
 * The recipients after the change: the backup's recorded recipients (its manifest's
 * `encryption.recipients`, which every coffer manifest holds), plus `add`, minus `remove`, in
 * that order, without duplicates.
 */
export function nextRecipients(before: string[], add: string[], remove: string[]): string[] {
  const out: string[] = [];
  for (const r of [...before, ...add]) if (!out.includes(r) && !remove.includes(r)) out.push(r);
  return out;
}

/**
 * Decides what happens to each selected backup. Throws UsageError when a change would leave a
 * backup without any recipient, or when a `--remove-recipient` is a recipient of none of them.
 */
export function planRekey(entries: BackupEntry[], add: string[], remove: string[]): RekeyPlanItem[] {
  if (add.length === 0 && remove.length === 0) throw new UsageError('nothing to change: pass --add-recipient, --add-recipients-file or --remove-recipient');
  const both = add.filter((r) => remove.includes(r));
  if (both.length > 0) throw new UsageError(`${both[0]} is both added and removed`);
  const items = entries.map((e): RekeyPlanItem => {
    const before = [...e.manifest.encryption.recipients];
    if (before.length === 0) throw new UsageError(`backup ${e.id}: its manifest records no recipients, so the new recipient set cannot be computed`, { hint: 'this manifest was not written by coffer' });
    const after = nextRecipients(before, add, remove);
    if (after.length === 0) {
      throw new UsageError(`backup ${e.id}: the change would leave it with no recipient; refusing (nobody could restore it)`, { hint: `its recipients: ${before.join(', ')}; add one with --add-recipient` });
    }
    // The new header is written by the age library's native recipients: age's mixing rule
    // holds, and a plugin recipient (its plugin wraps at backup time) cannot be added here.
    const plugin = add.find((r) => pluginRecipientName(r.trim()) !== undefined);
    if (plugin !== undefined) throw new UsageError(`${plugin} is an age plugin recipient: rekey writes headers for native recipients only (age1…, age1pq1…)`, { hint: 'add a native recipient, or take a new backup to the plugin recipient' });
    checkRecipientMix(after);
    const same = after.length === before.length && after.every((r) => before.includes(r));
    return { id: e.id, database: e.database, tier: e.tier, manifestKey: e.manifestKey, before, after, action: same ? 'unchanged' : 'rekey' };
  });
  for (const r of remove) {
    if (!entries.some((e) => e.manifest.encryption.recipients.includes(r))) {
      throw new UsageError(`--remove-recipient ${r} is not a recipient of ${entries.length === 1 ? `backup ${entries[0]!.id}` : 'any selected backup'}`, { hint: 'coffer list --json and the manifests name each backup\'s recipients' });
    }
  }
  return items;
}

/** The backups `selector` names: an id, `latest`, or `all` (those not replaced already), logical backups only. */
export async function selectBackups(store: ObjectStore, database: string | undefined, selector: string, signal: AbortSignal): Promise<BackupEntry[]> {
  if (selector === 'all') {
    const all = withoutReplaced(await listBackups(store, { database, signal }));
    if (all.length === 0) throw new StorageError('NotFound', `no completed backup${database !== undefined ? ` of database ${JSON.stringify(database)}` : ''} in ${store.location}`, { hint: 'run `coffer list` to see what is there' });
    return all;
  }
  const entry = await findBackup(store, { database, selector, signal });
  if (selector !== 'latest') {
    const keys = await listBackupKeys(store, { database: entry.database, signal });
    const newer = await findReplacement(store, keys, entry, signal);
    if (newer.id !== entry.id) {
      throw new UsageError(`backup ${entry.id} was already replaced by ${newer.id} (coffer rekey); rekey that one`, { hint: `coffer rekey --backup ${newer.id} …` });
    }
  }
  return [entry];
}

/**
 * A new id for the replacement of backup `id`: the same start time (so tiers, `latest`, the
 * retention's age and the recovery point stay those of the data), and a random suffix above the
 * old one, so that the replacement sorts as the newer of the two. (An old suffix of `ffffffff`
 * leaves no room: the time moves one second later.)
 */
export function replacementId(id: string): string {
  const m = BACKUP_ID_RE.exec(id);
  if (!m) throw new UsageError(`invalid backup id ${JSON.stringify(id)}`);
  const old = parseInt(m[2]!, 16);
  if (old === 0xffffffff) return `${compactTimestamp(new Date(backupIdTime(id).getTime() + 1000))}-${randomBytes(4).toString('hex')}`;
  const room = 0xffffffff - old;
  const next = old + 1 + (randomBytes(4).readUInt32BE(0) % room);
  return `${m[1]}-${next.toString(16).padStart(8, '0')}`;
}

/** `key` of backup `oldId` under `newId` (same folder, same suffix). */
function renamedKey(key: string, oldId: string, newId: string): string {
  const p = parseKey(key);
  if (!p || p.id !== oldId) throw new IntegrityError(`object ${key} does not belong to backup ${oldId}`, { hint: 'the manifest was swapped; do not trust this backup' });
  return `${key.slice(0, key.lastIndexOf('/') + 1)}${newId}${p.rest}`;
}

async function collect(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/**
 * The first bytes of an object: its whole age header and payload nonce. A rekeyed object's
 * manifest says how long they are (`sha256Bytes`); otherwise 64 KiB, then 1 MiB, then the
 * longest header coffer reads, so that little of the payload is read.
 */
async function readObjectHead(store: ObjectStore, o: StoredObject, signal: AbortSignal): Promise<Buffer> {
  const complete = (b: Buffer): boolean => {
    const mac = b.indexOf('\n--- ');
    const end = mac < 0 ? -1 : b.indexOf(0x0a, mac + 1);
    return end >= 0 && b.length >= end + 1 + NONCE;
  };
  const steps = o.sha256Bytes !== undefined ? [o.sha256Bytes, MAX_HEADER_SIZE + NONCE] : [HEAD_READ, 1024 * 1024, MAX_HEADER_SIZE + NONCE];
  let head: Buffer = Buffer.alloc(0);
  for (const n of steps) {
    const end = Math.min(o.size, n);
    if (end <= head.length) continue;
    head = await collect((await store.get(o.key, { signal, start: 0, end })).body);
    if (complete(head) || head.length >= o.size) break;
  }
  return head;
}

/** The file key of one object, or a clear refusal when the identity cannot unwrap it. */
async function unwrap(store: ObjectStore, o: StoredObject, what: string, backupId: string, identities: string[], signal: AbortSignal) {
  const head = await readObjectHead(store, o, signal);
  let key;
  try {
    key = await readHeaderFileKey(head, identities);
  } catch (err) {
    if (err instanceof IntegrityError && /no identity matches/.test(err.message)) {
      throw new IntegrityError(`rekey: the identity cannot unwrap the file key of backup ${backupId} (${what}): it is not one of its recipients`, {
        hint: 'pass -i with the identity (private key) of a recipient the backup was encrypted to',
      });
    }
    throw err;
  }
  if (head.length < key.headerLength + NONCE) {
    key.fileKey.fill(0);
    throw new IntegrityError(`backup ${backupId} (${what}) is truncated: its object ends right after the age header`);
  }
  return { ...key, nonce: head.subarray(key.headerLength, key.headerLength + NONCE) };
}

/** Rewrites one age object under a new header for `recipients`, keeping its file key and payload. */
async function rekeyObject(req: RekeyRequest, o: StoredObject, what: 'dump' | 'globals', backupId: string, newKey: string, recipients: string[], put: { retention?: ObjectRetention; tags: Record<string, string> }, realStanzas: (n: number) => void): Promise<{ stored: StoredObject; report: RekeyedObject }> {
  const { store, signal } = req;
  const k = await unwrap(store, o, what, backupId, req.identities, signal);
  try {
    realStanzas(k.stanzaTypes.filter((t) => t !== PAD_STANZA_TYPE).length);
    const payloadBytes = o.size - k.headerLength;
    const serverCopy = store.putComposed !== undefined && o.size >= SERVER_COPY_MIN;
    const header = await buildHeader(k.fileKey, recipients, serverCopy ? (store.minComposeHead ?? 0) : 0);
    // The same header without padding, for the report (its stanzas differ: X25519 wrapping is randomised; its length does not).
    const plain = serverCopy ? await buildHeader(k.fileKey, recipients, 0) : header;
    const padBytes = serverCopy ? header.length - plain.length : 0;
    const report = { what, oldKey: o.key, key: newKey, oldHeaderBytes: k.headerLength, headerBytes: header.length, padBytes };
    if (serverCopy) {
      const { size } = await store.putComposed!(newKey, header, { signal, source: { key: o.key, start: k.headerLength, end: o.size }, retention: put.retention, tags: put.tags });
      if (size !== header.length + payloadBytes) throw new IntegrityError(`${what}: the store reports ${size} bytes, expected ${header.length + payloadBytes}`);
      // The bytes through coffer: the header, and the nonce read with the old header. The rest is authenticated by age's AEAD at restore.
      const sha256 = createHash('sha256').update(header).update(k.nonce).digest('hex');
      return { stored: { key: newKey, size, sha256, dumpBytes: o.dumpBytes, sha256Bytes: header.length + NONCE }, report: { ...report, method: 'server-copy', copiedBytes: payloadBytes, size } };
    }
    // Through coffer: the new header, then the old object from its nonce on, hashed on the way.
    const hash = createHash('sha256');
    let stored = 0;
    const tail = (await store.get(o.key, { signal, start: k.headerLength })).body;
    const hasher = new Transform({
      transform(chunk: Buffer, _e, cb) {
        stored += chunk.length;
        hash.update(chunk);
        cb(null, chunk);
      },
    });
    async function* body(): AsyncGenerator<Buffer> {
      yield header;
      for await (const c of tail) yield c as Buffer;
    }
    const stream = pipeline(Readable.from(body()), hasher, () => undefined);
    const { size } = await store.putStream(newKey, stream, { signal, partSize: 8 * 1024 * 1024, queueSize: 2, retention: put.retention, tags: put.tags });
    if (size !== stored || size !== header.length + payloadBytes) throw new IntegrityError(`${what}: ${size} bytes stored, ${stored} sent, ${header.length + payloadBytes} expected`);
    return { stored: { key: newKey, size, sha256: hash.digest('hex'), dumpBytes: o.dumpBytes }, report: { ...report, method: 'rewrite', copiedBytes: 0, size } };
  } finally {
    k.fileKey.fill(0);
  }
}

/** The archive index of the new backup: decrypted, pointed at the new dump (its id, key, size, sha256, header length), encrypted to `recipients`. */
async function rekeyIndex(req: RekeyRequest, m: BackupManifest, newId: string, newKey: string, dump: StoredObject, newHeaderBytes: number, recipients: string[], put: { retention?: ObjectRetention; tags: Record<string, string> }): Promise<{ stored: StoredObject; report: RekeyedObject }> {
  const o = m.index!;
  const { store, signal } = req;
  const cipher = await store.getBytes(o.key, { signal });
  if (cipher.length !== o.size || createHash('sha256').update(cipher).digest('hex') !== o.sha256) {
    throw new IntegrityError(`the archive index of backup ${m.id} does not match its manifest (size or sha256)`, { hint: 'run coffer verify on this backup' });
  }
  let plain: Buffer;
  try {
    const { plaintext } = await openDecryptStream(Readable.from([cipher]), req.identities);
    plain = await collect(plaintext);
  } catch (err) {
    if (err instanceof IntegrityError && /no identity matches/.test(err.message)) throw new IntegrityError(`rekey: the identity cannot unwrap the file key of backup ${m.id} (archive index): it is not one of its recipients`);
    throw err;
  }
  const old: ArchiveIndex = decodeIndex(plain, m.id, m.dump);
  const next: ArchiveIndex = { ...old, backupId: newId, dump: { key: dump.key, size: dump.size, sha256: dump.sha256 }, age: { headerLength: newHeaderBytes } };
  const bytes = encodeIndex(next);
  decodeIndex(bytes, newId, dump);
  const encrypt = await createEncryptStream(recipients);
  const hash = createHash('sha256');
  const hasher = new Transform({
    transform(chunk: Buffer, _e, cb) {
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  const stream = pipeline(Readable.from([bytes]), encrypt, hasher, () => undefined);
  const { size } = await store.putStream(newKey, stream, { signal, partSize: 8 * 1024 * 1024, queueSize: 1, retention: put.retention, tags: put.tags });
  return {
    stored: { key: newKey, size, sha256: hash.digest('hex'), dumpBytes: bytes.length },
    report: { what: 'index', oldKey: o.key, key: newKey, method: 'reencrypt', oldHeaderBytes: 0, headerBytes: encrypt.headerLength, padBytes: 0, copiedBytes: 0, size },
  };
}

/** The manifest of the replacement: the old one with the new objects, recipients and id, naming what it replaces. */
function replacementManifest(e: BackupEntry, oldManifestBytes: Buffer, newId: string, after: string[], dump: StoredObject, globals: StoredObject | null, index: StoredObject | undefined, now: Date, previousManifest: { key: string; sha256: string } | undefined): BackupManifest {
  const m = e.manifest;
  // The old manifest's place in the chain is its own: the replacement chains to the newest
  // signed manifest now (when it is signed), or to nothing.
  const { index: _oldIndex, replaces: _oldReplaces, previousManifest: _oldPrevious, ...rest } = m;
  const file = dump.key.split('/').pop()!;
  return {
    ...rest,
    id: newId,
    encryption: { ...m.encryption, recipients: [...after] },
    dump,
    globals,
    ...(index ? { index } : {}),
    replaces: {
      id: e.id,
      manifestKey: e.manifestKey,
      sha256: createHash('sha256').update(oldManifestBytes).digest('hex'),
      rekeyedAt: now.toISOString(),
      // A rekeyed backup's own predecessors stay replaced when it is deleted (--delete-old).
      ...(m.replaces ? { earlier: replacedIds(m) } : {}),
    },
    manualRestore: m.manualRestore.replace(m.dump.key.split('/').pop()!, file),
    ...(previousManifest ? { previousManifest } : {}),
  };
}

function deniedHint(err: unknown): CofferError | unknown {
  if (err instanceof StorageError && err.code === 'AccessDenied') {
    return new StorageError('AccessDenied', `${err.message} (--delete-old needs s3:DeleteObject: run it with the repository's admin credentials; object lock also refuses deletes until the retention ends)`, {
      cause: err,
      hint: 'the rekeyed backup was written and is complete; without --delete-old the old objects stay until the lifecycle rules expire them',
    });
  }
  return err;
}

/** Selects, plans and (unless dry-run) rekeys. */
export async function runRekey(req: RekeyRequest): Promise<RekeyResult> {
  const now = req.now ?? (() => new Date());
  let entries = await selectBackups(req.store, req.database, req.selector, req.signal);
  await holdAt('hold-rekey', 'selected');
  if (req.dryRun || !req.lock) return rekeySelected(req, entries, now);
  // Under the lock of each database involved, one at a time; then selected again: a rekey that
  // committed meanwhile has replaced the backup (`--backup ID` of it is refused as already
  // replaced; `latest` and `all` now name the replacement).
  const held: Array<{ release(): Promise<void> }> = [];
  try {
    for (const database of [...new Set(entries.map((e) => e.database))].sort()) held.push(await req.lock(database));
    await holdAt('hold-rekey', 'locked');
    entries = await selectBackups(req.store, req.database, req.selector, req.signal);
    return await rekeySelected(req, entries, now);
  } finally {
    for (const h of held.reverse()) await h.release();
  }
}

async function rekeySelected(req: RekeyRequest, entries: BackupEntry[], now: () => Date): Promise<RekeyResult> {
  const plan = planRekey(entries, req.add, req.remove);
  const items: RekeyItemResult[] = [];
  for (const [i, p] of plan.entries()) {
    const e = entries[i]!;
    if (p.action === 'unchanged') {
      req.log.info('rekey: the recipients are already those; nothing to do', { backup: p.id });
      items.push({ ...p, objects: [] });
      continue;
    }
    if (req.dryRun) {
      // The identity is checked even so (reads each object's header only), so that the real run will not fail on it.
      await unwrap(req.store, e.manifest.dump, 'dump', e.id, req.identities, req.signal).then((k) => k.fileKey.fill(0));
      if (e.manifest.globals) await unwrap(req.store, e.manifest.globals, 'globals', e.id, req.identities, req.signal).then((k) => k.fileKey.fill(0));
      items.push({ ...p, objects: [] });
      continue;
    }
    items.push(await rekeyOne(req, e, p, now));
  }
  return { dryRun: req.dryRun, items };
}

async function rekeyOne(req: RekeyRequest, e: BackupEntry, p: RekeyPlanItem, now: () => Date): Promise<RekeyItemResult> {
  const { store, signal, log } = req;
  const m = e.manifest;
  const oldManifestBytes = await store.getBytes(e.manifestKey, { signal });
  // A fresh id whose keys are all free (write-once: a streamed S3 put would replace an object).
  let newId = replacementId(e.id);
  for (let tries = 0; ; tries++) {
    const folder = e.manifestKey.slice(0, e.manifestKey.lastIndexOf('/') + 1);
    let taken = false;
    for await (const _o of store.list(`${folder}${newId}`, { signal })) taken = true;
    if (!taken) break;
    if (tries > 5) throw new StorageError('Failed', `could not find a free id for the replacement of backup ${e.id}`);
    newId = replacementId(e.id);
  }
  const startedAt = new Date(m.startedAt);
  const put = { retention: req.retentionFor?.(e.tier, startedAt), tags: { [TIER_TAG]: e.tier } };
  const newManifestKey = renamedKey(e.manifestKey, e.id, newId);
  if (!newManifestKey.endsWith(MANIFEST_SUFFIX)) throw new IntegrityError(`unexpected manifest key ${e.manifestKey}`);
  log.info('rekey started', { backup: e.id, replacement: newId, before: p.before.length, after: p.after.length });
  if (!req.signer) {
    let signed = false;
    for await (const o of store.list(`${e.manifestKey}.`, { signal })) if (parseSignatureKey(o.key)?.manifestKey === e.manifestKey) signed = true;
    if (signed && req.deleteOld) {
      // The only copy left would be unsigned: trusted restores would refuse it, and the chain
      // through the deleted original would break.
      throw new UsageError(`backup ${e.id} is signed: --delete-old without --signing-key would leave only an unsigned replacement, which restores with --trusted-signers refuse`, { hint: 'pass --signing-key (the key the backups are signed with), or leave out --delete-old' });
    }
    if (signed) log.warn(`backup ${e.id} is signed, but no --signing-key was given: its replacement is not signed, so restores with --trusted-signers refuse it (and use the original while it lasts); pass --signing-key`, { backup: e.id });
  }
  const written: string[] = [];
  const objects: RekeyedObject[] = [];
  let committing = false;
  const checkStanzas = (what: string) => (n: number) => {
    if (n !== p.before.length) log.warn(`rekey: the ${what} header of backup ${e.id} has ${n} recipient stanza${n === 1 ? '' : 's'}, its manifest records ${p.before.length} recipient${p.before.length === 1 ? '' : 's'}; the new header is written for the recorded recipients ± the change`, { backup: e.id });
  };
  try {
    const dumpKey = renamedKey(m.dump.key, e.id, newId);
    const d = await rekeyObject(req, m.dump, 'dump', e.id, dumpKey, p.after, put, checkStanzas('dump'));
    written.push(dumpKey);
    objects.push(d.report);
    let globals: StoredObject | null = null;
    if (m.globals) {
      const gKey = renamedKey(m.globals.key, e.id, newId);
      const g = await rekeyObject(req, m.globals, 'globals', e.id, gKey, p.after, put, checkStanzas('globals'));
      written.push(gKey);
      objects.push(g.report);
      globals = g.stored;
    }
    let index: StoredObject | undefined;
    if (m.index) {
      const iKey = renamedKey(m.index.key, e.id, newId);
      const ix = await rekeyIndex(req, m, newId, iKey, d.stored, d.report.headerBytes, p.after, put);
      written.push(iKey);
      objects.push(ix.report);
      index = ix.stored;
    }
    const previousManifest = req.signer ? await previousSignedManifest(store, e.database, signal) : undefined;
    const manifest = replacementManifest(e, oldManifestBytes, newId, p.after, d.stored, globals, index, now(), previousManifest);
    // The commit, as a backup's: the manifest last, through the same function (and whatever it
    // adds). It removes the objects itself when the manifest was surely not stored.
    committing = true;
    await commitManifest(store, log, newManifestKey, encodeManifest(manifest), { ...put, signer: req.signer }, written);
  } catch (err) {
    if (!committing) {
      for (const k of written) await store.delete(k).catch(() => log.warn('could not remove an object of the failed rekey (it has no manifest, so it is not a backup; lifecycle rules expire it)', { key: k }));
    }
    throw err;
  }
  log.info('rekey complete', { backup: e.id, replacement: newId, key: newManifestKey });
  const result: RekeyItemResult = { ...p, newId, newManifestKey, objects };
  if (req.deleteOld) {
    // The manifest first: the old backup stops being a backup at once, whatever happens to its objects.
    try {
      await store.delete(e.manifestKey);
      for (const k of [m.dump.key, ...(m.globals ? [m.globals.key] : []), ...(m.index ? [m.index.key] : [])]) await store.delete(k);
      // Then its signature sidecars (signed before the manifest was written; without it, leftovers).
      const sigs: string[] = [];
      for await (const o of store.list(`${e.manifestKey}.`, { signal })) if (parseSignatureKey(o.key)?.manifestKey === e.manifestKey) sigs.push(o.key);
      for (const k of sigs) await store.delete(k);
      result.oldDeleted = true;
    } catch (err) {
      throw deniedHint(err);
    }
  }
  return result;
}
