/**
 * The byte accounting of a selective (ranged) restore: the header's 16 KiB read and the frames'
 * reads overlap on a small backup, and each used to be counted ("downloaded: 394.2 KiB of 377.8
 * KiB (104.3 %)", "(394.2 KiB stored …)"). The download is the distinct bytes of the dump object
 * (never more than it), checked against the spans a proxy in front of RGW forwarded; what crossed
 * the network, overlaps and the index included, is `transferred`, equal to the proxy's count;
 * "stored" is the object's size. Swept over a table whose data comes with the table of
 * contents, one after it, and both.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { runCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { dropDatabase } from '../harness/pg.js';
import { unionLength } from '../harness/spans.js';

const f = useFixture({ name: 'rngacct', s3: true, db: 'empty' });
let repo: string;
let m: BackupManifest;

interface Summary {
  storedBytes: number;
  selection: { download: { bytes: number; of: number; requests: number; indexBytes: number; transferred: number } | 'whole' };
}

beforeAll(async () => {
  // As the testers' repro: a table of 20,000 rows (its frames after the head) and one of one row.
  await f.pg.psql(`CREATE TABLE a AS SELECT g, md5(g::text) m FROM generate_series(1, 20000) g; CREATE TABLE b (i int); INSERT INTO b VALUES (1);`, f.db);
  repo = f.repo('acct');
  m = await f.backup(repo, f.db);
});


describe('selective restore: the bytes it reports', () => {
  for (const tables of [['b'], ['a'], ['a', 'b']]) {
    it(`--table ${tables.join(' --table ')}: downloaded <= the object, = the distinct bytes the proxy forwarded; stored = the object's size`, async () => {
      const proxy = await f.faultProxy();
      const target = f.dropAtEnd(`${f.db}_${tables.join('')}`);
      const args = ['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target, ...tables.flatMap((t) => ['--table', t])];
      const r = await runCoffer([...args, '--json'], { env: f.env({}, proxy.endpoint) });
      expect(r.code, r.stderr).toBe(0);
      const s = JSON.parse(r.stdout) as Summary;
      const d = s.selection.download;
      if (d === 'whole') throw new Error('downloaded whole');
      const gets = proxy.events.filter((e) => e.op === 'GetObject');
      const dumpGets = gets.filter((e) => e.path.endsWith(m.dump.key));
      const spans = dumpGets.map((e): [number, number] => {
        const start = Number(/^bytes=(\d+)-/.exec(e.range ?? '')?.[1] ?? 0);
        return [start, start + e.responseBytes];
      });
      expect(d.of).toBe(m.dump.size);
      expect(d.bytes).toBe(unionLength(spans));
      expect(d.bytes).toBeLessThanOrEqual(d.of);
      expect(d.indexBytes).toBe(m.index!.size);
      const indexGets = gets.filter((e) => e.path.endsWith(m.index!.key));
      expect(d.transferred).toBe([...dumpGets, ...indexGets].reduce((n, e) => n + e.responseBytes, 0));
      expect(d.requests).toBe(dumpGets.length + indexGets.length);
      expect(s.storedBytes).toBe(m.dump.size);
      // The log says what was fetched, and never "requests=0 bytes=0".
      expect(r.stderr).not.toMatch(/fetching the selected data.*"requests":0/);
      await dropDatabase(f.pg, target);

      // The human summary: at most 100 %, and "stored" is the object's size.
      const h = await runCoffer(args, { env: f.env({ COFFER_LOG_FORMAT: 'text' }, proxy.endpoint) });
      expect(h.code, h.stderr).toBe(0);
      const pct = /downloaded: .* of .* \((\d+(?:\.\d+)?) %\)/.exec(h.stdout + h.stderr);
      expect(pct, h.stdout + h.stderr).not.toBeNull();
      expect(Number(pct![1])).toBeLessThanOrEqual(100);
      await dropDatabase(f.pg, target);
    });
  }
});
