/**
 * What a custom-format archive says about itself, read from the stream (no pg_restore needed):
 * its header (format version, the server and pg_dump versions), its table of contents as
 * names (decoded from the archive's encoding), and each table's data size.
 *
 * Format versions (src/bin/pg_dump/pg_backup_archiver.h): 1.14 is written by pg_dump 12–15,
 * 1.15 by 16, 1.16 by 17 and 18. A pg_restore reads archives up to the version its own pg_dump
 * writes ("unsupported version (1.15) in file header" otherwise).
 */
import type { ArchiveLayout, ArchiveTocEntry } from './archive-offsets.js';

export interface ArchiveHeader {
  /** e.g. [1, 14, 0] */
  version: [number, number, number];
  /** e.g. "1.14" */
  versionText: string;
  /** The source server's version string, when the header's strings fit in the bytes read. */
  serverVersion?: string;
  pgDumpVersion?: string;
  dbname?: string;
}

/**
 * The header of a custom archive from its first bytes (`PGDMP`, three version bytes, int and
 * offset sizes, format, compression, creation time, then three strings). Only the version bytes
 * are required; the strings are read when the bytes hold them and the layout is one this code
 * knows (4-byte ints). `undefined` when the bytes are not a custom archive's.
 */
export function parseArchiveHeader(head: Buffer): ArchiveHeader | undefined {
  if (head.length < 8 || head.subarray(0, 5).toString('latin1') !== 'PGDMP') return undefined;
  const version: [number, number, number] = [head[5]!, head[6]!, head[7]!];
  const out: ArchiveHeader = { version, versionText: `${version[0]}.${version[1]}` };
  const intSize = head[8];
  if (intSize !== 4 || version[0] !== 1 || version[1] < 14) return out;
  let p = 11 + (version[1] >= 15 ? 1 : 1 + intSize) + 7 * (1 + intSize);
  const strs: string[] = [];
  for (let k = 0; k < 3; k++) {
    if (p + 1 + intSize > head.length) return out;
    const len = head.readUInt32LE(p + 1) * (head[p] === 1 ? -1 : 1);
    p += 1 + intSize;
    if (len < 0) {
      strs.push('');
      continue;
    }
    if (p + len > head.length) return out;
    strs.push(head.subarray(p, p + len).toString('utf8'));
    p += len;
  }
  return { ...out, dbname: strs[0], serverVersion: strs[1], pgDumpVersion: strs[2] };
}

/** The archive format version a pg_dump (or pg_restore) of this major version writes (and reads up to). */
export function archiveMinorOf(pgMajor: number): number {
  if (pgMajor >= 17) return 16;
  if (pgMajor >= 16) return 15;
  if (pgMajor >= 12) return 14;
  if (pgMajor >= 11) return 13;
  return 12;
}

/** The oldest PostgreSQL major version whose pg_restore reads this archive format version (1.minor). */
export function pgMajorReading(minor: number): number {
  if (minor <= 14) return minor <= 13 ? 11 : 12;
  if (minor === 15) return 16;
  return 17 + Math.max(0, minor - 16);
}

/** A TOC entry with its names decoded. */
export interface TocObject {
  dumpId: number;
  desc: string;
  namespace: string;
  tag: string;
  owner: string;
  deps: number[];
  /** The entry announces a data block (TABLE DATA, SEQUENCE SET has none: its value is in the statement). */
  hasData: boolean;
}

/**
 * Archive text kept as bytes one per character (latin1), as text: UTF-8 for an archive in UTF8
 * (or SQL_ASCII, taken as UTF-8); the bytes as they are for other encodings.
 */
export function decodeArchiveText(s: string, encoding: string | undefined): string {
  const enc = encoding?.toUpperCase();
  return enc === undefined || enc === 'UTF8' || enc === 'SQL_ASCII' ? Buffer.from(s, 'latin1').toString('utf8') : s;
}

/**
 * The archive's entries with their names decoded: the scanner keeps bytes one per character
 * (latin1); an archive whose ENCODING entry says UTF8 (or SQL_ASCII, taken as UTF-8) has UTF-8
 * names.
 */
export function decodeToc(entries: ArchiveTocEntry[], encodingDefn?: string): TocObject[] {
  const enc = /client_encoding\s*=\s*'([^']*)'/i.exec(encodingDefn ?? '')?.[1];
  const dec = (s: string): string => decodeArchiveText(s, enc);
  return entries.map((e) => ({
    dumpId: e.dumpId,
    desc: e.desc,
    namespace: dec(e.namespace),
    tag: dec(e.tag),
    owner: dec(e.owner),
    deps: e.deps,
    hasData: e.dataState !== 3,
  }));
}

/**
 * Bytes of each data block in the archive (its header, chunk lengths and payload: the COPY
 * text, compressed if pg_dump compressed it), by dump id: from one block's start to the next's.
 */
export function dataBlockSizes(layout: ArchiveLayout): Map<number, number> {
  const starts = [...layout.blocks.entries()].sort((a, b) => a[1] - b[1]);
  const sizes = new Map<number, number>();
  starts.forEach(([id, start], i) => sizes.set(id, (i + 1 < starts.length ? starts[i + 1]![1] : layout.size) - start));
  return sizes;
}
