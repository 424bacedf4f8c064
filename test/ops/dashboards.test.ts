/**
 * Issue 16, items 1 and 3: the recovery gauges of `coffer status --metrics-file` (and `drill
 * --metrics-file`), the alert rules in deploy/prometheus (promtool check rules, promtool's own
 * unit tests, and the rules run on a textfile a real coffer run wrote) and the Grafana dashboard
 * in deploy/grafana (a JSON schema of what Grafana needs; every metric named is one coffer writes).
 *
 * promtool: scripts/system-deps.sh copies it out of Debian's prometheus package. Without it these
 * tests skip, except in CI (CI=true), where they fail.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { execa } from 'execa';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { beforeAll, describe, expect, it, type TestContext } from 'vitest';
import { METRIC_NAMES } from '../../src/observe/metrics.js';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';
import { parsePrometheusText, type Sample } from './helpers.js';

const DEPLOY = fileURLToPath(new URL('../../deploy/', import.meta.url));
const RULES = path.join(DEPLOY, 'prometheus/coffer-alerts.yml');
const RULE_TESTS = path.join(DEPLOY, 'prometheus/coffer-alerts.test.yml');
const DASHBOARD = path.join(DEPLOY, 'grafana/coffer-dashboard.json');

const f = useFixture({ name: 'dashboards' });

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

async function rules(file = RULES): Promise<Rule[]> {
  const doc = parseYaml(await fsp.readFile(file, 'utf8')) as { groups: { name: string; rules: Rule[] }[] };
  return doc.groups.flatMap((g) => g.rules);
}

let promtoolChecked: boolean | undefined;
/** Skips the test when promtool is missing, except in CI, where that fails it. */
async function needPromtool(ctx: TestContext): Promise<void> {
  promtoolChecked ??= (await execa('promtool', ['--version'], { reject: false })).exitCode === 0;
  if (promtoolChecked) return;
  const how = 'promtool is not installed: run scripts/system-deps.sh as root, or copy usr/bin/promtool out of Debian\'s prometheus package (apt-get download prometheus; dpkg-deb -x)';
  if (process.env.CI === 'true' || process.env.CI === '1') throw new Error(how);
  ctx.skip(how);
}

async function promtool(args: string[], input?: string): Promise<{ code: number; out: string }> {
  const r = await execa('promtool', args, { reject: false, timeout: 30_000, all: true, ...(input === undefined ? {} : { input }) });
  return { code: r.exitCode ?? -1, out: String(r.all) };
}

/** The coffer_* metric names in a PromQL expression. */
function metricsIn(expr: string): string[] {
  return [...expr.matchAll(/\bcoffer_[a-z0-9_]+/g)].map((m) => m[0]);
}

describe('alert rules (deploy/prometheus/coffer-alerts.yml)', () => {
  it('pass promtool check rules and their unit tests; a broken expression fails them', async (ctx) => {
    await needPromtool(ctx);
    const all = await rules();
    const check = await promtool(['check', 'rules', RULES]);
    expect(check.code, check.out).toBe(0);
    expect(check.out).toContain(`SUCCESS: ${all.length} rules found`);
    const tests = await promtool(['test', 'rules', RULE_TESTS]);
    expect(tests.code, tests.out).toBe(0);
    expect(tests.out).toContain('SUCCESS');

    // Every alert has a unit test that expects it to fire.
    const doc = parseYaml(await fsp.readFile(RULE_TESTS, 'utf8')) as { tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[] };
    const firing = new Set(doc.tests.flatMap((t) => t.alert_rule_test.filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname)));
    expect([...firing].sort()).toEqual(all.map((r) => r.alert).sort());
    for (const r of all) {
      expect(['critical', 'warning'], r.alert).toContain(r.labels.severity);
      expect(r.annotations.summary, r.alert).toContain('{{ $labels.database }}');
      expect(r.annotations.description, r.alert).toBeTruthy();
    }

    // The checks can fail: a misspelt metric makes the unit tests fail, a syntax error the check.
    const tmp = await fsp.mkdtemp(path.join(f.tmp, 'rules-'));
    const text = await fsp.readFile(RULES, 'utf8');
    await fsp.writeFile(path.join(tmp, 'coffer-alerts.yml'), text.replace('> coffer_rpo_target_seconds', '> coffer_rpo_target'));
    await fsp.copyFile(RULE_TESTS, path.join(tmp, 'coffer-alerts.test.yml'));
    const broken = await promtool(['test', 'rules', path.join(tmp, 'coffer-alerts.test.yml')]);
    expect(broken.code).not.toBe(0);
    expect(broken.out).toContain('alertname: CofferRecoveryPointOverTarget');
    await fsp.writeFile(path.join(tmp, 'coffer-alerts.yml'), text.replace('coffer_backup_last_result == 0', 'coffer_backup_last_result == = 0'));
    const bad = await promtool(['check', 'rules', path.join(tmp, 'coffer-alerts.yml')]);
    expect(bad.code).not.toBe(0);
  });

  it('name only metrics coffer writes', async () => {
    const names = (await rules()).flatMap((r) => metricsIn(r.expr));
    expect(names.length).toBeGreaterThan(0);
    for (const n of names) expect(METRIC_NAMES, `alert rules: ${n}`).toContain(n);
  });
});

// A JSON schema of what Grafana needs to load the dashboard and draw each panel.
const DASHBOARD_SCHEMA = {
  type: 'object',
  required: ['title', 'uid', 'schemaVersion', 'panels', 'templating', 'time'],
  properties: {
    title: { type: 'string', minLength: 1 },
    uid: { type: 'string', pattern: '^[a-zA-Z0-9_-]{1,40}$' },
    schemaVersion: { type: 'integer', minimum: 36 },
    time: { type: 'object', required: ['from', 'to'] },
    templating: {
      type: 'object',
      required: ['list'],
      properties: {
        list: {
          type: 'array',
          items: { type: 'object', required: ['name', 'type'], properties: { name: { type: 'string', pattern: '^[a-zA-Z_][a-zA-Z0-9_]*$' }, type: { enum: ['datasource', 'query', 'custom', 'constant', 'interval', 'textbox'] } } },
        },
      },
    },
    panels: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        required: ['id', 'type', 'title', 'gridPos'],
        properties: {
          id: { type: 'integer' },
          type: { enum: ['row', 'stat', 'timeseries', 'table', 'gauge', 'bargauge', 'text'] },
          title: { type: 'string', minLength: 1 },
          gridPos: {
            type: 'object',
            required: ['x', 'y', 'w', 'h'],
            properties: { x: { type: 'integer', minimum: 0, maximum: 23 }, y: { type: 'integer', minimum: 0 }, w: { type: 'integer', minimum: 1, maximum: 24 }, h: { type: 'integer', minimum: 1 } },
          },
        },
        if: { properties: { type: { const: 'row' } } },
        then: { required: ['panels', 'collapsed'] },
        else: {
          required: ['datasource', 'targets'],
          properties: {
            datasource: { type: 'object', required: ['type', 'uid'], properties: { type: { const: 'prometheus' } } },
            targets: {
              type: 'array',
              minItems: 1,
              items: { type: 'object', required: ['expr', 'refId'], properties: { expr: { type: 'string', minLength: 1 }, refId: { type: 'string', minLength: 1 } } },
            },
          },
        },
      },
    },
  },
} as const;

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  datasource?: { uid: string };
  targets?: { expr: string; refId: string }[];
}

describe('Grafana dashboard (deploy/grafana/coffer-dashboard.json)', () => {
  it('matches the schema, lays its panels out without overlap, and names only metrics coffer writes and variables it defines', async () => {
    const dash = JSON.parse(await fsp.readFile(DASHBOARD, 'utf8')) as { panels: Panel[]; templating: { list: { name: string }[] } };
    const validate = new Ajv({ allErrors: true }).compile(DASHBOARD_SCHEMA);
    expect(validate(dash), JSON.stringify(validate.errors)).toBe(true);
    // The schema catches what it should: a panel without queries.
    const broken = structuredClone(dash);
    delete broken.panels.find((p) => p.type !== 'row')!.targets;
    expect(validate(broken)).toBe(false);

    const ids = dash.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const cells = new Map<string, string>();
    for (const p of dash.panels) {
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
      for (let x = p.gridPos.x; x < p.gridPos.x + p.gridPos.w; x++) {
        for (let y = p.gridPos.y; y < p.gridPos.y + p.gridPos.h; y++) {
          expect(cells.get(`${x},${y}`), `${p.title} overlaps`).toBeUndefined();
          cells.set(`${x},${y}`, p.title);
        }
      }
    }

    const vars = new Set(dash.templating.list.map((v) => v.name));
    const exprs = dash.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
    const used = new Set(exprs.flatMap(metricsIn));
    for (const n of used) expect(METRIC_NAMES, `dashboard: ${n}`).toContain(n);
    // The panels show every family but the run time (the result says more) and the drill age target.
    expect([...used].sort()).toEqual(METRIC_NAMES.filter((n) => n !== 'coffer_backup_last_run_timestamp_seconds' && n !== 'coffer_drill_max_age_seconds').sort());
    for (const ref of [...JSON.stringify(dash).matchAll(/\$\{?([a-zA-Z_][a-zA-Z0-9_]*)/g)].map((m) => m[1]!)) {
      if (!ref.startsWith('__')) expect(vars, `dashboard variable $${ref}`).toContain(ref);
    }
    for (const p of dash.panels) if (p.type !== 'row') expect(p.datasource!.uid, p.title).toBe('${datasource}');
  });
});

/** Renders the two template forms the rules use: {{ $labels.NAME }} and {{ $value | humanizeDuration }}. */
function renderAnnotation(template: string, labels: Record<string, string>, value: number): string {
  const out = template
    .replace(/\{\{ \$labels\.([a-z_]+) \}\}/g, (_, n: string) => labels[n] ?? '')
    .replace(/\{\{ \$value \| humanizeDuration \}\}/g, () => humanizeDuration(value));
  expect(out, 'a template form this renderer does not know').not.toContain('{{');
  return out;
}

/** Prometheus's humanizeDuration for values of a minute or more (whole seconds, truncated). */
function humanizeDuration(v: number): string {
  expect(v).toBeGreaterThanOrEqual(60);
  const s = Math.trunc(v);
  const [d, h, m, sec] = [Math.trunc(s / 86400), Math.trunc(s / 3600) % 24, Math.trunc(s / 60) % 60, s % 60];
  if (d !== 0) return `${d}d ${h}h ${m}m ${sec}s`;
  if (h !== 0) return `${h}h ${m}m ${sec}s`;
  return `${m}m ${sec}s`;
}

describe('status --metrics-file and drill --metrics-file', () => {
  let db: string;
  let repo: string;
  beforeAll(async () => {
    db = await f.database({ fixture: 'vault', prefix: 'dash' });
    repo = f.path('repo');
  });

  function value(samples: Sample[], name: string, database = db): number | undefined {
    return samples.find((s) => s.name === name && s.labels.database === database)?.value;
  }

  it("write the recovery gauges status reports, also on exit 7, keep other series; promtool reads the file, and the rules fire on it as status's verdict says", async (ctx) => {
    const metrics = f.path('metrics', 'coffer.prom');
    const drillMetrics = f.path('metrics', 'drill.prom');
    await fsp.mkdir(path.dirname(metrics));
    // Another database's series (another repository) already in the file.
    const other = 'coffer_recovery_point_timestamp_seconds{database="other",repository="file:///elsewhere"} 1700000000';
    await fsp.writeFile(metrics, `# HELP coffer_recovery_point_timestamp_seconds x\n# TYPE coffer_recovery_point_timestamp_seconds gauge\n${other}\n`);

    const b = await f.run(['backup', '--to', repo, '--db', db, '--recipient', f.recipient, '--lock-dir', f.path('locks'), '--metrics-file', metrics]);
    expect(b.code, b.stderr).toBe(0);
    const backedUpAt = Date.now();
    const d = await f.run(['drill', '--from', repo, '--db', db, '--identity', f.identityFile, '--record', '--metrics-file', drillMetrics]);
    expect(d.code, d.stderr).toBe(0);
    const drill = JSON.parse(d.stdout) as { id: string; startedAt: string; ok: boolean };

    // --rpo-target 1s: status rounds the recovery point's age to whole seconds, and a quick
    // backup and drill can take under 1.5 s. The snapshot was taken before the backup ended: 2 s
    // after that, it is at least 2 s old, so status exits 7, and writes the file.
    await new Promise((r) => setTimeout(r, Math.max(0, backedUpAt + 2000 - Date.now())));
    const t0 = Math.floor(Date.now() / 1000);
    const s = await f.run(['status', '--from', repo, '--db', db, '--json', '--metrics-file', metrics, '--rpo-target', '1s', '--rto-target', '1h', '--max-drill-age', '1h']);
    expect(s.code, s.stderr).toBe(7);
    expect(errorLine(s.stderr)).toMatch(/recovery point \d+s old \(over --rpo-target 1s\)/);
    const row = (JSON.parse(s.stdout) as { recoveryPointAt: string; predictedRestoreSeconds: number; drill: { id: string; startedAt: string; ok: boolean } }[])[0]!;
    expect(row.drill.id).toBe(drill.id);

    const text = await fsp.readFile(metrics, 'utf8');
    const { samples, types } = parsePrometheusText(text);
    for (const n of METRIC_NAMES) expect(types.get(n), n).toBe('gauge');
    expect(value(samples, 'coffer_recovery_point_timestamp_seconds')).toBeCloseTo(Date.parse(row.recoveryPointAt) / 1000, 3);
    expect(value(samples, 'coffer_restore_predicted_seconds')).toBe(row.predictedRestoreSeconds);
    expect(value(samples, 'coffer_drill_last_timestamp_seconds')).toBeCloseTo(Date.parse(row.drill.startedAt) / 1000, 3);
    expect(value(samples, 'coffer_drill_last_result')).toBe(1);
    expect(value(samples, 'coffer_rpo_target_seconds')).toBe(1);
    expect(value(samples, 'coffer_rto_target_seconds')).toBe(3600);
    expect(value(samples, 'coffer_drill_max_age_seconds')).toBe(3600);
    const checkedAt = value(samples, 'coffer_status_last_run_timestamp_seconds')!;
    expect(checkedAt).toBeGreaterThanOrEqual(t0);
    expect(checkedAt).toBeLessThanOrEqual(Date.now() / 1000);
    // The backup's series and the other database's are kept; every series is labelled alike.
    expect(value(samples, 'coffer_backup_last_result')).toBe(1);
    expect(text).toContain(`${other}\n`);
    for (const x of samples.filter((x) => x.labels.database === db)) expect(x.labels).toEqual({ database: db, repository: `file://${repo}` });

    // drill --metrics-file: the drill's own gauges, in its own file.
    const dm = parsePrometheusText(await fsp.readFile(drillMetrics, 'utf8')).samples;
    expect(dm.map((x) => x.name).sort()).toEqual(['coffer_drill_last_result', 'coffer_drill_last_timestamp_seconds']);
    expect(value(dm, 'coffer_drill_last_timestamp_seconds')).toBeCloseTo(Date.parse(drill.startedAt) / 1000, 3);
    expect(value(dm, 'coffer_drill_last_result')).toBe(1);

    // promtool reads both files (exposition format and its lint: help texts, units, names).
    await needPromtool(ctx);
    for (const file of [metrics, drillMetrics]) {
      const lint = await promtool(['check', 'metrics'], await fsp.readFile(file, 'utf8'));
      expect(lint.code, `${file}: ${lint.out}`).toBe(0);
    }

    // The alert rules on this file, its Unix times shifted so that promtool's time 0 is when status
    // ran: 11 minutes later, only the recovery point is over its target, as status said.
    const series = samples.filter((x) => x.labels.database === db);
    const shifted = (x: Sample): number => (x.name.endsWith('_timestamp_seconds') ? Number((x.value - checkedAt).toFixed(3)) : x.value);
    const evalSeconds = 660;
    const rpoRule = (await rules()).find((r) => r.alert === 'CofferRecoveryPointOverTarget')!;
    const rp = series.find((x) => x.name === 'coffer_recovery_point_timestamp_seconds')!;
    const labels = { ...rp.labels, severity: rpoRule.labels.severity! };
    const unitTest = {
      rule_files: [RULES],
      evaluation_interval: '1m',
      tests: [
        {
          interval: '1m',
          input_series: series.map((x) => ({
            series: `${x.name}{${Object.entries(x.labels).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(',')}}`,
            values: `${shifted(x)}x20`,
          })),
          alert_rule_test: (await rules()).map((r) => ({
            eval_time: `${evalSeconds / 60}m`,
            alertname: r.alert,
            exp_alerts:
              r.alert === rpoRule.alert
                ? [
                    {
                      exp_labels: labels,
                      exp_annotations: Object.fromEntries(Object.entries(rpoRule.annotations).map(([k, v]) => [k, renderAnnotation(v, labels, evalSeconds - shifted(rp))])),
                    },
                  ]
                : [],
          })),
        },
      ],
    };
    const testFile = f.path('metrics', 'real.test.yml');
    await fsp.writeFile(testFile, stringifyYaml(unitTest));
    const real = await promtool(['test', 'rules', testFile]);
    expect(real.code, real.out).toBe(0);

    // Without targets, status drops their gauges (a stale target would keep alerting); the rest stays.
    const plain = await f.run(['status', '--from', repo, '--db', db, '--metrics-file', metrics]);
    expect(plain.code, plain.stderr).toBe(0);
    const after = parsePrometheusText(await fsp.readFile(metrics, 'utf8')).samples;
    for (const n of ['coffer_rpo_target_seconds', 'coffer_rto_target_seconds', 'coffer_drill_max_age_seconds']) expect(value(after, n), n).toBeUndefined();
    expect(value(after, 'coffer_restore_predicted_seconds')).toBe(row.predictedRestoreSeconds);
    expect(value(after, 'coffer_backup_last_result')).toBe(1);
  });

  it('a failed drill writes result 0 (after the previous test backed up and drilled)', async () => {
    const file = f.path('metrics', 'failed-drill.prom');
    const d = await f.run(['drill', '--from', repo, '--db', db, '--identity', f.identityFile, '--metrics-file', file, '--smoke', 'SELECT 1/0']);
    expect(d.code).toBe(3);
    const started = (JSON.parse(d.stdout) as { startedAt: string }).startedAt;
    const samples = parsePrometheusText(await fsp.readFile(file, 'utf8')).samples;
    expect(value(samples, 'coffer_drill_last_result')).toBe(0);
    expect(value(samples, 'coffer_drill_last_timestamp_seconds')).toBeCloseTo(Date.parse(started) / 1000, 3);
  });

  it('a missing metrics directory, or a --file drill, is a usage error before anything runs', async () => {
    const s = await f.run(['status', '--from', f.path('repo'), '--metrics-file', f.path('no-such-dir', 'coffer.prom')]);
    expect(s.code).toBe(2);
    expect(errorLine(s.stderr)).toContain('its directory does not exist or is not writable');
    const d = await f.run(['drill', '--file', f.path('nothing.age'), '--identity', f.identityFile, '--metrics-file', f.path('x.prom')]);
    expect(d.code).toBe(2);
    expect(errorLine(d.stderr)).toContain('a --file drill has neither');
  });
});
