#!/usr/bin/env node
// coffer's overhead per database and per table (issue 18), against the pipelines people build by
// hand, measured in the same run on the same PostgreSQL and the same stored objects:
//
//   many databases   N small databases (1,000 rows each), all backed up:
//                      shell loop   for d in …; do pg_dump -Fc $d | zstd -1 | age -r R > $d.age; done
//                      coffer backup --all-databases               (one database after the other)
//                      coffer backup --all-databases --parallel 2
//   many tables      one database of T small tables (20 rows each), backed up once by coffer, then
//                    restored from that very object:
//                      manual       createdb X && age -d -i KEY F | zstd -d | pg_restore --exit-on-error -d X
//                      coffer restore --target-db Y                (atomic: scratch database, checks, rename)
//
// Runs alternate (manual first in odd rounds, coffer first in even ones); every database a run
// made is dropped and a CHECKPOINT taken before the next run, so no run pays for another's
// cleanup. Ratios are per round (coffer / manual of the same round); the median and the worst
// are reported.
//
//   node bench/overhead.mjs [--dbs N] [--tables N] [--rounds N] [--disk] [--durable] [--out FILE|-]
//
// The cluster and the repositories live in /dev/shm (a RAM file system) unless --disk (then
// TMPDIR): creating and dropping 4,000 tables' files on this machine's disk varies by ±25 % from
// one run to the next (the same pg_restore took 5.6-8.6 s), which hides what is measured here.
// --durable (implies --disk): the server as in production (fsync, full_page_writes and
// synchronous_commit on), where every commit of a restore waits for its WAL flush.
// Defaults: 20 databases, 4,000 tables, 5 rounds. Needs a build (npx tsc -p tsconfig.json), age,
// zstd and PostgreSQL 15's binaries; the repository is a local directory (no S3: what is measured
// is coffer's own overhead, the same storage for both sides). Appends its section to
// docs/benchmarks.md (or prints it with --out -). Everything it starts is stopped at the end, also
// on failure and on SIGINT/SIGTERM.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, cleanups, coffer, log, runBench, timed, writeSection } from './lib.mjs';

const opts = { dbs: 20, tables: 4000, rounds: 5, out: join(ROOT, 'docs/benchmarks.md'), disk: false, durable: false };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === '--dbs') opts.dbs = Number(process.argv[++i]);
  else if (a === '--tables') opts.tables = Number(process.argv[++i]);
  else if (a === '--rounds') opts.rounds = Number(process.argv[++i]);
  else if (a === '--out') opts.out = process.argv[++i];
  else if (a === '--disk') opts.disk = true;
  else if (a === '--durable') opts.durable = opts.disk = true;
  else {
    console.error('usage: node bench/overhead.mjs [--dbs N] [--tables N] [--rounds N] [--disk] [--durable] [--out FILE|-]');
    process.exit(2);
  }
}

const sh = (script, env) => timed(['bash', '-c', `set -euo pipefail; ${script}`], env);

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function main() {
  const base = !opts.disk && existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  const work = await mkdtemp(join(base, 'coffer-bench-overhead-'));
  await chmod(work, 0o755);
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  log('starting PostgreSQL');
  const { startThrowawayCluster } = await import('../dist/demo/throwaway-cluster.js');
  const pg = await startThrowawayCluster({ baseDir: work, settings: { shared_buffers: '256MB', max_wal_size: '4GB', ...(opts.durable ? { fsync: 'on', full_page_writes: 'on', synchronous_commit: 'on' } : {}) } });
  cleanups.push(() => pg.stop());
  const env = { ...process.env, ...pg.env(), PATH: `${pg.binDir}:${process.env.PATH}`, COFFER_PG_BIN: pg.binDir, COFFER_LOG_FORMAT: 'json' };
  delete env.PGDATABASE;
  const keyFile = join(work, 'identity.txt');
  spawnSync('age-keygen', ['-o', keyFile], { stdio: 'ignore' });
  const recipient = spawnSync('age-keygen', ['-y', keyFile], { encoding: 'utf8' }).stdout.trim();
  const settings = await pg.psql("SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'full_page_writes')");
  const checkpoint = () => pg.psql('CHECKPOINT');

  // --- many databases ------------------------------------------------------------------------
  const names = Array.from({ length: opts.dbs }, (_, i) => `small_${String(i).padStart(3, '0')}`);
  log(`building ${opts.dbs} databases of 1,000 rows`);
  for (const d of names) {
    await pg.psql(`CREATE DATABASE ${d}`);
    await pg.psql('CREATE TABLE t (id int PRIMARY KEY, v text, at timestamptz DEFAULT now()); INSERT INTO t (id, v) SELECT g, md5(g::text) FROM generate_series(1, 1000) g; VACUUM ANALYZE t;', d);
  }
  const loopDir = join(work, 'loop');
  const loop = `mkdir -p ${loopDir}; for d in ${names.join(' ')}; do pg_dump -Fc "$d" | zstd -1 -q | age -r ${recipient} > ${loopDir}/"$d".dump.zst.age; done`;
  const many = { loop: [], coffer: [], parallel: [] };
  let repoSeq = 0;
  const backupAll = async (extra) => {
    const repo = join(work, `repo-${++repoSeq}`);
    await mkdir(repo);
    const r = await coffer(['backup', '--to', repo, '--all-databases', '--recipient', recipient, '--json', ...extra], env);
    const stored = JSON.parse(r.stdout);
    if (stored.length !== opts.dbs) throw new Error(`coffer backup --all-databases stored ${stored.length} backups, not ${opts.dbs}`);
    await rm(repo, { recursive: true, force: true });
    return r.seconds;
  };
  // Warm cache, and a first run of each that is not counted.
  await sh(loop, env);
  await backupAll([]);
  for (let round = 0; round < opts.rounds; round++) {
    const order = round % 2 === 0 ? ['loop', 'coffer', 'parallel'] : ['parallel', 'coffer', 'loop'];
    for (const which of order) {
      await checkpoint();
      if (which === 'loop') {
        await rm(loopDir, { recursive: true, force: true });
        many.loop.push((await sh(loop, env)).seconds);
        if ((await readdir(loopDir)).length !== opts.dbs) throw new Error('the shell loop did not write every database');
      } else many[which].push(await backupAll(which === 'parallel' ? ['--parallel', '2'] : []));
    }
    log(`many databases, round ${round + 1}: loop ${many.loop.at(-1).toFixed(2)} s, coffer ${many.coffer.at(-1).toFixed(2)} s, --parallel 2 ${many.parallel.at(-1).toFixed(2)} s`);
  }
  for (const d of names) await pg.psql(`DROP DATABASE ${d}`);

  // --- many tables ---------------------------------------------------------------------------
  log(`building a database of ${opts.tables} tables of 20 rows`);
  await pg.psql('CREATE DATABASE many_tables');
  for (let from = 0; from < opts.tables; from += 500) {
    const sql = [];
    for (let i = from; i < Math.min(opts.tables, from + 500); i++) {
      sql.push(`CREATE TABLE t${i} (id int PRIMARY KEY, v text); INSERT INTO t${i} SELECT g, md5(g::text) FROM generate_series(1, 20) g;`);
    }
    await pg.psql(sql.join('\n'), 'many_tables');
  }
  const repo = join(work, 'repo-tables');
  await mkdir(repo);
  const b = await coffer(['backup', '--to', repo, '--db', 'many_tables', '--recipient', recipient, '--json'], env);
  const manifest = JSON.parse(b.stdout)[0];
  const object = join(repo, manifest.dump.key);
  log(`backup of ${opts.tables} tables: ${b.seconds.toFixed(2)} s, ${manifest.dump.size} bytes stored`);
  const manual = (db) => sh(`createdb ${db} && age -d -i ${keyFile} ${object} | zstd -d -q | pg_restore --exit-on-error -d ${db}`, env);
  const restore = (db) => coffer(['restore', '--from', repo, '--db', 'many_tables', '--identity', keyFile, '--target-db', db, '--json'], env);
  const tables = { manual: [], coffer: [] };
  let seq = 0;
  /** coffer's own phases (ms) per run, for the log: where a slow round spent its time. */
  const phases = [];
  const one = async (which) => {
    const db = `r_${which}_${++seq}`;
    const r = which === 'manual' ? await manual(db) : await restore(db);
    const n = Number(await pg.psql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'", db));
    if (n !== opts.tables) throw new Error(`${which} restore made ${n} tables, not ${opts.tables}`);
    await pg.psql(`DROP DATABASE ${db}`);
    await checkpoint();
    if (which === 'coffer') phases.push(JSON.parse(r.stdout).phases);
    return r.seconds;
  };

  // One of each, not counted (warm cache).
  await one('manual');
  await one('coffer');
  for (let round = 0; round < opts.rounds; round++) {
    for (const which of round % 2 === 0 ? ['manual', 'coffer'] : ['coffer', 'manual']) tables[which].push(await one(which));
    log(`many tables, round ${round + 1}: manual ${tables.manual.at(-1).toFixed(2)} s, coffer ${tables.coffer.at(-1).toFixed(2)} s (phases, ms: ${Object.entries(phases.at(-1) ?? {}).map(([k, v]) => `${k} ${v}`).join(', ')})`);
  }

  // --- report --------------------------------------------------------------------------------
  const ratios = (a, b) => a.map((x, i) => x / b[i]);
  const rt = ratios(tables.coffer, tables.manual);
  const rm1 = ratios(many.coffer, many.loop);
  const rp = ratios(many.parallel, many.loop);
  const rpc = ratios(many.parallel, many.coffer);
  const fmt = (xs) => xs.map((x) => x.toFixed(2)).join(', ');
  const lines = [
    '',
    `## Overhead per table and per database (bench/overhead.mjs, ${new Date().toISOString().slice(0, 10)})`,
    '',
    `One run: ${cpus().length} cores, load ${loadavg()[0].toFixed(2)} at the end; a throwaway PostgreSQL 15 (${settings}); a local-directory repository; cluster and repository in ${base === '/dev/shm' ? '/dev/shm (RAM)' : base}; ${opts.rounds} rounds, alternating, each ratio within its round.`,
    '',
    `**${opts.tables} tables of 20 rows** (${manifest.dump.size} bytes stored), restored from the same object:`,
    '',
    '| | wall s per round | median |',
    '|---|---|---:|',
    `| manual: createdb; age -d \\| zstd -d \\| pg_restore --exit-on-error | ${fmt(tables.manual)} | ${median(tables.manual).toFixed(2)} |`,
    `| coffer restore (scratch database, checks, rename) | ${fmt(tables.coffer)} | ${median(tables.coffer).toFixed(2)} |`,
    `| **ratio** coffer / manual | ${fmt(rt)} | **${median(rt).toFixed(2)}×** (worst ${Math.max(...rt).toFixed(2)}×) |`,
    '',
    `**${opts.dbs} databases of 1,000 rows**, all backed up:`,
    '',
    '| | wall s per round | median |',
    '|---|---|---:|',
    `| shell loop: pg_dump -Fc \\| zstd -1 \\| age -r, one database after the other | ${fmt(many.loop)} | ${median(many.loop).toFixed(2)} |`,
    `| coffer backup --all-databases | ${fmt(many.coffer)} | ${median(many.coffer).toFixed(2)} |`,
    `| coffer backup --all-databases --parallel 2 | ${fmt(many.parallel)} | ${median(many.parallel).toFixed(2)} |`,
    `| **ratio** coffer / loop | ${fmt(rm1)} | **${median(rm1).toFixed(2)}×** (worst ${Math.max(...rm1).toFixed(2)}×) |`,
    `| **ratio** --parallel 2 / loop | ${fmt(rp)} | **${median(rp).toFixed(2)}×** |`,
    `| **ratio** --parallel 2 / one at a time | ${fmt(rpc)} | **${median(rpc).toFixed(2)}×** |`,
    '',
    "coffer's side includes what the loop and the manual pipeline do not do: a lock per database (a lock file and a PostgreSQL advisory lock), the tier choice (a listing), an archive index, a manifest committed last, fsync of every object, the archive walked whole before pg_restore's input ends, the restore into a scratch database, the check of every table against the archive, the database's properties, and the rename.",
    '',
  ];
  await writeSection(opts.out, lines.join('\n'));
}

runBench(main);
