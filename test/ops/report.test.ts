/**
 * `coffer report` (issue 16, item 2): a repository with three databases, two drills and one stale
 * backup, rendered by `coffer report --html` and opened in Debian's Chromium (headless, through
 * playwright-core): no console error, no failed request (nothing is fetched), every database,
 * the stale one flagged with its reason, the drills with predicted and measured times, and a
 * timeline per database. The page is also checked without JavaScript.
 */
import * as fsp from 'node:fs/promises';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useFixture } from '../harness/fixture.js';
import type { ReportData } from '../../src/cli/run/report.js';

const f = useFixture({ name: 'report' });
const CHROMIUM = process.env.COFFER_TEST_CHROMIUM ?? '/usr/bin/chromium';
let browser: Browser | undefined;
let dbs: { old: string; a: string; b: string };
let repo: string;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    if (process.env.CI) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (scripts/system-deps.sh installs it as root)`);
    return;
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  repo = f.path('repo');
  dbs = {
    old: await f.database({ fixture: 'vault', prefix: 'rep_old' }),
    a: await f.database({ fixture: 'vault', prefix: 'rep_a' }),
    b: await f.database({ fixture: 'vault', prefix: 'rep_b' }),
  };
  const backup = async (db: string): Promise<void> => {
    const r = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient]);
    expect(r.code, r.stderr).toBe(0);
  };
  await backup(dbs.old);
  // The old database's backup is the stale one: the others come 3 s later.
  await new Promise((r) => setTimeout(r, 3000));
  await backup(dbs.a);
  await backup(dbs.b);
  await backup(dbs.a);
  for (let i = 0; i < 2; i++) {
    const d = await f.run(['drill', '--from', repo, '--db', dbs.a, '--identity', f.identityFile, '--record']);
    expect(d.code, d.stderr).toBe(0);
    await new Promise((r) => setTimeout(r, 1100)); // drill ids are per second
  }
});

afterAll(async () => {
  await browser?.close();
});

describe('coffer report', () => {
  it('--html renders in headless Chromium: every database, the stale one flagged, the drills, no console error', async (ctx) => {
    if (!browser) return ctx.skip();
    // The old database's newest backup is older than --max-age; the others are younger.
    const listed = JSON.parse((await f.run(['list', '--from', repo, '--json'])).stdout) as Array<{ database: string; finishedAt?: string; id: string }>;
    expect(listed).toHaveLength(4);
    const oldAgeS = (Date.now() - Date.parse(JSON.parse((await f.run(['status', '--from', repo, '--db', dbs.old, '--json'])).stdout)[0].finishedAt)) / 1000;
    const maxAge = `${Math.floor(oldAgeS - 1)}s`;
    const file = f.path('report.html');
    const r = await f.run(['report', '--from', repo, '--html', file, '--json', '--max-age', maxAge]);
    expect(r.code, r.stderr).toBe(0);
    const data = JSON.parse(r.stdout) as ReportData;
    expect(data.databases.map((d) => d.database)).toEqual([dbs.a, dbs.b, dbs.old].sort());
    const old = data.databases.find((d) => d.database === dbs.old)!;
    expect(old.status.fresh).toBe(false);
    expect(old.status.problems[0]).toMatch(new RegExp(`^newest backup \\d+s old \\(over --max-age ${maxAge}\\)$`));
    const a = data.databases.find((d) => d.database === dbs.a)!;
    expect(a.status.problems).toEqual([]);
    expect(a.backups).toHaveLength(2);
    expect(a.drills).toHaveLength(2);
    // The newer drill has a prediction from the older one; the older has none before it.
    expect(a.drills[0]!.predictedSeconds).toBeGreaterThan(0);
    expect(a.drills[1]!.predictedSeconds).toBeNull();
    expect(a.drills.every((d) => d.ok && d.measuredSeconds! > 0)).toBe(true);
    expect(data.retention).toEqual([{ repository: `file://${repo}`, checked: false, drift: [], note: 'a local directory has no lifecycle rules: coffer prune applies the policy there' }]);

    const page = await browser!.newPage({ viewport: { width: 1100, height: 900 } });
    const problems: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    const requests: string[] = [];
    page.on('request', (q) => requests.push(q.url()));
    await page.goto(`file://${file}`);
    expect(problems).toEqual([]);
    // The file itself and nothing else: no network at view time.
    expect(requests).toEqual([`file://${file}`]);
    expect(await page.locator('section.db').count()).toBe(3);
    expect(await page.locator('svg.timeline').count()).toBe(3);
    expect(await page.locator(`section[id="db-${dbs.a}"] svg.timeline rect`).count()).toBe(2);
    const staleSection = page.locator(`section[id="db-${dbs.old}"]`);
    await expect.poll(() => staleSection.locator('h2 .state').innerText()).toBe('STALE');
    expect(await staleSection.locator('.problems li').first().innerText()).toContain(`over --max-age ${maxAge}`);
    expect(await page.locator(`section[id="db-${dbs.a}"] h2 .state`).innerText()).toBe('OK');
    const drillRows = page.locator(`section[id="db-${dbs.a}"] table`).nth(1).locator('tbody tr');
    expect(await drillRows.count()).toBe(2);
    expect(await drillRows.first().innerText()).toMatch(/ok\s.*\d+(\.\d)? s\s+\d+(\.\d)? s/);
    // Everything visible comes from the HTML and CSS alone: the same text without JavaScript.
    const noJs = await browser!.newPage({ javaScriptEnabled: false });
    await noJs.goto(`file://${file}`);
    expect(await noJs.locator('body').innerText()).toBe(await page.locator('body').innerText());
    const shot = f.path('report.png');
    await page.screenshot({ path: shot, fullPage: true });
    const png = await fsp.readFile(shot);
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    expect(png.length).toBeGreaterThan(20_000);
    if (process.env.COFFER_REPORT_SCREENSHOT) await fsp.copyFile(shot, path.resolve(process.env.COFFER_REPORT_SCREENSHOT));
    await page.close();
    await noJs.close();
  });

  it('escapes what it prints: a database name with markup is text, not HTML', async (ctx) => {
    if (!browser) return ctx.skip();
    const odd = `rep_<b>x</b>&"q"`;
    await f.pg.psql(`CREATE DATABASE "${odd.replace(/"/g, '""')}"`);
    f.dropAtEnd(odd);
    const r0 = await f.run(['backup', '--to', f.path('repo-odd'), '--db', odd, '--recipient', f.recipient]);
    expect(r0.code, r0.stderr).toBe(0);
    const file = f.path('odd.html');
    const r = await f.run(['report', '--from', f.path('repo-odd'), '--html', file]);
    expect(r.code, r.stderr).toBe(0);
    const page = await browser!.newPage();
    await page.goto(`file://${file}`);
    expect(await page.locator('section.db h2').innerText()).toContain(odd);
    expect(await page.locator('section.db h2 b').count()).toBe(0);
    await page.close();
  });
});
