/**
 * Multipart part sizes: from the database size (4x headroom, at least 8 MiB, whole MiB), within
 * S3's limits and node's largest Buffer (a part is one Buffer in memory: 4 GiB on Node 20).
 */
import { constants as bufferConstants } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import { chooseQueueSize, choosePartSize, MAX_PART_SIZE, parseByteSize } from '../../src/pipeline/part-size.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

describe('choosePartSize', () => {
  it('is 8 MiB for small databases, and grows so that the stream fits in the parts', () => {
    expect(choosePartSize(0, 10_000)).toBe(8 * MiB);
    expect(choosePartSize(2.14e9, 10_000)).toBe(8 * MiB);
    const big = 100 * GiB;
    const size = choosePartSize(big, 10_000);
    expect(size % MiB).toBe(0);
    expect(size * 10_000).toBeGreaterThanOrEqual(big * 4);
    expect(choosePartSize(2.14e9, 1000)).toBe(9 * MiB);
  });

  it('never exceeds the largest Buffer node can allocate, nor S3 limits', () => {
    expect(MAX_PART_SIZE).toBeLessThanOrEqual(bufferConstants.MAX_LENGTH);
    expect(MAX_PART_SIZE).toBeLessThanOrEqual(5 * GiB);
    // A database so large that its parts would pass the cap: a usage error, before anything starts.
    expect(() => choosePartSize((MAX_PART_SIZE * 10_000) / 4 + 1, 10_000)).toThrow(/too large for 10000 parts/);
    expect(() => choosePartSize(0, 10_000, 5 * GiB)).toThrow(/--part-size must be between 5MiB and 4GiB/);
    expect(choosePartSize(0, 10_000, MAX_PART_SIZE)).toBe(MAX_PART_SIZE);
    expect(() => choosePartSize(0, 10_000, 4 * MiB)).toThrow(/--part-size/);
    expect(() => choosePartSize(0, 10_001)).toThrow(/--max-parts/);
  });

  it('queues about 64 MiB of parts, at least one', () => {
    expect(chooseQueueSize(8 * MiB)).toBe(4);
    expect(chooseQueueSize(32 * MiB)).toBe(2);
    expect(chooseQueueSize(GiB)).toBe(1);
  });

  it('parses sizes', () => {
    expect(parseByteSize('16MiB', 'x')).toBe(16 * MiB);
    expect(parseByteSize('1GiB', 'x')).toBe(GiB);
    expect(parseByteSize('5242880', 'x')).toBe(5 * MiB);
    expect(() => parseByteSize('lots', '--part-size')).toThrow(/--part-size: invalid size/);
  });
});
