import { constants as bufferConstants } from 'node:buffer';
import { UsageError } from '../errors.js';

const MiB = 1024 * 1024;
const MIN_PART_SIZE = 5 * MiB; // S3's minimum for every part but the last
/** S3 allows 5 GiB, but a part is one Buffer in memory, and node's largest is 4 GiB (Node 20). */
export const MAX_PART_SIZE = Math.min(5 * 1024 * MiB, bufferConstants.MAX_LENGTH);
const MAX_TEXT = MAX_PART_SIZE % (1024 * MiB) === 0 ? `${MAX_PART_SIZE / (1024 * MiB)}GiB` : `${Math.floor(MAX_PART_SIZE / MiB)}MiB`;
const DEFAULT_MIN_PART_SIZE = 8 * MiB;
/** Planned headroom: the stream may be this many times the database's on-disk size. */
const SIZE_HEADROOM = 4;

/**
 * Multipart part size for a stream expected to be at most `expectedBytes × SIZE_HEADROOM`,
 * so that it fits in `maxParts` parts, rounded up to whole MiB, at least 8 MiB. An explicit
 * `--part-size` wins but is checked against S3's limits.
 */
export function choosePartSize(expectedBytes: number, maxParts: number, explicit?: number): number {
  if (!Number.isInteger(maxParts) || maxParts < 1 || maxParts > 10_000) {
    throw new UsageError(`--max-parts must be a whole number from 1 to 10000 (got ${maxParts})`);
  }
  if (explicit !== undefined) {
    if (!Number.isFinite(explicit) || explicit < MIN_PART_SIZE || explicit > MAX_PART_SIZE) {
      throw new UsageError(`--part-size must be between 5MiB and ${MAX_TEXT} (got ${explicit} bytes)`);
    }
    return Math.floor(explicit);
  }
  const needed = Math.ceil((Math.max(0, expectedBytes) * SIZE_HEADROOM) / maxParts);
  const size = Math.max(DEFAULT_MIN_PART_SIZE, Math.ceil(needed / MiB) * MiB);
  if (size > MAX_PART_SIZE) {
    throw new UsageError(`the database is too large for ${maxParts} parts of at most ${MAX_TEXT}`, { hint: 'raise --max-parts (at most 10000)' });
  }
  return size;
}

/** Parts uploaded in parallel: about 64 MiB in flight at most, at least 1. */
export function chooseQueueSize(partSize: number): number {
  return Math.max(1, Math.min(4, Math.floor((64 * MiB) / partSize)));
}

/** Parses sizes such as `8MiB`, `16M`, `1GiB`, `5242880`. */
export function parseByteSize(s: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$/.exec(s);
  if (!m) throw new UsageError(`${what}: invalid size ${JSON.stringify(s)}`, { hint: 'use e.g. 16MiB, 1GiB or a number of bytes' });
  const mult = { '': 1, k: 1024, m: MiB, g: 1024 * MiB, t: 1024 * 1024 * MiB }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.round(Number(m[1]) * mult);
}
