import { checkObject, encodeManifest, isObj, openManifest } from './manifest.js';
import { BACKUP_ID_RE, isTier, type Tier } from './layout.js';
import type { PhysicalKind } from './cluster-layout.js';

const FORMAT = 'coffer-physical-manifest';
const VERSION = 1;

/** One stored, encrypted object of a physical backup. */
export interface PhysicalObject {
  key: string;
  /** Bytes stored (ciphertext). */
  size: number;
  /** sha256 of the stored bytes, hex. */
  sha256: string;
  /** Plaintext bytes (the tar stream, or the attached file) before compression and encryption. */
  plainBytes: number;
}

/** A file stored beside the backup (`--attach`), encrypted to the same recipients, not compressed. */
export interface Attachment extends PhysicalObject {
  /** The file's base name as given. */
  name: string;
  /** sha256 of the plaintext file, hex. */
  plainSha256: string;
}

/**
 * The commit marker of a physical backup of a cluster: written last; holds no secrets and no
 * row data. `basebackup`: `pg_basebackup -D - -Ft -X fetch` of a running server (self-contained:
 * the WAL it needs is inside the tar). `volume`: a tar of a stopped cluster's data directory.
 */
export interface PhysicalManifest {
  format: typeof FORMAT;
  formatVersion: typeof VERSION;
  id: string;
  cluster: string;
  tier: Tier;
  label: string | null;
  kind: PhysicalKind;
  cofferVersion: string;
  host: string;
  postgres: {
    /** Major version of the cluster (PG_VERSION): a restore refuses binaries of another major. */
    majorVersion: number;
    /** `server_version` of the running server (basebackup only). */
    serverVersion?: string;
    serverVersionNum?: number;
    /** pg_control's database system identifier (decimal string). */
    systemIdentifier?: string;
    /** The program that produced the tar (pg_basebackup, tar, or a --tar-command), without secrets. */
    command: string[];
    /** The role pg_basebackup connected as (basebackup only): a role that exists in the restored cluster. */
    role?: string;
    /** `pg_basebackup --version` / `tar --version` first line. */
    toolVersion?: string;
  };
  /** The WAL a basebackup needs (all inside its tar with -X fetch). Absent for a volume archive. */
  wal?: {
    timeline: number;
    startLsn: string;
    stopLsn: string;
    /** First and last segment the backup spans (what restore needs before any archived WAL). */
    startSegment: string;
    stopSegment: string;
  };
  /** sha256 (hex) of the backup_manifest PostgreSQL wrote into the tar, when there is one. */
  backupManifestSha256?: string;
  compression: { kind: 'zstd'; level: number };
  encryption: { format: 'age-v1'; recipients: string[] };
  archive: PhysicalObject;
  attachments: Attachment[];
  warnings: string[];
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  /** The standard tools that read this backup by hand. */
  manualRestore: string;
}

export function encodePhysicalManifest(m: PhysicalManifest): Buffer {
  return encodeManifest(m);
}

/** Parses and validates a physical manifest; IntegrityError naming the key and the first problem. */
export function decodePhysicalManifest(bytes: Uint8Array, key: string): PhysicalManifest {
  const { v, bad } = openManifest(bytes, key, FORMAT, VERSION);
  if (typeof v.id !== 'string' || !BACKUP_ID_RE.test(v.id)) bad(`invalid id ${JSON.stringify(v.id)}`);
  if (typeof v.cluster !== 'string' || v.cluster === '') bad('missing cluster');
  if (typeof v.tier !== 'string' || !isTier(v.tier)) bad(`invalid tier ${JSON.stringify(v.tier)}`);
  if (v.kind !== 'basebackup' && v.kind !== 'volume') bad(`invalid kind ${JSON.stringify(v.kind)}`);
  const pg = v.postgres;
  if (!isObj(pg) || typeof pg.majorVersion !== 'number' || !Number.isInteger(pg.majorVersion)) bad('missing postgres.majorVersion');
  if (!isObj(v.encryption) || !Array.isArray(v.encryption.recipients)) bad('missing encryption.recipients');
  if (!isObj(v.compression) || v.compression.kind !== 'zstd') bad('missing or invalid compression');
  checkObject(v.archive, 'archive', bad);
  if (!Array.isArray(v.attachments)) bad('missing attachments');
  (v.attachments as unknown[]).forEach((a, i) => {
    checkObject(a, `attachments[${i}]`, bad);
    const r = a as Record<string, unknown>;
    if (typeof r.name !== 'string' || r.name === '' || r.name === '.' || r.name === '..' || /[/\0]/.test(r.name)) bad(`attachments[${i}].name invalid`);
  });
  if (v.kind === 'basebackup') {
    const w = v.wal;
    if (!isObj(w) || typeof w.timeline !== 'number' || typeof w.startLsn !== 'string' || typeof w.stopLsn !== 'string' || typeof w.startSegment !== 'string' || typeof w.stopSegment !== 'string') bad('missing or invalid wal');
  }
  if (!Array.isArray(v.warnings)) bad('missing warnings');
  if (typeof v.startedAt !== 'string' || typeof v.finishedAt !== 'string') bad('missing startedAt/finishedAt');
  return v as unknown as PhysicalManifest;
}
