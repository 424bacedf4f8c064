/** The system identifier in a WAL segment's long page header, in either byte order; anything else is no header. */
import { describe, expect, it } from 'vitest';
import { segmentSystemId, WAL_LONG_HEADER_BYTES } from '../../src/physical/system-marker.js';

const SEG = 16 * 1024 * 1024;
const ID = 7441859105219391234n;

function header(order: 'LE' | 'BE', o: { info?: number; segSize?: number; blcksz?: number; sysid?: bigint } = {}): Buffer {
  const b = Buffer.alloc(WAL_LONG_HEADER_BYTES);
  const le = order === 'LE';
  const u16 = (v: number, at: number) => (le ? b.writeUInt16LE(v, at) : b.writeUInt16BE(v, at));
  const u32 = (v: number, at: number) => (le ? b.writeUInt32LE(v, at) : b.writeUInt32BE(v, at));
  u16(0xd110, 0);
  u16(o.info ?? 0x0002, 2);
  u32(1, 4);
  if (le) b.writeBigUInt64LE(o.sysid ?? ID, 24);
  else b.writeBigUInt64BE(o.sysid ?? ID, 24);
  u32(o.segSize ?? SEG, 32);
  u32(o.blcksz ?? 8192, 36);
  return b;
}

describe('segmentSystemId', () => {
  it('reads xlp_sysid in the byte order in which the header is consistent', () => {
    expect(segmentSystemId(header('LE'), SEG)).toBe(ID.toString());
    expect(segmentSystemId(header('BE'), SEG)).toBe(ID.toString());
    expect(segmentSystemId(header('LE', { info: 0x0007, blcksz: 32768 }), SEG)).toBe(ID.toString());
    expect(segmentSystemId(header('LE', { segSize: 1 << 20, blcksz: 1024 }), 1 << 20)).toBe(ID.toString());
  });

  it('is undefined for what is no long page header: no flag, another segment size, an odd block size, a zero identifier, too few bytes', () => {
    expect(segmentSystemId(header('LE', { info: 0x0001 }), SEG)).toBeUndefined();
    expect(segmentSystemId(header('LE'), SEG * 2)).toBeUndefined();
    for (const blcksz of [0, 512, 3000, 65536]) expect(segmentSystemId(header('LE', { blcksz }), SEG), String(blcksz)).toBeUndefined();
    expect(segmentSystemId(header('LE', { sysid: 0n }), SEG)).toBeUndefined();
    expect(segmentSystemId(header('LE').subarray(0, 39), SEG)).toBeUndefined();
    expect(segmentSystemId(Buffer.alloc(WAL_LONG_HEADER_BYTES), SEG)).toBeUndefined();
  });
});
