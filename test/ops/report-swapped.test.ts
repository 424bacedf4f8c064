/**
 * `coffer report` reads manifests through the catalog's one reader (src/catalog/catalog.ts
 * loadEntry), as list, status, verify and restore do: a manifest copied over another backup's
 * manifest key is left out with a warning, never listed as a second copy of the backup it
 * describes. Swept over the oldest, middle and newest backup of a database.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import type { ReportData } from '../../src/cli/run/report.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';

const f = useFixture({ name: 'repswap', db: 'vault' });
let repo: string;
/** Oldest first. */
let backups: BackupManifest[];

beforeAll(async () => {
  repo = f.path('repo');
  backups = [];
  for (let i = 0; i < 3; i++) {
    backups.push(await f.backup(repo, f.db));
    await new Promise((r) => setTimeout(r, 1100)); // ids are per second
  }
});

function manifestFile(m: BackupManifest): string {
  return path.join(repo, m.dump.key.replace(/\.dump\..*$/, '.manifest.json'));
}

describe('report with a swapped manifest', () => {
  for (const [where, victim, donor] of [
    ['the oldest', 0, 1],
    ['the middle', 1, 0],
    ['the newest', 2, 0],
  ] as const) {
    it(`${where} backup's manifest key holds another backup's manifest: left out with a warning, as list does`, async () => {
      const file = manifestFile(backups[victim]!);
      const good = await fsp.readFile(file);
      await fsp.copyFile(manifestFile(backups[donor]!), file);
      try {
        const intact = backups.filter((_, i) => i !== victim).map((m) => m.id).sort();
        const list = await f.run(['list', '--from', repo, '--json']);
        expect(list.code, list.stderr).toBe(0);
        expect((JSON.parse(list.stdout) as Array<{ id: string }>).map((b) => b.id).sort()).toEqual(intact);
        const r = await f.run(['report', '--from', repo, '--json']);
        if (victim === 2) {
          // The newest backup is the status row's, as for `coffer status`: do not trust it.
          expect(r.code, r.stderr).toBe(5);
          expect(errorLine(r.stderr)).toMatch(/describes another backup/);
          const s = await f.run(['status', '--from', repo]);
          expect(s.code).toBe(5);
          return;
        }
        expect(r.code, r.stderr).toBe(0);
        expect(r.stderr).toMatch(/describes another backup.*left out of the report/);
        const data = JSON.parse(r.stdout) as ReportData;
        const ids = data.databases.flatMap((d) => d.backups.map((b) => b.id));
        expect(ids.sort()).toEqual(intact);
      } finally {
        await fsp.writeFile(file, good);
      }
    });
  }
});
