/**
 * Recovery objectives (issue 16, item 1): `coffer drill --record` stores where a restore's time
 * went; `coffer status` predicts the newest backup's restore time from it, reports the recovery
 * point, and exits 7 on --rto-target, --rpo-target, --max-drill-age and a failed drill. The
 * prediction for a database grown to twice its size is checked against a restore measured here.
 */
import * as fsp from 'node:fs/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { decodeDrillRecord } from '../../src/catalog/drill-record.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { fillLargeTable, uniqueDbName } from '../harness/pg.js';

const f = useFixture({ name: 'rto' });
const pg = f.pg;

interface Row {
  database: string;
  id: string;
  size: number;
  recoveryPointSeconds: number;
  drill: { id: string; ok: boolean; backupId: string; error: string | null } | null;
  predictedRestoreSeconds: number | null;
  predictedFrom: { drill: string; scale: number } | null;
  problems: string[];
}

let db: string;
let repo: string;
/** The first backup (the database at its first size). */
let firstId: string;

beforeAll(async () => {
  db = await f.database({ fixture: 'vault', prefix: 'rto', fillMB: 36 });
  repo = f.path('repo');
  const b = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--json']);
  expect(b.code, b.stderr).toBe(0);
  firstId = (JSON.parse(b.stdout) as Array<{ id: string }>)[0]!.id;
});

async function status(...args: string[]): Promise<{ code: number; rows: Row[]; error: string }> {
  const r = await f.run(['status', '--from', repo, '--db', db, '--json', ...args]);
  return { code: r.code, rows: r.stdout ? (JSON.parse(r.stdout) as Row[]) : [], error: errorLine(r.stderr) };
}

describe('drills and recovery objectives', () => {
  it('a drill records its phases in the repository; status predicts from it and holds the targets; a database twice the size restores within 30 % of the prediction', async () => {
    // Without a drill: the restore time is unknown, and an RTO target cannot be met.
    const before = await status('--rto-target', '1h');
    expect(before.code).toBe(7);
    expect(before.error).toContain(`${db}: restore time unknown: no successful drill recorded`);
    expect(before.rows[0]!.predictedRestoreSeconds).toBeNull();

    const d = await f.run(['drill', '--from', repo, '--db', db, '--identity', f.identityFile, '--record']);
    expect(d.code, d.stderr).toBe(0);
    const stored = (await fsp.readdir(f.path('repo', db, 'drills'))).filter((n) => n.endsWith('.drill.json'));
    expect(stored).toHaveLength(1);
    const record = decodeDrillRecord(await fsp.readFile(f.path('repo', db, 'drills', stored[0]!)), stored[0]!);
    expect(record.ok).toBe(true);
    // What is printed is the record plus what stays local (largest tables, checks).
    const printed = JSON.parse(d.stdout) as Record<string, unknown>;
    expect(printed).toMatchObject({ ...record, error: null });
    expect(JSON.stringify(printed.rows)).toContain('large_fill');
    const p = record.phases!;
    for (const phase of ['select', 'setup', 'transfer', 'restore', 'checks', 'swap', 'drop'] as const) expect(p[phase]).toBeGreaterThanOrEqual(0);
    // The phases follow one another: together they are the drill, give or take the writing of its record.
    const sum = p.select + p.setup + p.transfer + p.restore + p.checks + p.swap + p.drop;
    expect(sum).toBeLessThanOrEqual(record.durationMs);
    expect(sum).toBeGreaterThan(record.durationMs * 0.8);
    expect(p.transfer).toBeGreaterThan(0);
    // No data and no table names in a record that lives unencrypted beside the backups.
    const raw = await fsp.readFile(f.path('repo', db, 'drills', stored[0]!), 'utf8');
    expect(raw).not.toContain('large_fill');
    expect(raw).not.toContain('vault_status');
    expect(Object.keys(JSON.parse(raw) as object).sort()).toEqual(
      ['archiveBytes', 'backupId', 'database', 'durationMs', 'failure', 'format', 'formatVersion', 'host', 'id', 'jobs', 'ok', 'phases', 'repository', 'startedAt', 'storedBytes', 'tables'].sort(),
    );

    const generous = await status('--rto-target', '1h', '--rpo-target', '1h', '--max-drill-age', '1h');
    expect(generous.code, generous.error).toBe(0);
    expect(generous.rows[0]!.predictedFrom).toEqual({ drill: record.id, scale: 1 });
    expect(generous.rows[0]!.recoveryPointSeconds).toBeGreaterThanOrEqual(0);
    // A target under the prediction, whatever the drill took on this machine (a quick one took under 1 s).
    const predicted = generous.rows[0]!.predictedRestoreSeconds!;
    expect(predicted).toBeGreaterThan(0);
    const under = `${Math.max(1, Math.floor(predicted * 500))}ms`;
    const tight = await status('--rto-target', under);
    expect(tight.code).toBe(7);
    expect(tight.rows[0]!.predictedRestoreSeconds).toBe(predicted);
    expect(tight.error).toMatch(new RegExp(`1 of 1 database\\(s\\) miss their recovery objectives: ${db}: predicted restore ${predicted.toFixed(1)}s \\(drill ${record.id} scaled ×1\\) over --rto-target ${under}`));

    // The database grows to twice its size; the old drill is scaled to the new backup.
    await fillLargeTable(pg, db, 36);
    const b2 = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--json']);
    expect(b2.code, b2.stderr).toBe(0);
    // A drill of the first backup (the database at half its size) right before the restore that
    // is measured: both run under the same load (the suite runs two files at once). Wall times on
    // a shared 2-core machine swing by more than the tolerance between two minutes (one CI run:
    // predicted 9.6 s from a drill under load, measured 7.0 s after it), so the pair is measured
    // up to three times: the prediction must hold for one pair measured under the same load.
    const tries: string[] = [];
    for (let attempt = 1; attempt <= 3; attempt++) {
      const d2 = await f.run(['drill', '--from', repo, '--db', db, '--backup', firstId, '--identity', f.identityFile, '--record']);
      expect(d2.code, d2.stderr).toBe(0);
      const drill2 = JSON.parse(d2.stdout) as { id: string; durationMs: number; phases: unknown };
      const grown = await status();
      expect(grown.code, grown.error).toBe(0);
      const row = grown.rows[0]!;
      expect(row.predictedFrom!.drill).toBe(drill2.id);
      expect(row.predictedFrom!.scale).toBeGreaterThan(1.8);
      expect(row.predictedFrom!.scale).toBeLessThan(2.2);
      const target = uniqueDbName('rto_measured');
      f.dropAtEnd(target);
      const t0 = performance.now();
      const r = await f.run(['restore', '--from', repo, '--db', db, '--identity', f.identityFile, '--target-db', target]);
      const measured = (performance.now() - t0) / 1000;
      expect(r.code, r.stderr).toBe(0);
      const line = `predicted ${row.predictedRestoreSeconds} s (drill ${(drill2.durationMs / 1000).toFixed(2)} s, phases ${JSON.stringify(drill2.phases)}, scaled ×${row.predictedFrom!.scale}), measured ${measured.toFixed(2)} s`;
      console.log(`recovery objectives, attempt ${attempt}: ${line}`);
      tries.push(line);
      if (Math.abs(row.predictedRestoreSeconds! - measured) / measured <= 0.3) break;
      expect(attempt, `no prediction within 30 % of its measured restore: ${tries.join('; ')}`).toBeLessThan(3);
    }
  }, 300_000);

  it('a failed drill, an old drill and an old recovery point each exit 7 naming it; the prediction comes from the newest successful drill', async () => {
    const ok = await f.run(['drill', '--from', repo, '--db', db, '--identity', f.identityFile, '--record']);
    expect(ok.code, ok.stderr).toBe(0);
    const okId = (JSON.parse(ok.stdout) as { id: string }).id;
    // Drill ids are per second: the failed one must come later.
    await new Promise((r) => setTimeout(r, 1100));
    // A smoke query that fails: the drill fails (exit 3), and its record says so without the error text.
    const failed = await f.run(['drill', '--from', repo, '--db', db, '--identity', f.identityFile, '--record', '--smoke', "SELECT 1/0 AS secret_marker"]);
    expect(failed.code).toBe(3);
    const failedResult = JSON.parse(failed.stdout) as { id: string; error: string };
    expect(failedResult.error).toContain('division by zero');
    const failedId = failedResult.id;
    const failedRaw = await fsp.readFile(f.path('repo', db, 'drills', `${failedId}.drill.json`), 'utf8');
    expect(failedRaw).not.toContain('division');
    expect(failedRaw).not.toContain('secret_marker');
    const s = await status('--rto-target', '1h');
    expect(s.code).toBe(7);
    expect(s.error).toContain(`${db}: newest drill ${failedId} failed (exit 3, database): its output and log on `);
    expect(s.rows[0]!.drill!.ok).toBe(false);
    expect(s.rows[0]!.predictedFrom!.drill).toBe(okId);

    // status rounds ages to whole seconds: 1.6 s after the newest drill ended, its age rounds to 2 s or more.
    await new Promise((r) => setTimeout(r, 1600));
    const old = await status('--max-drill-age', '1s', '--rpo-target', '1s');
    expect(old.code).toBe(7);
    expect(old.error).toMatch(/newest drill \d+s old \(over --max-drill-age 1s\)/);
    expect(old.error).toMatch(/recovery point \d+s old \(over --rpo-target 1s\)/);

    // A drill record is refused in a --file drill, before anything runs.
    const noRepo = await f.run(['drill', '--file', f.path('nothing.age'), '--identity', f.identityFile, '--record']);
    expect(noRepo.code).toBe(2);
    expect(errorLine(noRepo.stderr)).toContain('--record stores the drill record in the repository');
  });
});
