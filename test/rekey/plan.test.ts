/**
 * The pure parts of `coffer rekey`: the recipient arithmetic and its refusals, the replacement's
 * id, and the UploadPartCopy ranges (S3's part rules at the sizes where they bind).
 */
import { describe, expect, it } from 'vitest';
import { nextRecipients, planRekey, replacementId } from '../../src/pipeline/rekey.js';
import { copyRanges, copySource, MAX_PART, MAX_PARTS, MIN_PART } from '../../src/store/s3/compose.js';
import type { BackupEntry } from '../../src/catalog/catalog.js';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { UsageError } from '../../src/errors.js';

const A = 'age1aaaa';
const B = 'age1bbbb';
const C = 'age1cccc';
const PQ = 'age1pq1qqqq';

function entry(id: string, recipients: string[]): BackupEntry {
  return { id, database: 'db', tier: 'daily', manifestKey: `db/daily/${id}.manifest.json`, manifest: { encryption: { format: 'age-v1', recipients } } as unknown as BackupManifest };
}

describe('recipients', () => {
  it('recorded + added − removed, in order, without duplicates', () => {
    expect(nextRecipients([A], [B], [A])).toEqual([B]);
    expect(nextRecipients([A, B], [B, C, C], [])).toEqual([A, B, C]);
    expect(nextRecipients([A, B], [], [C])).toEqual([A, B]);
  });

  it('plans per backup; unchanged when the set is the same; refuses no recipient, add+remove of one key, a removal that matches nothing', () => {
    const plan = planRekey([entry('20261201T000000Z-00000001', [A]), entry('20261202T000000Z-00000002', [A, B])], [B], []);
    expect(plan.map((p) => [p.action, p.after])).toEqual([
      ['rekey', [A, B]],
      ['unchanged', [A, B]],
    ]);
    const refused = (f: () => unknown, re: RegExp): void => {
      expect(f).toThrow(UsageError);
      expect(f).toThrow(re);
    };
    refused(() => planRekey([entry('20261201T000000Z-00000001', [A])], [], [A]), /no recipient/);
    refused(() => planRekey([entry('20261201T000000Z-00000001', [A])], [B], [B]), /both added and removed/);
    // age's mixing rule, and plugin recipients (their plugin wraps at backup time only).
    refused(() => planRekey([entry('20261201T000000Z-00000001', [A])], [PQ], []), /post-quantum .* and classic .* cannot be mixed/);
    expect(planRekey([entry('20261201T000000Z-00000001', [A])], [PQ], [A])[0]!.after).toEqual([PQ]);
    refused(() => planRekey([entry('20261201T000000Z-00000001', [A])], ['age1yubikey1qwt50d05nh5vutpdzmlg5wn80xq5negm4uj9ghv0snvdd3yysf5yw3rhl3t'], []), /age plugin recipient/);
    refused(() => planRekey([entry('20261201T000000Z-00000001', [A])], [], [C]), /not a recipient of backup/);
    refused(() => planRekey([entry('20261201T000000Z-00000001', [A])], [], []), /nothing to change/);
    refused(() => planRekey([entry('20261201T000000Z-00000001', [])], [B], []), /records no recipients/);
  });
});

describe('replacementId', () => {
  it('keeps the start time and sorts after the replaced id', () => {
    for (const old of ['20261201T101010Z-00000000', '20261201T101010Z-7fffffff', '20261201T101010Z-fffffffe']) {
      for (let i = 0; i < 50; i++) {
        const id = replacementId(old);
        expect(id.slice(0, 16)).toBe(old.slice(0, 16));
        expect(id > old).toBe(true);
      }
    }
    expect(replacementId('20261201T101010Z-fffffffe')).toBe('20261201T101010Z-ffffffff');
    // No room left in that second: one second later.
    expect(replacementId('20261231T235959Z-ffffffff').slice(0, 16)).toBe('20270101T000000Z');
  });
});

describe('copyRanges (S3 part rules)', () => {
  const check = (start: number, end: number): Array<[number, number]> => {
    const r = copyRanges(start, end);
    expect(r[0]![0]).toBe(start);
    expect(r[r.length - 1]![1]).toBe(end);
    for (let i = 0; i < r.length; i++) {
      const [s, e] = r[i]!;
      if (i > 0) expect(s).toBe(r[i - 1]![1]);
      expect(e - s).toBeLessThanOrEqual(MAX_PART);
      if (i < r.length - 1) expect(e - s).toBeGreaterThanOrEqual(MIN_PART);
      expect(e - s).toBeGreaterThan(0);
    }
    // The head is part 1.
    expect(r.length + 1).toBeLessThanOrEqual(MAX_PARTS);
    return r;
  };

  it('splits 1 byte, 1 GB, 256 MiB ± 1, 5 TB into at most 9,999 parts of 5 MiB to 5 GiB', () => {
    expect(check(100, 101)).toHaveLength(1);
    expect(check(168, 168 + 1_078_800_000)).toHaveLength(5);
    expect(check(0, 256 * 1024 * 1024)).toHaveLength(1);
    expect(check(0, 256 * 1024 * 1024 + 1)).toHaveLength(2);
    expect(check(5000, 5000 + 5 * 1024 ** 4).length).toBeLessThanOrEqual(MAX_PARTS - 1);
    expect(copyRanges(10, 10)).toEqual([]);
  });

  it('names the source with each key segment encoded and the slashes kept', () => {
    expect(copySource('b', 'pre/db%2Fx/daily/20261201T000000Z-00000001.dump.zst.age')).toBe('b/pre/db%252Fx/daily/20261201T000000Z-00000001.dump.zst.age');
  });
});
