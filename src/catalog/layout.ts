import { randomBytes } from 'node:crypto';
import { UsageError } from '../errors.js';

/**
 * Object layout inside a repository (below the S3 prefix or directory):
 *
 *   <database>/<tier>/<id>.<content suffix>.age     the encrypted dump
 *   <database>/<tier>/<id>.globals.sql.age          roles and tablespaces (when asked)
 *   <database>/<tier>/<id>.index.json.age           where each table's data lies (custom + zstd)
 *   <database>/<tier>/<id>.manifest.json            written last: the commit marker
 *
 * `<id>` is `YYYYMMDDTHHMMSSZ-<8 hex>`: UTC start time plus a random suffix, so concurrent or
 * retried runs never share a key. The tier is a key prefix so that prefix-only lifecycle rules
 * work on every provider. Database names are percent-encoded so any name maps to one segment.
 */

export const TIERS = ['daily', 'weekly', 'monthly', 'manual'] as const;
export type Tier = (typeof TIERS)[number];

export const BACKUP_ID_RE = /^(\d{8}T\d{6}Z)-([0-9a-f]{8})$/;
export const MANIFEST_SUFFIX = '.manifest.json';

export function isTier(s: string): s is Tier {
  return (TIERS as readonly string[]).includes(s);
}

/** A new backup id for a run started at `now`. */
export function newBackupId(now: Date): string {
  return `${compactTimestamp(now)}-${randomBytes(4).toString('hex')}`;
}

/** `2026-11-26T02:22:09.123Z` → `20261126T022209Z`. */
export function compactTimestamp(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z').replace(/[-:]/g, '');
}

/** The start time encoded in a backup id. */
export function backupIdTime(id: string): Date {
  const m = BACKUP_ID_RE.exec(id);
  if (!m) throw new UsageError(`invalid backup id ${JSON.stringify(id)}`, { hint: 'ids look like 20261126T022209Z-1a2b3c4d; run `coffer list`' });
  const t = m[1]!;
  return new Date(`${t.slice(0, 4)}-${t.slice(4, 6)}-${t.slice(6, 8)}T${t.slice(9, 11)}:${t.slice(11, 13)}:${t.slice(13, 15)}Z`);
}

/** Validates a user-supplied backup id (or `latest`). */
export function parseBackupSelector(s: string): string {
  const t = s.trim();
  if (t === 'latest') return t;
  backupIdTime(t);
  return t;
}

/** Percent-encodes a database name into one key segment (reversible, ASCII only). */
export function encodeDbSegment(db: string): string {
  let out = '';
  for (const byte of Buffer.from(db, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9_-]/.test(c) || (c === '.' && out !== '') ? c : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function decodeDbSegment(seg: string): string {
  return decodeURIComponent(seg);
}

/** What the dump object holds, from the compression used; the suffix says it. */
export type DumpContent = 'custom' | 'custom+zstd' | 'sql' | 'sql+zstd';
const CONTENT_SUFFIX: Record<DumpContent, string> = {
  custom: 'dump',
  'custom+zstd': 'dump.zst',
  sql: 'sql',
  'sql+zstd': 'sql.zst',
};

export interface BackupKeys {
  dump: string;
  globals: string;
  /** The archive index (where each table's data lies), encrypted like the dump. */
  index: string;
  manifest: string;
}

export function backupKeys(db: string, tier: Tier, id: string, content: DumpContent): BackupKeys {
  const base = `${encodeDbSegment(db)}/${tier}/${id}`;
  return {
    dump: `${base}.${CONTENT_SUFFIX[content]}.age`,
    globals: `${base}.globals.sql.age`,
    index: `${base}.index.json.age`,
    manifest: `${base}${MANIFEST_SUFFIX}`,
  };
}

export interface ParsedKey {
  database: string;
  tier: Tier;
  id: string;
  /** What follows the id, e.g. `.manifest.json` or `.dump.zst.age`. */
  rest: string;
}

/** Parses a key written by coffer; `undefined` for anything else (never touched by prune). */
export function parseKey(key: string): ParsedKey | undefined {
  const parts = key.split('/');
  if (parts.length !== 3) return undefined;
  const [dbSeg, tier, file] = parts as [string, string, string];
  if (!isTier(tier)) return undefined;
  const m = /^(\d{8}T\d{6}Z-[0-9a-f]{8})(\..+)$/.exec(file);
  if (!m) return undefined;
  let database: string;
  try {
    database = decodeDbSegment(dbSeg);
  } catch {
    return undefined;
  }
  if (encodeDbSegment(database) !== dbSeg) return undefined;
  return { database, tier, id: m[1]!, rest: m[2]! };
}

/**
 * Drill records (`coffer drill --record`): `<database>/drills/<drill id>.drill.json`, plain JSON
 * of times and sizes (no data, no table names). Not a tier: lifecycle rules and prune leave them.
 */
export function drillKey(db: string, drillId: string): string {
  return `${drillPrefix(db)}${drillId}.drill.json`;
}

/** Parses a drill record's key; `undefined` for anything else. */
export function parseDrillKey(key: string): { database: string; id: string } | undefined {
  const m = /^([^/]+)\/drills\/(\d{8}T\d{6}Z-[0-9a-f]{8})\.drill\.json$/.exec(key);
  if (!m) return undefined;
  try {
    const database = decodeDbSegment(m[1]!);
    return encodeDbSegment(database) === m[1] ? { database, id: m[2]! } : undefined;
  } catch {
    return undefined;
  }
}

/** Key prefix of one database's drill records. */
export function drillPrefix(db: string): string {
  return `${encodeDbSegment(db)}/drills/`;
}

/** Key prefix holding every backup of one database (`''` for all). */
export function databasePrefix(db?: string): string {
  return db === undefined ? '' : `${encodeDbSegment(db)}/`;
}
