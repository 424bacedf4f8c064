/**
 * A stop (SIGTERM, --timeout) while the user's own SQL runs in the scratch database (`--smoke`,
 * `--sanitize`) of a restore or a drill: the run ends within seconds with 143/124, not when the
 * query would have ended; its psql is killed, the server session running the query is ended (no
 * backend left running it), the scratch database is dropped and the target is untouched.
 * Stopped right after the query started and a second later.
 */
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { drillNames, errorLine, signalIfRunning, startCoffer } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { databaseExists, listDatabases, quoteIdent, quoteLiteral, uniqueDbName } from '../harness/pg.js';
import { sleep, waitFor } from './common.js';

const f = useFixture({ name: 'stop-sql', db: { fixture: 'vault', prefix: 'stopsql' } });
const pg = f.pg;
let repo: string;

/** Far longer than any test may take: a run that waits for the query fails the test by its timeout. */
const SLEEP_S = 60;
const TEST_TIMEOUT_MS = 30_000;

beforeAll(async () => {
  repo = f.path('repo');
  await f.backup(repo, f.db);
});

/** Server sessions running the SQL that holds `tag` (other than this probe's). */
async function backendsRunning(tag: string): Promise<number> {
  const out = await pg.psql(`SELECT count(*) FROM pg_stat_activity WHERE query LIKE ${quoteLiteral(`%${tag}%`)} AND pid <> pg_backend_pid();`);
  return Number(out.trim());
}

interface Case {
  command: 'restore' | 'drill';
  /** What runs the query: a --smoke query or a --sanitize file. */
  via: 'smoke' | 'sanitize';
  stop: 'SIGTERM' | 'timeout';
  /** SIGTERM: how long after the query was seen running; timeout: the --timeout in seconds. */
  at: number;
}

const cases: Case[] = [
  { command: 'restore', via: 'smoke', stop: 'SIGTERM', at: 0 },
  { command: 'restore', via: 'smoke', stop: 'SIGTERM', at: 1000 },
  { command: 'restore', via: 'smoke', stop: 'timeout', at: 4 },
  { command: 'restore', via: 'smoke', stop: 'timeout', at: 6 },
  { command: 'restore', via: 'sanitize', stop: 'SIGTERM', at: 500 },
  { command: 'drill', via: 'smoke', stop: 'SIGTERM', at: 0 },
  { command: 'drill', via: 'smoke', stop: 'SIGTERM', at: 1000 },
  { command: 'drill', via: 'smoke', stop: 'timeout', at: 5 },
];

describe('a stop while the user SQL runs in the scratch database', () => {
  for (const c of cases) {
    const label = `${c.command} --${c.via}, ${c.stop === 'SIGTERM' ? `SIGTERM ${c.at} ms after the query started` : `--timeout ${c.at}s`}`;
    it(
      `${label}: exits ${c.stop === 'SIGTERM' ? 143 : 124} at once; no backend, no scratch database, target untouched`,
      async () => {
        const tag = `coffer_stop_${randomBytes(4).toString('hex')}`;
        const sql = `SELECT pg_sleep(${SLEEP_S}) /* ${tag} */`;
        const args = [...(c.stop === 'timeout' ? ['--timeout', `${c.at}s`] : []), c.command, '--from', repo, '--identity', f.identityFile];
        // restore: into an existing target, with --replace (a stop must leave it as it was).
        const target = uniqueDbName('stopsql_t');
        if (c.command === 'restore') {
          f.dropAtEnd(target);
          await pg.psql(`CREATE DATABASE ${quoteIdent(target)};`);
          await pg.psql('CREATE TABLE kept(v text); INSERT INTO kept VALUES (\'before\');', target);
          args.push('--target-db', target, '--replace');
        }
        if (c.via === 'smoke') args.push('--smoke', sql);
        else {
          const file = f.path(`${tag}.sql`);
          await fsp.writeFile(file, `${sql};\n`);
          args.push('--sanitize', file);
        }
        const started = Date.now();
        const run = startCoffer(args, { env: f.env(), timeoutMs: TEST_TIMEOUT_MS - 5_000, forceKillAfterMs: 1_000 });
        let seen = false;
        const watching = (async () => {
          seen = await waitFor(async () => (await backendsRunning(tag)) > 0, 20_000);
          if (seen && c.stop === 'SIGTERM') {
            if (c.at > 0) await sleep(c.at);
            signalIfRunning(run.pid!, 'SIGTERM');
          }
        })();
        const r = await run;
        await watching;
        const took = Date.now() - started;
        const stderr = String(r.stderr);
        expect(seen, stderr).toBe(true);
        expect(r.exitCode, stderr).toBe(c.stop === 'SIGTERM' ? 143 : 124);
        expect(errorLine(stderr)).toBe(c.stop === 'SIGTERM' ? 'stopped by SIGTERM' : `timed out after ${c.at}s`);
        // Well before the query could have ended by itself.
        expect(took).toBeLessThan(SLEEP_S * 1000 / 2);
        expect(await backendsRunning(tag)).toBe(0);
        const made = c.command === 'restore' ? [`${target}__restoring_`] : drillNames(stderr);
        if (c.command === 'drill') expect(made.length, stderr).toBe(1);
        const left = (await listDatabases(pg)).filter((d) => made.some((m) => d.startsWith(m)));
        expect(left, stderr).toEqual([]);
        if (c.command === 'restore') {
          expect(await databaseExists(pg, target)).toBe(true);
          expect((await pg.psql('SELECT string_agg(v, \',\') FROM kept;', target)).trim()).toBe('before');
          expect((await listDatabases(pg)).filter((d) => d.startsWith(`${target}__`))).toEqual([]);
        }
      },
      TEST_TIMEOUT_MS,
    );
  }
});
