#!/usr/bin/env node
// One line-coverage report over src/, from two sources:
//  - vitest's in-process coverage (@vitest/coverage-v8, istanbul JSON: --vitest FILE), and
//  - the raw V8 coverage that every CLI subprocess of the tests wrote (NODE_V8_COVERAGE, passed
//    by test/harness/cli.ts: --v8 DIR). Those ran dist/**/*.js; tsc's source maps take them back
//    to src/**/*.ts. They are converted with ast-v8-to-istanbul, the converter vitest's own
//    provider uses, so both sides describe the same statements and branches and merge cleanly.
// Prints a per-folder table, writes the merged istanbul JSON (--out FILE), and with --check
// exits 1 when line coverage of src/ is below the threshold in scripts/coverage-threshold.json.
// --uncovered FOLDER,FOLDER prints every uncovered branch and line of those src/ folders.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { mergeProcessCovs } from '@bcoe/v8-coverage';
import astV8ToIstanbul from 'ast-v8-to-istanbul';
import libCoverage from 'istanbul-lib-coverage';
import { parseAstAsync } from 'vitest/node';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SRC = path.join(ROOT, 'src') + path.sep;
const DIST_URL = pathToFileURL(path.join(ROOT, 'dist')).href + '/';
const THRESHOLD_FILE = path.join(ROOT, 'scripts/coverage-threshold.json');

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const vitestJson = opt('--vitest');
// More istanbul JSON reports of the same vitest transform (e.g. a second, partial run) to add.
const more = args.flatMap((a, i) => (a === '--add' ? [args[i + 1]] : []));
const v8Dir = opt('--v8');
const out = opt('--out');
const uncovered = opt('--uncovered');
const check = args.includes('--check');

// The merged report, file → istanbul file coverage (plain JSON until the end).
const files = {};

// vitest's report is the skeleton: it lists every file of src/ (loaded or not) with the
// statements, functions and branches of vite's transform. A subprocess's report of the same file
// comes from tsc's output and map, which agree with vite's on where each statement starts but
// not always on where it ends, nor where an arrow function begins. So each of its entries is
// matched to the skeleton's entry of the same kind at the same start (or, failing that, on the
// same line at the nearest column) and its hits are added there: the totals stay vitest's.
const startKey = (loc) => `${loc.start.line}:${loc.start.column}`;
function matcher(entries, locOf) {
  const exact = new Map();
  const byLine = new Map();
  for (const [id, e] of Object.entries(entries)) {
    const loc = locOf(e);
    exact.set(startKey(loc), id);
    if (!byLine.has(loc.start.line)) byLine.set(loc.start.line, []);
    byLine.get(loc.start.line).push([loc.start.column, id]);
  }
  return (e) => {
    const loc = locOf(e);
    const hit = exact.get(startKey(loc));
    if (hit !== undefined) return hit;
    const same = byLine.get(loc.start.line);
    if (!same) return undefined;
    return same.reduce((a, b) => (Math.abs(b[0] - loc.start.column) < Math.abs(a[0] - loc.start.column) ? b : a))[1];
  };
}
function addFile(file, other) {
  const base = files[file];
  if (!base) {
    files[file] = other;
    return;
  }
  const s = matcher(base.statementMap, (x) => x);
  for (const [id, n] of Object.entries(other.s)) {
    const to = s(other.statementMap[id]);
    if (to !== undefined) base.s[to] += n;
  }
  const f = matcher(base.fnMap, (x) => x.decl);
  for (const [id, n] of Object.entries(other.f)) {
    const to = f(other.fnMap[id]);
    if (to !== undefined) base.f[to] += n;
  }
  const b = matcher(base.branchMap, (x) => x.loc);
  for (const [id, counts] of Object.entries(other.b)) {
    const to = b(other.branchMap[id]);
    if (to === undefined || base.b[to].length !== counts.length) continue;
    counts.forEach((n, i) => (base.b[to][i] += n));
  }
}

// 1. In-process tests (vitest).
if (vitestJson && fs.existsSync(vitestJson)) Object.assign(files, JSON.parse(fs.readFileSync(vitestJson, 'utf8')));
for (const f of more) for (const [file, fc] of Object.entries(JSON.parse(fs.readFileSync(f, 'utf8')))) addFile(file, fc);

// 2. CLI subprocesses: keep only the scripts of dist/, merge the processes (a few at a time, to
//    keep memory flat), then convert each script once.
let processes = 0;
if (v8Dir && fs.existsSync(v8Dir)) {
  let merged = { result: [] };
  let batch = [];
  const flush = () => {
    if (batch.length) merged = mergeProcessCovs([merged, ...batch]);
    batch = [];
  };
  for (const name of fs.readdirSync(v8Dir).filter((n) => n.endsWith('.json'))) {
    let raw;
    try {
      raw = JSON.parse(fs.readFileSync(path.join(v8Dir, name), 'utf8'));
    } catch {
      continue; // a process killed while writing its file
    }
    batch.push({ result: raw.result.filter((s) => s.url.startsWith(DIST_URL) && s.url.endsWith('.js')) });
    processes++;
    if (batch.length >= 50) flush();
  }
  flush();
  for (const script of merged.result) {
    const file = fileURLToPath(script.url);
    const mapFile = `${file}.map`;
    if (!fs.existsSync(file) || !fs.existsSync(mapFile)) continue;
    const code = fs.readFileSync(file, 'utf8');
    const sourceMap = JSON.parse(fs.readFileSync(mapFile, 'utf8'));
    sourceMap.sources = sourceMap.sources.map((s) => new URL(s, script.url).href);
    const converted = await astV8ToIstanbul({
      code,
      sourceMap,
      ast: await parseAstAsync(code),
      coverage: { functions: script.functions, url: script.url },
      wrapperLength: 0,
    });
    for (const [file, fc] of Object.entries(converted)) addFile(file, fc);
  }
}

const map = libCoverage.createCoverageMap({});
for (const [file, fc] of Object.entries(files)) if (file.startsWith(SRC) && file.endsWith('.ts')) map.addFileCoverage(fc);
if (out) fs.writeFileSync(out, JSON.stringify(map.toJSON()));

// Per-folder table: src/<folder>/ (files directly in src/ are "src/*.ts").
const folders = new Map();
const total = libCoverage.createCoverageSummary();
for (const f of map.files()) {
  const rel = path.relative(SRC, f);
  const key = rel.includes(path.sep) ? `src/${rel.split(path.sep)[0]}` : 'src/*.ts';
  if (!folders.has(key)) folders.set(key, libCoverage.createCoverageSummary());
  const s = map.fileCoverageFor(f).toSummary();
  folders.get(key).merge(s);
  total.merge(s);
}
const cell = (m) => `${(Math.floor((typeof m.pct === "number" ? m.pct : 100) * 10) / 10).toFixed(1).padStart(5)} % ${`(${m.covered}/${m.total})`.padEnd(12)}`;
const rows = [...folders.keys()].sort().map((k) => [k, folders.get(k)]);
rows.push(['src (all)', total]);
const w = Math.max(...rows.map(([k]) => k.length));
console.log(`\ncoverage of src/ (in-process tests + ${processes} CLI subprocesses):`);
console.log(`${'folder'.padEnd(w)}  ${'lines'.padEnd(21)}${'branches'.padEnd(21)}${'functions'.padEnd(21)}`);
for (const [k, s] of rows) {
  if (k === 'src (all)') console.log('-'.repeat(w + 65));
  console.log(`${k.padEnd(w)}  ${cell(s.lines)}  ${cell(s.branches)}  ${cell(s.functions)}`);
}

if (uncovered) {
  for (const folder of uncovered.split(',')) {
    const dir = path.join(SRC, folder) + path.sep;
    console.log(`\nuncovered in src/${folder}/:`);
    for (const f of map.files().filter((x) => x.startsWith(dir)).sort()) {
      const fc = map.fileCoverageFor(f);
      const rel = path.relative(ROOT, f);
      const lines = Object.entries(fc.getLineCoverage()).filter(([, n]) => n === 0).map(([l]) => Number(l));
      const ranges = [];
      for (const l of lines) {
        const last = ranges[ranges.length - 1];
        if (last && last[1] === l - 1) last[1] = l;
        else ranges.push([l, l]);
      }
      if (ranges.length) console.log(`  ${rel} lines ${ranges.map(([a, b]) => (a === b ? a : `${a}-${b}`)).join(', ')}`);
      for (const [id, counts] of Object.entries(fc.b)) {
        const br = fc.branchMap[id];
        counts.forEach((n, i) => {
          if (n !== 0) return;
          const loc = br.locations[i]?.start?.line !== undefined ? br.locations[i] : br.loc;
          console.log(`  ${rel}:${loc.start.line} ${br.type} branch ${i + 1}/${counts.length}`);
        });
      }
    }
  }
}

if (check) {
  const { lines } = JSON.parse(fs.readFileSync(THRESHOLD_FILE, 'utf8'));
  const pct = Math.floor(total.lines.pct * 10) / 10;
  if (pct < lines) {
    console.log(`coverage: line coverage of src/ is ${pct} %, below the threshold of ${lines} % (${path.relative(ROOT, THRESHOLD_FILE)})`);
    process.exit(1);
  }
  console.log(`coverage: line coverage of src/ is ${pct} % (threshold ${lines} %)`);
}
