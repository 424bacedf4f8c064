/**
 * A restore killed with SIGKILL cannot drop its scratch database (`<target>__restoring_<8 hex>`).
 * The next restore of the same target names it, with the statement that drops it, and leaves it
 * alone (another restore of that target may be running); other databases are not named.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { derivedName } from '../../src/pg/admin.js';
import { baseEnv, pgEnv, runCoffer, writeIdentityFile } from '../harness/cli.js';
import { createDatabase, databaseExists, dropDatabase, pgFromInject, quoteIdent, uniqueDbName } from '../harness/pg.js';

const pgInfo = inject('pg')!;
const pg = pgFromInject(pgInfo);
const run = (args: string[]) => runCoffer(args, { env: baseEnv(pgEnv(pgInfo)) });

let tmp: string;
let identityFile: string;
let repo: string;
let source: string;
const dbs: string[] = [];

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-leftover-'));
  const id = await writeIdentityFile(tmp);
  identityFile = id.identityFile;
  source = await createDatabase(pg, uniqueDbName('leftover'), 'vault');
  repo = path.join(tmp, 'repo');
  const r = await run(['backup', '--to', repo, '--db', source, '--recipient', id.recipient]);
  expect(r.code, r.stderr).toBe(0);
});

afterAll(async () => {
  for (const d of [source, ...dbs]) await dropDatabase(pg, d);
  await fsp.rm(tmp, { recursive: true, force: true });
});

describe('scratch databases left by a killed restore', () => {
  // A short name, and one long enough that the scratch name cuts it (63-byte limit).
  for (const target of [uniqueDbName('lo'), `${uniqueDbName('lo')}_${'x'.repeat(40)}`]) {
    it(`are named by the next restore of the same target, not dropped (target of ${target.length} bytes)`, async () => {
      const leftover = derivedName(target, '__restoring_deadbeef');
      // Not a scratch name of this target (another target's, when the name is not cut to the same prefix).
      const unrelated = [derivedName(target, '__restoring_deadbeefx'), derivedName(`${target}y`, '__restoring_deadbeef')].filter((d) => d !== leftover);
      for (const d of [leftover, ...unrelated]) {
        dbs.push(d);
        await pg.psql(`CREATE DATABASE ${quoteIdent(d)};`);
      }
      dbs.push(target);
      const r = await run(['restore', '--from', repo, '--identity', identityFile, '--target-db', target]);
      expect(r.code, r.stderr).toBe(0);
      const warnings = r.stderr.split('\n').filter((l) => l.includes('scratch database of an earlier restore'));
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toContain(`DROP DATABASE ${quoteIdent(leftover).replace(/"/g, '\\"')} WITH (FORCE);`);
      expect(await databaseExists(pg, leftover)).toBe(true);
      expect(await databaseExists(pg, target)).toBe(true);
    });
  }
});
