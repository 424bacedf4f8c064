/**
 * A restore killed with SIGKILL cannot drop its scratch database (`<target>__restoring_<8 hex>`).
 * The next restore of the same target names it, with the statement that drops it, and leaves it
 * alone (another restore of that target may be running); other databases are not named.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { derivedName } from '../../src/pg/admin.js';
import { useFixture } from '../harness/fixture.js';
import { databaseExists, quoteIdent, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'leftover', db: { fixture: 'vault', prefix: 'leftover' } });
const pg = f.pg;
let repo: string;

beforeAll(async () => {
  repo = f.path('repo');
  const r = await f.run(['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient]);
  expect(r.code, r.stderr).toBe(0);
});

describe('scratch databases left by a killed restore', () => {
  // A short name, and one long enough that the scratch name cuts it (63-byte limit).
  for (const target of [uniqueDbName('lo'), `${uniqueDbName('lo')}_${'x'.repeat(40)}`]) {
    it(`are named by the next restore of the same target, not dropped (target of ${target.length} bytes)`, async () => {
      const leftover = derivedName(target, '__restoring_deadbeef');
      // Not a scratch name of this target (another target's, when the name is not cut to the same prefix).
      const unrelated = [derivedName(target, '__restoring_deadbeefx'), derivedName(`${target}y`, '__restoring_deadbeef')].filter((d) => d !== leftover);
      for (const d of [leftover, ...unrelated]) {
        f.dropAtEnd(d);
        await pg.psql(`CREATE DATABASE ${quoteIdent(d)};`);
      }
      f.dropAtEnd(target);
      const r = await f.run(['restore', '--from', repo, '--identity', f.identityFile, '--target-db', target]);
      expect(r.code, r.stderr).toBe(0);
      const warnings = r.stderr.split('\n').filter((l) => l.includes('scratch database of an earlier restore'));
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toContain(`DROP DATABASE ${quoteIdent(leftover).replace(/"/g, '\\"')} WITH (FORCE);`);
      expect(await databaseExists(pg, leftover)).toBe(true);
      expect(await databaseExists(pg, target)).toBe(true);
    });
  }
});
