/**
 * `coffer report --html`: one self-contained HTML page (no script, no network at view time: CSS
 * and SVG inline), for the people who approve backup policies and for auditors. Per database:
 * its state against the objectives, a timeline of its backups (size as bars coloured by tier,
 * duration as dots), its drills with the restore time predicted before each and the one measured,
 * and the warnings its backups carried.
 */
import type { ReportData, ReportDatabase } from '../cli/run/report.js';
import { formatBytes } from './log.js';

const TIER_COLOURS: Record<string, string> = { daily: '#4c78a8', weekly: '#f58518', monthly: '#54a24b', manual: '#b279a2' };

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function seconds(s: number | null): string {
  if (s === null) return '—';
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function age(s: number | null): string {
  if (s === null) return '—';
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172_800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

/** The timeline of one database's backups: bars (stored size) coloured by tier, dots (duration), over their time span. */
function timeline(d: ReportDatabase): string {
  const W = 760;
  const H = 180;
  const pad = { l: 64, r: 56, t: 12, b: 28 };
  const backups = [...d.backups].reverse(); // oldest first
  if (backups.length === 0) return '<p class="none">No completed backup.</p>';
  const times = backups.map((b) => Date.parse(b.finishedAt));
  const t0 = Math.min(...times);
  const t1 = Math.max(...times);
  const span = Math.max(1, t1 - t0);
  const maxSize = Math.max(1, ...backups.map((b) => b.storedBytes));
  const maxDur = Math.max(0.001, ...backups.map((b) => b.durationSeconds));
  const innerW = W - pad.l - pad.r;
  const innerH = H - pad.t - pad.b;
  const barW = Math.max(2, Math.min(18, innerW / Math.max(1, backups.length) - 2));
  const x = (t: number): number => pad.l + (backups.length === 1 ? innerW / 2 : ((t - t0) / span) * (innerW - barW)) ;
  const parts: string[] = [];
  parts.push(`<line x1="${pad.l}" y1="${H - pad.b}" x2="${W - pad.r}" y2="${H - pad.b}" class="axis"/>`);
  parts.push(`<text x="${pad.l - 6}" y="${pad.t + 10}" class="lbl" text-anchor="end">${esc(formatBytes(maxSize))}</text>`);
  parts.push(`<text x="${pad.l - 6}" y="${H - pad.b}" class="lbl" text-anchor="end">0</text>`);
  parts.push(`<text x="${W - pad.r + 6}" y="${pad.t + 10}" class="lbl">${esc(seconds(maxDur))}</text>`);
  parts.push(`<text x="${pad.l}" y="${H - 8}" class="lbl">${esc(new Date(t0).toISOString().slice(0, 16).replace('T', ' '))}</text>`);
  if (backups.length > 1) parts.push(`<text x="${W - pad.r}" y="${H - 8}" class="lbl" text-anchor="end">${esc(new Date(t1).toISOString().slice(0, 16).replace('T', ' '))} UTC</text>`);
  for (const [i, b] of backups.entries()) {
    const h = Math.max(1, (b.storedBytes / maxSize) * innerH);
    const bx = x(times[i]!);
    parts.push(
      `<rect x="${bx.toFixed(1)}" y="${(H - pad.b - h).toFixed(1)}" width="${barW.toFixed(1)}" height="${h.toFixed(1)}" fill="${TIER_COLOURS[b.tier] ?? '#888'}"><title>${esc(`${b.id} (${b.tier}, ${b.kind}): ${formatBytes(b.storedBytes)} stored in ${seconds(b.durationSeconds)}`)}</title></rect>`,
    );
    const dy = H - pad.b - (b.durationSeconds / maxDur) * innerH;
    parts.push(`<circle cx="${(bx + barW / 2).toFixed(1)}" cy="${dy.toFixed(1)}" r="3" class="dur"><title>${esc(`${b.id}: ${seconds(b.durationSeconds)}`)}</title></circle>`);
  }
  const legend = Object.entries(TIER_COLOURS)
    .map(([t, c]) => `<span class="key"><span class="sw" style="background:${c}"></span>${t}</span>`)
    .join(' ');
  return `<svg class="timeline" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(`backups of ${d.database} over time`)}">${parts.join('')}</svg>
<p class="legend">${legend} <span class="key"><span class="dot"></span>duration</span> — bars: stored size</p>`;
}

/** A section's id: `db-<database>`, or `db-<source>/<database>` in a report over sources. */
function anchor(d: ReportDatabase): string {
  return `db-${d.source !== undefined ? `${d.source}/` : ''}${d.database}`;
}

function databaseSection(d: ReportDatabase): string {
  const s = d.status;
  const state = s.problems.length === 0 ? 'OK' : s.fresh ? 'MISS' : 'STALE';
  const problems = s.problems.length ? `<ul class="problems">${s.problems.map((p) => `<li>${esc(p)}</li>`).join('')}</ul>` : '';
  const backups = d.backups
    .slice(0, 20)
    .map(
      (b) =>
        `<tr><td class="mono">${esc(b.id)}</td><td>${esc(b.tier)}</td><td>${esc(b.kind)}</td><td>${esc(b.finishedAt.replace('T', ' ').slice(0, 19))}</td><td class="num">${esc(formatBytes(b.storedBytes))}</td><td class="num">${esc(seconds(b.durationSeconds))}</td><td>${b.warnings.length}</td></tr>`,
    )
    .join('');
  const drills = d.drills.length
    ? `<table><thead><tr><th>drill</th><th>backup</th><th>result</th><th>stored</th><th>predicted before it</th><th>measured</th></tr></thead><tbody>${d.drills
        .map(
          (r) =>
            `<tr class="${r.ok ? '' : 'bad'}"><td class="mono">${esc(r.id)}</td><td class="mono">${esc(r.backupId ?? '—')}</td><td>${r.ok ? 'ok' : esc(`failed (exit ${r.failure?.exitCode ?? '?'}, ${r.failure?.kind ?? '?'})`)}</td><td class="num">${esc(formatBytes(r.storedBytes))}</td><td class="num">${esc(seconds(r.predictedSeconds))}</td><td class="num">${esc(seconds(r.measuredSeconds))}</td></tr>`,
        )
        .join('')}</tbody></table>`
    : '<p class="none">No drill recorded (<code>coffer drill --record</code>).</p>';
  const warnings = d.backups.flatMap((b) => b.warnings.map((w) => ({ id: b.id, w })));
  const warningList = warnings.length ? `<ul class="warnings">${warnings.slice(0, 50).map((x) => `<li><span class="mono">${esc(x.id)}</span>: ${esc(x.w)}</li>`).join('')}</ul>` : '<p class="none">No warnings.</p>';
  return `<section id="${esc(anchor(d))}" class="db">
<h2><span class="state ${state.toLowerCase()}">${state}</span> ${d.source !== undefined ? `<span class="src">${esc(d.source)}</span> ` : ''}${esc(d.database)}</h2>
${problems}
<dl>
<dt>newest backup</dt><dd>${s.id ? `<span class="mono">${esc(s.id)}</span>, ${esc(age(s.ageSeconds))} old, ${esc(formatBytes(s.size ?? 0))}` : 'none'}</dd>
<dt>recovery point</dt><dd>${esc(age(s.recoveryPointSeconds))} ago${s.recoveryPointAt ? ` (${esc(s.recoveryPointAt)})` : ''}</dd>
<dt>predicted restore</dt><dd>${s.predictedRestoreSeconds === null ? 'unknown (no successful drill)' : `${esc(seconds(s.predictedRestoreSeconds))} (drill <span class="mono">${esc(s.predictedFrom!.drill)}</span> scaled ×${s.predictedFrom!.scale})`}</dd>
</dl>
<h3>Backups</h3>
${timeline(d)}
<table><thead><tr><th>id</th><th>tier</th><th>kind</th><th>finished (UTC)</th><th>stored</th><th>duration</th><th>warnings</th></tr></thead><tbody>${backups}</tbody></table>
<h3>Drills</h3>
${drills}
<h3>Warnings</h3>
${warningList}
</section>`;
}

export function renderReportHtml(r: ReportData): string {
  const rows = r.databases
    .map((d) => {
      const s = d.status;
      const state = s.problems.length === 0 ? 'OK' : s.fresh ? 'MISS' : 'STALE';
      return `<tr><td><span class="state ${state.toLowerCase()}">${state}</span></td><td><a href="#${esc(anchor(d))}">${d.source !== undefined ? `${esc(d.source)}/` : ''}${esc(d.database)}</a></td><td class="num">${esc(age(s.ageSeconds))}</td><td class="num">${esc(age(s.recoveryPointSeconds))}</td><td class="num">${esc(seconds(s.predictedRestoreSeconds))}</td><td>${s.drill ? `${s.drill.ok ? 'ok' : 'failed'}, ${esc(age(s.drill.ageSeconds))} ago` : '—'}</td><td>${esc(s.problems.join('; '))}</td></tr>`;
    })
    .join('');
  const objectives = [
    `newest backup within ${esc(r.objectives.maxAge)}`,
    ...(r.objectives.rpoTarget ? [`recovery point within ${esc(r.objectives.rpoTarget)}`] : []),
    ...(r.objectives.rtoTarget ? [`restore within ${esc(r.objectives.rtoTarget)}`] : []),
    ...(r.objectives.maxDrillAge ? [`a drill within ${esc(r.objectives.maxDrillAge)}`] : []),
  ].join(', ');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>coffer report: ${esc(r.repository)}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-top:1px solid #ddd;padding-top:16px}h3{font-size:15px;margin:18px 0 6px}
.meta{color:#666}table{border-collapse:collapse;width:100%;margin:6px 0}th,td{border-bottom:1px solid #eee;padding:4px 6px;text-align:left;vertical-align:top}th{background:#fafafa}
.num{text-align:right;white-space:nowrap}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.state{display:inline-block;padding:1px 6px;border-radius:3px;font-size:12px;font-weight:600;color:#fff}.state.ok{background:#2e7d32}.state.stale{background:#c62828}.state.miss{background:#ef6c00}
.problems li{color:#b71c1c}.warnings li{color:#8d6e00}.none{color:#777}tr.bad td{background:#fff3f3}
dl{display:grid;grid-template-columns:160px 1fr;gap:2px 12px;margin:8px 0}dt{color:#666}dd{margin:0}
svg.timeline{max-width:100%;height:auto;background:#fcfcfc;border:1px solid #eee}.axis{stroke:#999}.lbl{font-size:11px;fill:#666}.dur{fill:#222}
.src{color:#666;font-weight:normal}.legend{color:#555;font-size:12px}.key{margin-right:10px;white-space:nowrap}.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}.dot{display:inline-block;width:6px;height:6px;border-radius:3px;background:#222;margin-right:4px;vertical-align:middle}
</style>
</head>
<body>
<h1>coffer report</h1>
<p class="meta">Repository <span class="mono">${esc(r.repository)}</span> · generated ${esc(r.generatedAt)} by coffer ${esc(r.coffer)} · objectives: ${objectives}</p>
${r.notes.length ? `<ul class="warnings">${r.notes.map((n) => `<li>${esc(n)}</li>`).join('')}</ul>` : ''}
<h2>Retention</h2>
<ul class="retention">${r.retention
    .map((x) => {
      const where = `<span class="mono">${esc(x.source !== undefined ? `${x.source}: ${x.repository}` : x.repository)}</span>`;
      if (!x.checked) return `<li>${where}: ${esc(x.note ?? 'not checked')}</li>`;
      if (x.drift.length === 0) return `<li>${where}: <span class="state ok">OK</span> lifecycle and object lock match the policy</li>`;
      return `<li>${where}: <span class="state stale">DRIFT</span><ul class="problems">${x.drift.map((d) => `<li>${esc(d)}</li>`).join('')}</ul></li>`;
    })
    .join('')}</ul>
<table><thead><tr><th>state</th><th>database</th><th>newest backup</th><th>recovery point</th><th>predicted restore</th><th>newest drill</th><th>problems</th></tr></thead><tbody>${rows}</tbody></table>
${r.databases.map(databaseSection).join('\n')}
</body>
</html>
`;
}
