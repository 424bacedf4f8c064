/**
 * Signed manifests in a repository: where a manifest's signature is stored, what the backup
 * host chains a new manifest to, and what a reader with trusted signers makes of a database's
 * manifests (signature state of each, breaks in the chain).
 *
 * Layout: the signature of `<db>/<tier>/<id>.manifest.json` is the sidecar object
 * `<db>/<tier>/<id>.manifest.json.<sha256 of the manifest's bytes, hex>.sig`, an armored SSHSIG
 * (namespace {@link MANIFEST_NAMESPACE}) of the manifest's exact bytes, written before the
 * manifest (the manifest stays the commit point: a signature without its manifest is the
 * leftover of an incomplete run). The sha256 in the name lets the backup host, which may list
 * but never read, name its predecessor's bytes in the chain (`previousManifest`).
 */
import { createHash } from 'node:crypto';
import { IntegrityError, StorageError } from '../errors.js';
import type { ObjectStore } from '../store/object-store.js';
import { databasePrefix, MANIFEST_SUFFIX, parseKey, type Tier } from '../catalog/layout.js';
import { decodeManifest, type BackupManifest } from '../catalog/manifest.js';
import { decodePhysicalManifest } from '../catalog/physical-manifest.js';
import { UNTRUSTED_HINT, type BackupEntry } from '../catalog/catalog.js';
import { findSigner, type TrustedSigners } from './allowed-signers.js';
import { fingerprint, type SigningKey } from './signing-key.js';
import { checkSignature, MANIFEST_NAMESPACE, parseSignature, signMessage } from './sshsig.js';

const SIGNATURE_RE = /^(.+\.manifest\.json)\.([0-9a-f]{64})\.sig$/;

/** The sidecar key of a manifest's signature. */
export function signatureKey(manifestKey: string, manifestSha256: string): string {
  return `${manifestKey}.${manifestSha256}.sig`;
}

/** `{ manifestKey, sha256 }` of a signature's sidecar key; undefined for any other key. */
export function parseSignatureKey(key: string): { manifestKey: string; sha256: string } | undefined {
  const m = SIGNATURE_RE.exec(key);
  return m ? { manifestKey: m[1]!, sha256: m[2]! } : undefined;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** What a backup run signs its manifest with (`backup --signing-key`). */
export interface ManifestSigner {
  /** The sidecar key and armored signature of a manifest's bytes. */
  sign(manifestKey: string, bytes: Uint8Array): { key: string; text: string };
  fingerprint: string;
}

export function manifestSigner(key: SigningKey): ManifestSigner {
  return {
    sign: (manifestKey, bytes) => ({ key: signatureKey(manifestKey, sha256Hex(bytes)), text: signMessage(key, bytes, MANIFEST_NAMESPACE) }),
    fingerprint: fingerprint(key.publicKey),
  };
}

interface ListedManifest {
  key: string;
  id: string;
  tier: Tier;
  /** The sha256 values named by its signature sidecars. */
  signatures: string[];
}

/** A database's manifests and signature sidecars, by one listing (ListBucket only). */
async function listDatabase(store: ObjectStore, database: string, signal?: AbortSignal): Promise<ListedManifest[]> {
  const manifests = new Map<string, ListedManifest>();
  const sigs = new Map<string, string[]>();
  for await (const o of store.list(databasePrefix(database), { signal })) {
    const k = parseKey(o.key);
    if (!k || k.database !== database) continue;
    if (k.rest === MANIFEST_SUFFIX) manifests.set(o.key, { key: o.key, id: k.id, tier: k.tier, signatures: [] });
    else {
      const s = parseSignatureKey(o.key);
      if (s) sigs.set(s.manifestKey, [...(sigs.get(s.manifestKey) ?? []), s.sha256]);
    }
  }
  for (const [k, list] of sigs) {
    const m = manifests.get(k);
    if (m) m.signatures = list.sort();
  }
  return [...manifests.values()].sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
}

/**
 * What a new signed backup of `database` chains to: the newest manifest that has a signature,
 * any kind or tier, with the sha256 its signature's name gives (no GetObject needed).
 * Undefined when there is none (the chain starts here).
 */
export async function previousSignedManifest(store: ObjectStore, database: string, signal?: AbortSignal): Promise<{ key: string; sha256: string } | undefined> {
  const newest = (await listDatabase(store, database, signal)).find((m) => m.signatures.length > 0);
  return newest ? { key: newest.key, sha256: newest.signatures[0]! } : undefined;
}

/** A manifest's signature, as the trusted signers see it. */
export type SignatureState =
  | { state: 'signed'; principals: string; fingerprint: string }
  | { state: 'unsigned' | 'unknown-signer' | 'bad-signature'; problem: string; fingerprint?: string };

/** One manifest of a database, checked. */
export interface CheckedManifest {
  key: string;
  id: string;
  tier: Tier;
  signature: SignatureState;
  /** The break in the chain this manifest's `previousManifest` shows, as one line. */
  chain?: string;
  bytes: Buffer;
}

/** Every manifest of one database, checked (newest first), and the chain's breaks. */
export interface DatabaseTrust {
  database: string;
  manifests: CheckedManifest[];
  chainBreaks: string[];
}

/** `vault/20261201T101010Z-1a2b3c4d`: how messages name a backup. */
function named(database: string, id: string): string {
  return `${database}/${id}`;
}

/**
 * Checks the manifests of a repository against trusted signers (allowed_signers): each
 * manifest's signature, and the chain of each database. Results are cached per database for the
 * run. Needs ListBucket and GetObject.
 */
export class RepositoryTrust {
  private readonly cache = new Map<string, Promise<DatabaseTrust>>();
  constructor(
    private readonly store: ObjectStore,
    readonly trusted: TrustedSigners,
    private readonly signal?: AbortSignal,
    private readonly now: () => Date = () => new Date(),
  ) {}

  /** The checked manifests of `database` (one listing, every manifest and signature read). */
  database(database: string): Promise<DatabaseTrust> {
    let p = this.cache.get(database);
    if (!p) {
      p = this.check(database);
      this.cache.set(database, p);
    }
    return p;
  }

  private async getOrMissing(key: string): Promise<Buffer | undefined> {
    try {
      return Buffer.from(await this.store.getBytes(key, { signal: this.signal }));
    } catch (err) {
      if (err instanceof StorageError && err.code === 'NotFound') return undefined;
      throw err;
    }
  }

  private async signatureOf(m: Pick<ListedManifest, 'key' | 'signatures'>, who: string, bytes: Buffer): Promise<SignatureState> {
    if (m.signatures.length === 0) return { state: 'unsigned', problem: `${who}: unsigned manifest` };
    const sha = sha256Hex(bytes);
    if (!m.signatures.includes(sha)) return { state: 'bad-signature', problem: `${who}: bad signature (the manifest's bytes are not the signed ones)` };
    const text = await this.getOrMissing(signatureKey(m.key, sha));
    if (text === undefined) return { state: 'unsigned', problem: `${who}: unsigned manifest (its signature disappeared)` };
    const sig = parseSignature(text.toString('latin1'));
    if ('problem' in sig) return { state: 'bad-signature', problem: `${who}: bad signature (${sig.problem})` };
    const fp = fingerprint(sig.publicKey);
    const match = findSigner(this.trusted, sig.publicKey, MANIFEST_NAMESPACE, this.now());
    if (!match.ok) return { state: 'unknown-signer', problem: `${who}: ${match.why}`, fingerprint: fp };
    if (!checkSignature(sig, bytes, MANIFEST_NAMESPACE)) return { state: 'bad-signature', problem: `${who}: bad signature (key ${fp})`, fingerprint: fp };
    return { state: 'signed', principals: match.signer.principals, fingerprint: fp };
  }

  private async check(database: string): Promise<DatabaseTrust> {
    const listed = await listDatabase(this.store, database, this.signal);
    const loaded: Array<CheckedManifest | undefined> = new Array(listed.length);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < listed.length) {
        const i = next++;
        const m = listed[i]!;
        const bytes = await this.getOrMissing(m.key);
        if (bytes === undefined) continue; // gone since the listing (expired): as if never listed
        loaded[i] = { key: m.key, id: m.id, tier: m.tier, bytes, signature: await this.signatureOf(m, `backup ${named(database, m.id)}`, bytes) };
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, listed.length) }, worker));
    const manifests = loaded.filter((m): m is CheckedManifest => m !== undefined);
    const byKey = new Map(manifests.map((m) => [m.key, m]));
    const trusted = manifests.filter((m) => m.signature.state === 'signed');
    // Each trusted manifest decoded once: a manifest that does not decode is its own break.
    const chainBreaks: string[] = [];
    const decoded = new Map<CheckedManifest, BackupManifest>();
    for (const m of trusted) {
      try {
        decoded.set(m, decodeManifest(m.bytes, m.key));
      } catch (err) {
        m.chain = `backup ${named(database, m.id)}: ${(err as Error).message}`;
        chainBreaks.push(m.chain);
      }
    }
    // What trusted replacements (coffer rekey) vouch for: a replaced manifest (key and sha256),
    // and the ids it had replaced in turn; removed with --delete-old, it is not a break.
    // Replacements were made later than their ids say (objects expire by creation time).
    const replaced = new Set<string>();
    const replacedIds = new Set<string>();
    const rekeyed = new Set<string>();
    for (const [q, qm] of decoded) {
      const r = qm.replaces;
      if (!r) continue;
      rekeyed.add(q.key);
      replaced.add(`${r.manifestKey}\0${r.sha256}`);
      for (const id of r.earlier ?? []) replacedIds.add(id);
    }
    // Seconds of an id (`20261201T101010Z`): backups started in the same second are not ordered.
    const second = (id: string): string => id.slice(0, id.indexOf('-'));
    for (const [m, mm] of decoded) {
      const prev = mm.previousManifest;
      if (prev === undefined) {
        // Only the first signed backup of the database names none: every later one chains to the
        // newest signed manifest there. So no trusted backup may be older than it, unless made
        // later than its id says (a rekeyed replacement). One that is was not written here (a
        // signed backup of another repository, copied in) or the repository's chain was cut; a
        // copied chain of several has such a root too. Expiry removes older ones only.
        const older = [...decoded.keys()].find((q) => q !== m && !rekeyed.has(q.key) && second(q.id) < second(m.id));
        if (older) {
          m.chain = `chain broken: ${named(database, m.id)} names no previous manifest, but the older signed backup ${named(database, older.id)} is in this repository (only the first signed backup of a database has none: was it copied in from another repository?)`;
          chainBreaks.push(m.chain);
        }
        continue;
      }
      const p = parseKey(prev.key);
      const pName = p ? named(p.database, p.id) : JSON.stringify(prev.key);
      const broken = (what: string): void => {
        m.chain = `chain broken: ${named(database, m.id)} names previous manifest ${pName} ${what}`;
        chainBreaks.push(m.chain);
      };
      if (!p || p.database !== database || p.rest !== MANIFEST_SUFFIX) {
        broken('which is not a manifest of this database');
        continue;
      }
      const found = byKey.get(prev.key);
      if (found) {
        if (sha256Hex(found.bytes) !== prev.sha256) broken('whose bytes no longer match the sha256 it recorded');
        // The writer chains to the newest manifest with a signature beside it, by name only (it
        // needs no read access): one planted with a junk signature would cut the chain there.
        else if (found.signature.state !== 'signed') broken(`which is not signed by a trusted key (${found.signature.state})`);
        continue;
      }
      // Missing, but replaced by a trusted rekey, which then removed it (--delete-old).
      if (replaced.has(`${prev.key}\0${prev.sha256}`) || replacedIds.has(p.id)) continue;
      // Missing. Expiry (lifecycle rules, prune) removes a tier's backups oldest first: while an
      // older trusted backup of the predecessor's tier is still there, the predecessor was removed
      // out of turn. With none, it expired (the oldest of the chain may name an expired one).
      const olderSameTier = trusted.some((q) => q.tier === p.tier && q.id < p.id && !rekeyed.has(q.key));
      if (olderSameTier) broken('which is missing');
    }
    return { database, manifests, chainBreaks };
  }

  /**
   * The signature of a physical backup's manifest (signed like a logical one, not chained),
   * checked on the manifest's own bytes. Throws IntegrityError when the manifest is gone or is not
   * the one `entry.manifest` was decoded from.
   */
  async physicalSignature(store: ObjectStore, entry: { cluster: string; id: string; manifestKey: string; manifest: object }, signal?: AbortSignal): Promise<SignatureState> {
    const who = `physical backup ${entry.cluster}/${entry.id}`;
    const signatures: string[] = [];
    for await (const o of store.list(entry.manifestKey, { signal })) {
      const s = parseSignatureKey(o.key);
      if (s && s.manifestKey === entry.manifestKey) signatures.push(s.sha256);
    }
    const bytes = await this.getOrMissing(entry.manifestKey);
    if (bytes === undefined) throw new IntegrityError(`${who}: its manifest disappeared while it was being checked`);
    if (JSON.stringify(decodePhysicalManifest(bytes, entry.manifestKey)) !== JSON.stringify(entry.manifest)) {
      throw new IntegrityError(`${who}: its manifest changed while it was being read`, { hint: 'manifests are written once; find out who rewrote it' });
    }
    return this.signatureOf({ key: entry.manifestKey, signatures }, who, bytes);
  }

  /**
   * Whether a backup chosen by the catalog may be used: undefined when it is signed by a trusted
   * signer (the reason as one line otherwise). Throws IntegrityError when the database's chain is
   * broken, or the manifest read by the catalog is not the one checked here.
   */
  async untrustedBecause(entry: BackupEntry): Promise<string | undefined> {
    const t = await this.database(entry.database);
    const m = t.manifests.find((x) => x.key === entry.manifestKey);
    if (!m) throw new IntegrityError(`backup ${named(entry.database, entry.id)}: its manifest disappeared while it was being checked`);
    if (JSON.stringify(decodeManifest(m.bytes, m.key)) !== JSON.stringify(entry.manifest)) {
      throw new IntegrityError(`backup ${named(entry.database, entry.id)}: its manifest changed while it was being read`, { hint: 'manifests are written once; find out who rewrote it' });
    }
    if (m.signature.state !== 'signed') return m.signature.problem;
    if (t.chainBreaks.length > 0) throw chainError(t.chainBreaks);
    return undefined;
  }
}

/** The error for a database's chain breaks: the first, and how many more. */
export function chainError(breaks: string[]): IntegrityError {
  const more = breaks.length > 1 ? ` (and ${breaks.length - 1} more)` : '';
  return new IntegrityError(`${breaks[0]}${more}`, { hint: 'a backup was removed, changed or copied in out of turn; run coffer list --verify-signatures to see every problem' });
}

/** The error for one untrusted backup. */
export function untrustedError(why: string): IntegrityError {
  return new IntegrityError(why, { hint: UNTRUSTED_HINT });
}
