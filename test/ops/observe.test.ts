/**
 * Issue 5, items 7 and 8: `coffer status` (exit 0 fresh, 7 stale), the Prometheus metrics file,
 * healthchecks.io-style pings and the JSON webhook.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { createDatabase, dropDatabase, uniqueDbName } from '../harness/pg.js';
import { logRecords, parsePrometheusText, type Sample } from './helpers.js';

const f = useFixture({ name: 'observe-test' });
const pg = f.pg;

let dbA: string;
let dbB: string;

beforeAll(async () => {
  [dbA, dbB] = await Promise.all([f.database({ fixture: 'vault' }), f.database({ fixture: 'vault' })]);
});

async function backup(repo: string, db: string, ...more: string[]): Promise<{ code: number; stdout: string; stderr: string; manifest?: BackupManifest }> {
  const r = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--lock-dir', f.path('locks'), '--json', ...more]);
  return r.code === 0 ? { ...r, manifest: (JSON.parse(r.stdout) as BackupManifest[])[0]! } : r;
}

function valueOf(samples: Sample[], name: string, database: string): number | undefined {
  return samples.find((s) => s.name === name && s.labels.database === database)?.value;
}

describe('metrics file', () => {
  it('is valid Prometheus text, holds the last run per database, and keeps other databases', async () => {
    const repo = f.path('repo-metrics');
    const metrics = f.path('metrics', 'coffer.prom');
    await fsp.mkdir(path.dirname(metrics));
    const a = await backup(repo, dbA, '--metrics-file', metrics);
    expect(a.code, a.stderr).toBe(0);
    const b = await backup(repo, dbB, '--metrics-file', metrics);
    expect(b.code, b.stderr).toBe(0);

    let text = await fsp.readFile(metrics, 'utf8');
    let { samples, types } = parsePrometheusText(text);
    expect(fs.statSync(metrics).mode & 0o777).toBe(0o644);
    for (const n of ['coffer_backup_last_success_timestamp_seconds', 'coffer_backup_last_result', 'coffer_backup_last_duration_seconds', 'coffer_backup_last_size_bytes']) {
      expect(types.get(n)).toBe('gauge');
    }
    for (const [db, m] of [
      [dbA, a.manifest!],
      [dbB, b.manifest!],
    ] as const) {
      expect(valueOf(samples, 'coffer_backup_last_result', db)).toBe(1);
      expect(valueOf(samples, 'coffer_backup_last_size_bytes', db)).toBe(m.dump.size);
      expect(valueOf(samples, 'coffer_backup_last_success_timestamp_seconds', db)).toBeCloseTo(Date.parse(m.finishedAt) / 1000, 2);
      expect(valueOf(samples, 'coffer_backup_last_duration_seconds', db)).toBeGreaterThan(0);
      expect(samples.find((s) => s.labels.database === db)!.labels.repository).toBe(`file://${repo}`);
    }

    // A failed run of A: result 0, its last success kept, B untouched.
    const failing = f.path('false-pg_dump.sh');
    await fsp.writeFile(failing, '#!/bin/sh\necho "pg_dump: error: simulated failure" >&2\nexit 1\n', { mode: 0o755 });
    const before = text;
    const failed = await backup(repo, dbA, '--metrics-file', metrics, '--pg-dump-command', failing);
    expect(failed.code, failed.stderr).toBe(3);
    text = await fsp.readFile(metrics, 'utf8');
    ({ samples } = parsePrometheusText(text));
    const old = parsePrometheusText(before).samples;
    expect(valueOf(samples, 'coffer_backup_last_result', dbA)).toBe(0);
    expect(valueOf(samples, 'coffer_backup_last_success_timestamp_seconds', dbA)).toBe(valueOf(old, 'coffer_backup_last_success_timestamp_seconds', dbA));
    expect(valueOf(samples, 'coffer_backup_last_run_timestamp_seconds', dbA)).toBeGreaterThan(valueOf(old, 'coffer_backup_last_run_timestamp_seconds', dbA)!);
    for (const n of ['coffer_backup_last_result', 'coffer_backup_last_size_bytes', 'coffer_backup_last_success_timestamp_seconds', 'coffer_backup_last_duration_seconds']) {
      expect(valueOf(samples, n, dbB)).toBe(valueOf(old, n, dbB));
    }
    expect(fs.readdirSync(path.dirname(metrics))).toEqual(['coffer.prom']);
  });

  it('a missing metrics directory is a usage error before anything runs', async () => {
    const repo = f.path('repo-metrics-bad');
    const r = await backup(repo, dbA, '--metrics-file', f.path('no-such-dir', 'coffer.prom'));
    expect(r.code).toBe(2);
    expect(errorLine(r.stderr)).toContain('its directory does not exist or is not writable');
    expect(fs.existsSync(repo)).toBe(false);
  });
});

describe('coffer status', () => {
  it('exits 0 when every database is fresh, 7 when one is stale or has no backup (naming it)', async () => {
    const repo = f.path('repo-status');
    for (const db of [dbA, dbB]) expect((await backup(repo, db)).code).toBe(0);

    const fresh = await f.run(['status', '--from', repo, '--json']);
    expect(fresh.code, fresh.stderr).toBe(0);
    const rows = JSON.parse(fresh.stdout) as Array<{ database: string; fresh: boolean; id: string | null }>;
    expect(rows.map((r) => r.database).sort()).toEqual([dbA, dbB].sort());
    expect(rows.every((r) => r.fresh && r.id !== null)).toBe(true);

    const text = await f.run(['status', '--from', repo, '--db', dbA]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^OK +${dbA} +\\d{8}T\\d{6}Z-[0-9a-f]{8}`));

    const missing = uniqueDbName('never_backed_up');
    const none = await f.run(['status', '--from', repo, '--db', dbA, '--db', missing]);
    expect(none.code).toBe(7);
    expect(errorLine(none.stderr)).toContain(`1 of 2 database(s) have no backup newer than 26h: ${missing} (none)`);

    await new Promise((r) => setTimeout(r, 2100));
    const stale = await f.run(['status', '--from', repo, '--max-age', '1s', '--json']);
    expect(stale.code).toBe(7);
    expect(errorLine(stale.stderr)).toMatch(/^2 of 2 database\(s\) have no backup newer than 1s: /);
    expect(errorLine(stale.stderr)).toContain(dbA);
    expect((JSON.parse(stale.stdout) as Array<{ fresh: boolean }>).every((r) => !r.fresh)).toBe(true);

    await fsp.mkdir(f.path('repo-empty'), { recursive: true }); // an empty repository (a missing one is exit 4)
    const empty = await f.run(['status', '--from', f.path('repo-empty')]);
    expect(empty.code).toBe(7);
    expect(errorLine(empty.stderr)).toContain('no completed backup in');

    const bad = await f.run(['status', '--from', repo, '--max-age', 'soon']);
    expect(bad.code).toBe(2);
  });
});

describe('coffer status over the whole repository', () => {
  it('names a database that has only schema-only or only data-only backups as having no completed backup (exit 7), with its metrics series', async () => {
    for (const partial of ['--schema-only', '--data-only']) {
      const repo = f.path(`repo-status-partial${partial}`);
      const metrics = f.path(`metrics-partial${partial}.prom`);
      expect((await backup(repo, dbA)).code).toBe(0);
      expect((await backup(repo, dbB, partial)).code).toBe(0);
      const all = await f.run(['status', '--from', repo, '--json', '--metrics-file', metrics]);
      expect(all.code, `${partial}: ${all.stderr}`).toBe(7);
      const rows = JSON.parse(all.stdout) as Array<{ database: string; id: string | null; fresh: boolean }>;
      expect(rows.map((r) => [r.database, r.id === null, r.fresh]).sort(), partial).toEqual([[dbA, false, true], [dbB, true, false]].sort());
      expect(errorLine(all.stderr)).toContain(`1 of 2 database(s) have no backup newer than 26h: ${dbB} (none)`);
      const text = await f.run(['status', '--from', repo]);
      expect(text.code).toBe(7);
      expect(text.stdout).toMatch(new RegExp(`^STALE +${dbB} +no completed backup`, 'm'));
      const { samples } = parsePrometheusText(await fsp.readFile(metrics, 'utf8'));
      expect(valueOf(samples, 'coffer_status_last_run_timestamp_seconds', dbB), partial).toBeGreaterThan(0);
      expect(valueOf(samples, 'coffer_recovery_point_timestamp_seconds', dbB), partial).toBeUndefined();
      expect(valueOf(samples, 'coffer_recovery_point_timestamp_seconds', dbA), partial).toBeGreaterThan(0);
    }
  });
});

// ---------------------------------------------------------------------------------------------

interface Received {
  method: string;
  url: string;
  body: string;
}

async function startReceiver(): Promise<{ server: Server; base: string; got: Received[] }> {
  const got: Received[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      got.push({ method: req.method ?? '', url: req.url ?? '', body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200, { 'content-type': 'text/plain' }).end('OK');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, got };
}

describe('notifications', () => {
  let rx: Awaited<ReturnType<typeof startReceiver>>;
  beforeAll(async () => {
    rx = await startReceiver();
  });
  afterAll(async () => {
    await new Promise((r) => rx.server.close(r));
  });

  it('success: /start then the ping; the webhook gets the backup as JSON', async () => {
    rx.got.length = 0;
    const repo = f.path('repo-notify');
    const r = await backup(repo, dbA, '--notify', `${rx.base}/ping/check-ok`, '--webhook', `${rx.base}/hook`);
    expect(r.code, r.stderr).toBe(0);
    const pings = rx.got.filter((g) => g.url.startsWith('/ping/'));
    expect(pings.map((g) => g.url)).toEqual(['/ping/check-ok/start', '/ping/check-ok']);
    const hooks = rx.got.filter((g) => g.url === '/hook');
    expect(hooks).toHaveLength(1);
    expect(hooks[0]!.method).toBe('POST');
    const ev = JSON.parse(hooks[0]!.body) as Record<string, unknown>;
    expect(ev).toMatchObject({ event: 'backup.success', database: dbA, id: r.manifest!.id, bytes: r.manifest!.dump.size, error: null });
    expect(ev.durationSeconds as number).toBeGreaterThan(0);
  });

  it('failure: /start then /fail with a short reason; the webhook gets the error', async () => {
    rx.got.length = 0;
    const missing = uniqueDbName('no_such_db');
    const r = await backup(f.path('repo-notify'), missing, '--notify', `${rx.base}/ping/check-fail`, '--webhook', `${rx.base}/hook`);
    expect(r.code).toBe(3);
    const pings = rx.got.filter((g) => g.url.startsWith('/ping/'));
    expect(pings.map((g) => g.url)).toEqual(['/ping/check-fail/start', '/ping/check-fail/fail']);
    expect(pings[1]!.body).toContain(`database "${missing}" does not exist`);
    expect(pings[1]!.body.length).toBeLessThanOrEqual(1000);
    const ev = JSON.parse(rx.got.find((g) => g.url === '/hook')!.body) as Record<string, unknown>;
    expect(ev).toMatchObject({ event: 'backup.failure', database: missing, id: null, bytes: null });
    expect(String(ev.error)).toContain('does not exist');
  });

  it('a dead endpoint does not fail the backup; it is logged as a warning', async () => {
    const dead = createServer();
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
    const port = (dead.address() as AddressInfo).port;
    await new Promise((r) => dead.close(r));
    const r = await backup(f.path('repo-notify-dead'), dbB, '--notify', `http://127.0.0.1:${port}/ping/x`, '--webhook', `http://127.0.0.1:${port}/hook`);
    expect(r.code, r.stderr).toBe(0);
    const warnings = logRecords(r.stderr).filter((l) => l.level === 'warn' && String(l.msg).startsWith('notification failed'));
    expect(warnings.map((w) => w.notifier).sort()).toEqual(['--notify', '--notify', '--webhook']);
    expect(warnings.every((w) => w.to === `http://127.0.0.1:${port}`)).toBe(true);
  });

  it.each(['--notify', '--webhook'])('%s with user:password@ is refused (exit 2) and the password is never printed', async (flag) => {
    const secret = 'hunter2-not-logged';
    const r = await backup(f.path('repo-notify-creds'), dbB, flag, `https://ops:${secret}@hc.example.invalid/ping/tok3n`);
    expect(r.code).toBe(2);
    expect(errorLine(r.stderr)).toMatch(new RegExp(`^${flag}: the URL contains a user name or password`));
    expect(r.stderr + r.stdout).not.toContain(secret);
    expect(r.stderr + r.stdout).not.toContain('tok3n');
    expect(fs.existsSync(f.path('repo-notify-creds'))).toBe(false);
  });

  it('--timeout bounds the notifications too: an endpoint that never answers holds a finished backup no longer than the timeout and the stop budget', async () => {
    const sockets = new Set<import('node:net').Socket>();
    const hang = createServer((req) => req.resume());
    hang.on('connection', (s) => sockets.add(s));
    await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(hang.address() as AddressInfo).port}`;
    try {
      for (const timeout of [3, 6]) {
        const repo = f.path(`repo-notify-timeout-${timeout}`);
        const started = Date.now();
        const r = await backup(repo, dbB, '--timeout', `${timeout}s`, '--notify', `${base}/ping/t`, '--webhook', `${base}/hook`);
        const took = Date.now() - started;
        // Before: 3 tries × 10 s for the start ping, then as much for the success ping (~65 s).
        expect(took, r.stderr).toBeLessThan((timeout + 3) * 1000 + 4_000);
        const listed = await f.run(['list', '--from', repo, '--json']);
        const ids = (JSON.parse(listed.stdout) as Array<{ id: string }>).map((x) => x.id);
        if (r.code === 0) {
          // The backup was complete before the timeout: it stands, and the abandoned ping is a warning.
          expect(ids).toEqual([r.manifest!.id]);
          expect(logRecords(r.stderr).some((l) => l.level === 'warn' && /notification failed/.test(String(l.msg)))).toBe(true);
        } else {
          expect(r.code, r.stderr).toBe(124);
          expect(ids).toEqual([]);
        }
      }
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => hang.close(r));
    }
  }, 120_000);

  it('a notification that cannot connect says why (the system\'s code, or fetch\'s own reason), never the URL', async () => {
    const { fetchFailure } = await import('../../src/observe/notify.js');
    const refused = createServer();
    await new Promise<void>((r) => refused.listen(0, '127.0.0.1', r));
    const port = (refused.address() as AddressInfo).port;
    await new Promise((r) => refused.close(r));
    for (const [href, want] of [
      [`http://127.0.0.1:${port}/ping/tok3n`, /^ECONNREFUSED$/],
      ['http://127.0.0.1:1/ping/tok3n', /^bad port \(http:\/\/127\.0\.0\.1:1\)$/],
      ['http://no-such-host.invalid/ping/tok3n', /^(ENOTFOUND|EAI_AGAIN)$/],
    ] as const) {
      const url = new URL(href);
      const err = await fetch(url).then(() => undefined, (e: unknown) => e);
      const why = fetchFailure(err, url);
      expect(why, href).toMatch(want);
      expect(why).not.toContain('tok3n');
    }
  });

  it('a stop signal with an endpoint that never answers, at swept points of the run: one short failure ping, the run exits by itself', async () => {
    // Accepts connections, reads requests, never answers.
    const seen: string[] = [];
    const sockets = new Set<import('node:net').Socket>();
    const hang = createServer((req) => {
      seen.push(req.url ?? '');
      req.resume();
    });
    hang.on('connection', (s) => sockets.add(s));
    await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(hang.address() as AddressInfo).port}`;
    const big = await createDatabase(pg, uniqueDbName('notify_stop'), 'empty');
    try {
      const { fillLargeTable } = await import('../harness/pg.js');
      await fillLargeTable(pg, big, 40);
      const { startCoffer } = await import('../harness/cli.js');
      // Milliseconds after "backup started": while the start ping is being connected, while
      // pg_dump starts, and with the dump under way. A stop at the first of these left a request
      // of the failure ping without its timeout (a combined AbortSignal collected), in ~1 of 4 runs.
      for (const [i, delay] of [0, 40, 120, 600].entries()) {
        seen.length = 0;
        const child = startCoffer(['backup', '--to', f.path(`repo-notify-stop-${i}`), '--db', big, '--recipient', f.recipient, '--lock-dir', f.path('locks'), '--compress', 'zstd:19', '--notify', `${base}/ping/s`, '--webhook', `${base}/hook`], {
          env: f.env(),
          // Not execa's SIGKILL 5 s after the SIGTERM: that would cut a slow exit short (a loaded
          // machine, the coverage written at exit). Before, each notification took 3 tries × 10 s
          // plus backoff (~65 s); a run that does not exit by itself within 25 s fails here.
          forceKillAfterMs: 25_000,
        });
        let stderr = '';
        child.stderr!.on('data', (d: Buffer) => (stderr += String(d)));
        const until = Date.now() + 30_000;
        while (!stderr.includes('backup started') && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
        expect(stderr).toContain('backup started');
        await new Promise((r) => setTimeout(r, delay));
        const stoppedAt = Date.now();
        child.kill('SIGTERM');
        const res = await child;
        const took = Date.now() - stoppedAt;
        const what = `stopped ${delay} ms after "backup started"; ended after ${took} ms: ${stderr}`;
        expect(res.signal, what).toBeUndefined();
        expect(res.exitCode, what).toBe(143);
        // Within a Kubernetes pod's 30 s grace: the notifications share a 3 s budget after the stop.
        expect(took, what).toBeLessThan(15_000);
        expect(seen.filter((u) => u === '/ping/s/fail').length, what).toBeLessThanOrEqual(1);
        expect(seen.filter((u) => u === '/hook').length, what).toBeLessThanOrEqual(1);
        expect(stderr, what).not.toMatch(/upload aborted/);
        if (fs.existsSync(f.path(`repo-notify-stop-${i}`))) {
          const listed = await f.run(['list', '--from', f.path(`repo-notify-stop-${i}`), '--json']);
          expect(listed.code, listed.stderr).toBe(0);
          expect(JSON.parse(listed.stdout), what).toEqual([]);
        }
      }
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => hang.close(r));
      await dropDatabase(pg, big);
    }
  }, 180_000);
});
