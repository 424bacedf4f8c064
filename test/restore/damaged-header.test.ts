/**
 * A damaged age header is not blamed on the key: when the identity's public key is among the
 * recipients the manifest lists, a header it does not open was damaged or modified (exit 5, "do
 * not trust this backup"). Bytes flipped over the stanza's type, its ephemeral share and its
 * wrapped file key, for a whole restore, a selective (ranged) restore and verify. A wrong
 * identity still says "no identity matches".
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { errorLine, runCoffer, writeIdentityFile } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { listDatabases } from '../harness/pg.js';

const f = useFixture({ name: 'dmghdr', db: 'vault' });
let repo: string;
let m: BackupManifest;
let file: string;

beforeAll(async () => {
  repo = f.path('repo');
  m = await f.backup(repo, f.db);
  file = path.join(repo, m.dump.key);
});

const COMMANDS: Array<[string, (id: string) => string[]]> = [
  ['restore', (id) => ['restore', '--from', repo, '--backup', m.id, '--identity', id, '--target-db', `dmghdr_${Math.random().toString(36).slice(2, 8)}`]],
  ['selective restore', (id) => ['restore', '--from', repo, '--backup', m.id, '--identity', id, '--target-db', `dmghdr_${Math.random().toString(36).slice(2, 8)}`, '--table', 'accounts']],
  ['verify', (id) => ['verify', '--from', repo, '--backup', m.id, '--identity', id]],
];

describe('a damaged age header', () => {
  it('flipped in the stanza type, the ephemeral share, the wrapped file key: "damaged or modified", exit 5, never "no identity matches"', async () => {
    const good = await fsp.readFile(file);
    const stanza = good.indexOf('\n') + 1; // "-> X25519 <share>\n<wrapped key>\n"
    const body = good.indexOf('\n', stanza) + 1;
    const positions: Array<[string, number]> = [
      ['the stanza type (X25519 -> X25518)', stanza + 8],
      ['the start of the ephemeral share', stanza + 12],
      ['the end of the ephemeral share', body - 3],
      ['the wrapped file key', body + 5],
    ];
    const before = await listDatabases(f.pg);
    try {
      for (const [where, at] of positions) {
        const bad = Buffer.from(good);
        bad[at] = bad[at]! ^ 0x01;
        await fsp.writeFile(file, bad);
        for (const [cmd, args] of COMMANDS) {
          const r = await runCoffer(args(f.identityFile), { env: f.env() });
          const what = `${cmd}, ${where} (byte ${at})`;
          expect(r.code, `${what}: ${r.stderr}`).toBe(5);
          const line = errorLine(r.stderr);
          expect(line, what).not.toMatch(/no identity matches/);
          expect(line, what).toMatch(/damaged or modified|modified or corrupted/);
          if (where.startsWith('the stanza type') || where === 'the wrapped file key') expect(line, what).toMatch(/age header of this backup was damaged or modified.*do not trust this backup/);
        }
      }
    } finally {
      await fsp.writeFile(file, good);
    }
    // Only this file's targets: other files create databases in the shared cluster meanwhile.
    expect((await listDatabases(f.pg)).filter((d) => !before.includes(d) && d.startsWith('dmghdr_'))).toEqual([]);
  });

  it('a wrong identity still says "no identity matches"', async () => {
    const other = await writeIdentityFile(f.tmp, 'other.txt');
    for (const [cmd, args] of COMMANDS) {
      const r = await runCoffer(args(other.identityFile), { env: f.env() });
      expect(r.code, `${cmd}: ${r.stderr}`).toBe(5);
      expect(errorLine(r.stderr), cmd).toMatch(/^no identity matches this backup's recipients/);
    }
  });
});
