import { IntegrityError } from '../errors.js';
import { isTier, type Tier, BACKUP_ID_RE } from './layout.js';
import type { DatabaseLocale } from '../pg/database-props.js';

const MANIFEST_FORMAT = 'coffer-backup-manifest';
const MANIFEST_VERSION = 1;

/** How the dump object was compressed before encryption. */
export type Compression =
  | { kind: 'zstd'; level: number } // pg_dump -Z0, compressed outside with zstd
  | { kind: 'pgdump-gzip'; level: number } // compressed by pg_dump itself (custom format)
  | { kind: 'none' };

export interface StoredObject {
  key: string;
  /** Bytes stored (ciphertext). */
  size: number;
  /** sha256 of the stored bytes, hex (of the first {@link sha256Bytes} bytes only, when that is set). */
  sha256: string;
  /** Bytes produced by pg_dump (before compression and encryption). */
  dumpBytes: number;
  /**
   * Set on an object that `coffer rekey` wrote by a server-side copy, whose bytes never passed
   * through coffer: `sha256` then covers only the first `sha256Bytes` bytes, the age header and
   * the 16-byte payload nonce. The header pins the file key (its MAC), and every payload chunk
   * is authenticated by age's AEAD under the key derived from that file key and nonce, in order,
   * the last one flagged: a payload that was modified, cut or swapped fails decryption. Absent:
   * `sha256` covers the whole object.
   */
  sha256Bytes?: number;
}

/** `coffer rekey`: the backup whose objects this one re-wrapped (same data, other recipients). */
export interface ReplacedBackup {
  id: string;
  manifestKey: string;
  /** sha256 of the replaced manifest's bytes. */
  sha256: string;
  /** When the rekey ran (the backup keeps its startedAt/finishedAt). */
  rekeyedAt: string;
  /** The backups `id` itself replaced, oldest first (a rekey of a rekeyed backup): replaced by this one as well. */
  earlier?: string[];
}

/** The commit marker of a backup: written last; holds no secrets and no row data. */
export interface BackupManifest {
  format: typeof MANIFEST_FORMAT;
  formatVersion: typeof MANIFEST_VERSION;
  id: string;
  database: string;
  tier: Tier;
  label: string | null;
  /** `custom` = pg_dump -Fc archive; `schema-only` / `data-only` = plain SQL. */
  kind: 'custom' | 'schema-only' | 'data-only';
  cofferVersion: string;
  host: string;
  postgres: {
    serverVersion: string;
    serverVersionNum: number;
    pgDumpVersion: string;
    /** The pg_dump command prefix (binary or wrapper), without arguments or secrets. */
    pgDumpCommand: string[];
    databaseSizeBytes: number;
    /** Tables of the database when the backup started (absent in manifests of coffer < 0.2). */
    tables?: number;
    /** The database's encoding and locale (absent in manifests of coffer < 0.2); restores of plain-SQL backups use them. */
    locale?: DatabaseLocale;
  };
  compression: Compression;
  encryption: { format: 'age-v1'; recipients: string[] };
  dump: StoredObject;
  globals: StoredObject | null;
  /** The archive index (../catalog/archive-index.ts): where each table's data lies; absent when the backup has none. */
  index?: StoredObject;
  /** What shaped the content beyond the kind (absent in manifests of earlier coffer versions). */
  dumpOptions?: {
    /** pg_dump --disable-triggers (data-only backups): loading disables all triggers, foreign keys included. */
    disableTriggers: boolean;
    /** The --exclude-table-data patterns given to pg_dump: the user's, then one per partition of a partitioned table they match. */
    excludeTableData: string[];
  };
  /**
   * Warnings of the run, one line each: pg_dump's own (`pg_dump: …`, e.g. circular foreign keys
   * in a data-only backup) and coffer's (an excluded table that a foreign key references).
   * Absent in manifests of earlier coffer versions.
   */
  warnings?: string[];
  /**
   * The chain (signed backups only): the newest signed manifest of the same database when this
   * backup ran, any kind or tier, and the sha256 (hex) of its exact bytes. Absent in the first
   * signed backup of a database, in unsigned backups, and in manifests of earlier coffer versions.
   */
  previousManifest?: { key: string; sha256: string };
  /** Set by `coffer rekey`: this backup is the backup `replaces.id` with a new age header (its recipients changed). */
  replaces?: ReplacedBackup;
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  /** The standard tools that read this backup by hand. */
  manualRestore: string;
}

/** Serializes a manifest, logical or physical (stable, human-readable). */
export function encodeManifest(m: BackupManifest | object): Buffer {
  return Buffer.from(`${JSON.stringify(m, null, 2)}\n`, 'utf8');
}

/**
 * Parses and validates a manifest. Throws IntegrityError naming the key and the first problem:
 * not JSON, another format, a newer format version, a missing or mistyped field.
 */
export function decodeManifest(bytes: Uint8Array, key: string): BackupManifest {
  const { v, bad } = openManifest(bytes, key, MANIFEST_FORMAT, MANIFEST_VERSION);
  str(v, 'id', bad);
  if (!BACKUP_ID_RE.test(v.id as string)) bad(`invalid id ${JSON.stringify(v.id)}`);
  str(v, 'database', bad);
  str(v, 'tier', bad);
  if (!isTier(v.tier as string)) bad(`invalid tier ${JSON.stringify(v.tier)}`);
  if (v.label !== null && typeof v.label !== 'string') bad('label must be a string or null');
  if (!['custom', 'schema-only', 'data-only'].includes(v.kind as string)) bad(`invalid kind ${JSON.stringify(v.kind)}`);
  str(v, 'startedAt', bad);
  str(v, 'finishedAt', bad);
  if (!isObj(v.postgres)) bad('missing postgres');
  if (!isObj(v.compression) || !['zstd', 'pgdump-gzip', 'none'].includes((v.compression as Record<string, unknown>).kind as string)) bad('missing or invalid compression');
  if (!isObj(v.encryption) || !Array.isArray((v.encryption as Record<string, unknown>).recipients)) bad('missing encryption.recipients');
  checkObject(v.dump, 'dump', bad);
  if (v.globals !== null && v.globals !== undefined) checkObject(v.globals, 'globals', bad);
  if (v.index !== undefined) checkObject(v.index, 'index', bad);
  if (v.replaces !== undefined) {
    const r = v.replaces as Record<string, unknown>;
    if (!isObj(r) || typeof r.id !== 'string' || !BACKUP_ID_RE.test(r.id) || typeof r.manifestKey !== 'string' || typeof r.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(r.sha256) || typeof r.rekeyedAt !== 'string' || (r.earlier !== undefined && (!Array.isArray(r.earlier) || r.earlier.some((x) => typeof x !== 'string' || !BACKUP_ID_RE.test(x))))) bad('invalid replaces');
  }
  if (v.warnings !== undefined && (!Array.isArray(v.warnings) || v.warnings.some((w) => typeof w !== 'string'))) bad('warnings must be a list of strings');
  if (v.previousManifest !== undefined) {
    const p = v.previousManifest;
    if (!isObj(p) || typeof p.key !== 'string' || p.key === '' || typeof p.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(p.sha256)) bad('invalid previousManifest');
  }
  if (v.dumpOptions !== undefined) {
    const o = v.dumpOptions as Record<string, unknown>;
    if (!isObj(o) || typeof o.disableTriggers !== 'boolean' || !Array.isArray(o.excludeTableData)) bad('invalid dumpOptions');
  }
  return { ...(v as unknown as BackupManifest), globals: (v.globals as StoredObject | undefined) ?? null };
}

/**
 * The first checks of every manifest: JSON, an object, the format and a version this coffer
 * reads. Returns the object and the function that throws IntegrityError naming the key.
 */
export function openManifest(bytes: Uint8Array, key: string, format: string, version: number): { v: Record<string, unknown>; bad: (what: string) => never } {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new IntegrityError(`manifest ${key} is not valid JSON`, { hint: 'the object is corrupt or was not written by coffer' });
  }
  const bad = (what: string): never => {
    throw new IntegrityError(`manifest ${key}: ${what}`);
  };
  if (!isObj(v)) return bad('not a JSON object');
  if (v.format !== format) return bad(`unknown format ${JSON.stringify(v.format)}`);
  if (v.formatVersion !== version) return bad(`format version ${JSON.stringify(v.formatVersion)} is not supported by this coffer (supports ${version}); upgrade coffer`);
  return { v, bad };
}

/** A stored object's entry in a manifest: key, size, sha256. */
export function checkObject(o: unknown, name: string, bad: (w: string) => never): void {
  if (!isObj(o)) bad(`missing ${name}`);
  const r = o as Record<string, unknown>;
  if (typeof r.key !== 'string' || r.key === '') bad(`${name}.key missing`);
  if (typeof r.size !== 'number' || !Number.isSafeInteger(r.size) || r.size < 0) bad(`${name}.size invalid`);
  if (typeof r.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(r.sha256)) bad(`${name}.sha256 invalid`);
  if (r.sha256Bytes !== undefined && (typeof r.sha256Bytes !== 'number' || !Number.isSafeInteger(r.sha256Bytes) || r.sha256Bytes <= 0 || r.sha256Bytes > (r.size as number))) bad(`${name}.sha256Bytes invalid`);
}

export function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(v: Record<string, unknown>, k: string, bad: (w: string) => never): void {
  if (typeof v[k] !== 'string' || v[k] === '') bad(`missing ${k}`);
}
