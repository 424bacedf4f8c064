/**
 * A stop signal or `--timeout` while a command lists the repository or downloads manifests ends
 * the run with the stop's exit code and line (143 "stopped by SIGTERM", 130, 124 "timed out
 * after …"), not with what the abort made of the S3 request in flight ("list …: aborted",
 * "download …manifest.json: aborted", "cannot reach the S3 endpoint (ECONNRESET)", exit 4).
 *
 * Real RGW behind a proxy that delays every listing and GET (so that the listing and the
 * manifest downloads last long enough to be hit), a repository of several backups, and the signal
 * swept over several moments after the first listing request, for list, verify, status and
 * restore.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { errorLine, signalIfRunning, startCoffer } from '../harness/cli.js';
import type { FaultProxy } from '../harness/fault-proxy.js';
import { useFixture } from '../harness/fixture.js';
import { listDatabases, uniqueDbName } from '../harness/pg.js';
import { sleep, waitFor } from '../reliability/common.js';

const f = useFixture({ name: 'stoplist', s3: true, db: 'vault' });
const BACKUPS = 4;
/** Latency of every listing and GET request at the proxy. */
const LATENCY_MS = 250;

let proxy: FaultProxy;
let repo: string;

beforeAll(async () => {
  repo = f.repo('many');
  for (let i = 0; i < BACKUPS; i++) await f.backup(repo, f.db, ['--label', `n${i}`]);
  proxy = await f.faultProxy();
  proxy.script([
    { op: 'ListObjects', times: Infinity, fault: { kind: 'latency', ms: LATENCY_MS } },
    { op: 'GetObject', times: Infinity, fault: { kind: 'latency', ms: LATENCY_MS } },
    { op: 'HeadObject', times: Infinity, fault: { kind: 'latency', ms: LATENCY_MS } },
  ]);
});

/** Starts `args` through the slow proxy; `sig` `delay` ms after its first listing request. */
async function stopDuringListing(args: string[], sig: NodeJS.Signals, delay: number): Promise<{ code: number; error: string; listed: boolean }> {
  const seen = proxy.events.length;
  const child = startCoffer(args, { env: f.env({ COFFER_LOG_FORMAT: 'json' }, proxy.endpoint), timeoutMs: 60_000 });
  const listed = await waitFor(() => proxy.events.slice(seen).some((e) => e.op === 'ListObjects'), 30_000);
  await sleep(delay);
  signalIfRunning(child.pid!, sig);
  const r = await child;
  return { code: r.exitCode ?? -1, error: errorLine(String(r.stderr)), listed };
}

const COMMANDS: Record<string, () => string[]> = {
  list: () => ['list', '--from', repo],
  verify: () => ['verify', '--from', repo, '--db', f.db, '--identity', f.identityFile],
  status: () => ['status', '--from', repo],
  restore: () => ['restore', '--from', repo, '--db', f.db, '--identity', f.identityFile, '--target-db', uniqueDbName('stoplist_target')],
};
/**
 * After the first listing request: at once, within it, in the manifest downloads that follow
 * (status reads its manifests all at once: it is done sooner).
 */
const DELAYS: Record<string, number[]> = { list: [0, 120, 300, 520, 800], verify: [0, 120, 300, 520, 800], status: [0, 100, 200, 330], restore: [0, 120, 300, 520, 800] };

describe('a stop during the listing or the manifest downloads exits with the stop', () => {
  for (const [name, args] of Object.entries(COMMANDS)) {
    const delays = DELAYS[name]!;
    it(`${name}: SIGTERM at ${delays.join(', ')} ms after the first listing request: exit 143, "stopped by SIGTERM"`, { timeout: 240_000 }, async () => {
      const before = await listDatabases(f.pg);
      const outcomes: string[] = [];
      const completed: string[] = [];
      for (const delay of delays) {
        const cmd = args();
        const r = await stopDuringListing(cmd, 'SIGTERM', delay);
        expect(r.listed, `${name} at ${delay} ms: no listing request seen`).toBe(true);
        // The last points may come after a quick run's end (a loaded machine is not always
        // slower: the run is): it then exited 0, its work done, and the signal found nothing to stop.
        if (r.code === 0 && r.error === '' && delay >= delays[delays.length - 2]!) {
          completed.push(cmd[cmd.indexOf('--target-db') + 1] ?? '');
          continue;
        }
        outcomes.push(`${delay} ms: exit ${r.code} ${r.error}`);
      }
      expect(outcomes).toEqual(delays.slice(0, outcomes.length).map((d) => `${d} ms: exit 143 stopped by SIGTERM`));
      expect(outcomes.length).toBeGreaterThanOrEqual(delays.length - 2);
      // A stopped restore created nothing.
      expect((await listDatabases(f.pg)).filter((d) => !before.includes(d) && d.startsWith('stoplist_target') && !completed.includes(d))).toEqual([]);
    });
  }

  it('list: SIGINT at 0 and 300 ms: exit 130, "stopped by SIGINT"', async () => {
    for (const delay of [0, 300]) {
      const r = await stopDuringListing(COMMANDS.list!(), 'SIGINT', delay);
      expect(`${r.code} ${r.error}`).toBe('130 stopped by SIGINT');
    }
  });

  it('--timeout expiring during the listing / a manifest download: exit 124, "timed out after …"', async () => {
    for (const t of ['0.2s', '0.6s']) {
      const child = startCoffer(['--timeout', t, 'list', '--from', repo], { env: f.env({ COFFER_LOG_FORMAT: 'json' }, proxy.endpoint), timeoutMs: 60_000 });
      const r = await child;
      expect(`${r.exitCode} ${errorLine(String(r.stderr))}`).toBe(`124 timed out after ${t}`);
    }
  });
});
