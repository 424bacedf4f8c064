#!/usr/bin/env node
// Ranged, index-backed selective restores against full restores, and what the index costs a
// backup (issue 15, item 3). One run, one machine, one RGW, one database:
//
//   a database with one large table (--big-mb, default 1024 MiB of rows on disk) between small ones
//   backup --no-index and backup (with the index, the default), alternated --repeat times: wall time, bytes stored
//   restore (whole)                             the full restore
//   restore --table z_small                      ranged: only the index, the header, the TOC frames and the table's frames
//   restore --table z_small --download-whole     the same selection, reading the whole backup
//
//   node bench/selective-restore.mjs [--big-mb N] [--repeat N] [--out FILE|-]
//
// Needs a build (npx tsc -p tsconfig.json), age, zstd (with pzstd), PostgreSQL 15's binaries and
// Ceph (scripts/rgw-up.sh). Appends its section to docs/benchmarks.md (or prints it with --out -).
// Everything it starts is stopped at the end, also on failure and on SIGINT/SIGTERM.
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, chmod } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, cleanups, coffer, log, runBench, writeSection } from './lib.mjs';

const MiB = 1024 * 1024;

const opts = { bigMb: 1024, repeat: 2, out: join(ROOT, 'docs/benchmarks.md') };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === '--big-mb') opts.bigMb = Number(process.argv[++i]);
  else if (a === '--repeat') opts.repeat = Number(process.argv[++i]);
  else if (a === '--out') opts.out = process.argv[++i];
  else {
    console.error('usage: node bench/selective-restore.mjs [--big-mb N] [--repeat N] [--out FILE|-]');
    process.exit(2);
  }
}

async function main() {
  const work = await mkdtemp(join(tmpdir(), 'coffer-bench-sel-'));
  await chmod(work, 0o755);
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  log('starting RGW and PostgreSQL');
  const rgwDir = join(work, 'rgw');
  cleanups.push(async () => spawnSync('bash', [join(ROOT, 'scripts/rgw-down.sh'), rgwDir], { stdio: 'ignore', timeout: 60_000 }));
  const up = spawnSync('bash', [join(ROOT, 'scripts/rgw-up.sh'), rgwDir], { env: { ...process.env, RGW_OSD_SIZE_GB: '20' }, encoding: 'utf8', timeout: 180_000 });
  if (up.status !== 0) throw new Error(`rgw-up.sh failed: ${up.stderr.split('\n').slice(-5).join('\n')}`);
  const rgw = Object.fromEntries(up.stdout.split('\n').map((l) => /^([A-Z0-9_]+)=(.*)$/.exec(l)).filter(Boolean).map((m) => [m[1], m[2]]));
  const { startThrowawayCluster } = await import('../dist/demo/throwaway-cluster.js');
  const pg = await startThrowawayCluster({ baseDir: work, settings: { shared_buffers: '256MB', max_wal_size: '4GB', maintenance_work_mem: '256MB' } });
  cleanups.push(() => pg.stop());
  const env = {
    ...process.env,
    ...pg.env(),
    PATH: `${pg.binDir}:${process.env.PATH}`,
    AWS_ACCESS_KEY_ID: rgw.RGW_ADMIN_ACCESS_KEY,
    AWS_SECRET_ACCESS_KEY: rgw.RGW_ADMIN_SECRET_KEY,
    AWS_ENDPOINT_URL_S3: rgw.RGW_ENDPOINT,
    AWS_REGION: rgw.RGW_REGION,
    COFFER_PG_BIN: pg.binDir,
    COFFER_LOG_FORMAT: 'json',
  };
  delete env.PGDATABASE;
  delete env.AWS_CA_BUNDLE;
  const keyFile = join(work, 'identity.txt');
  spawnSync('age-keygen', ['-o', keyFile], { stdio: 'ignore' });
  const recipient = spawnSync('age-keygen', ['-y', keyFile], { encoding: 'utf8' }).stdout.trim();
  await coffer(['init', '--to', 's3://bench/r', '--create-bucket'], env);

  const db = 'bench_sel';
  log(`building ${db}: a_small, big (${opts.bigMb} MiB on disk), z_small`);
  await pg.psql(`CREATE DATABASE ${db}`);
  // ~240 bytes a row on disk: text that compresses about 2:1, like much real data.
  const rows = Math.round((opts.bigMb * MiB) / 240);
  await pg.psql(
    `CREATE TABLE a_small (id int PRIMARY KEY, v text);
     INSERT INTO a_small SELECT g, md5(g::text) FROM generate_series(1, 10000) g;
     CREATE TABLE big (id bigint PRIMARY KEY, k text, v text);
     INSERT INTO big SELECT g, md5(g::text), repeat(md5((g * 31)::text), 5) FROM generate_series(1, ${rows}) g;
     CREATE TABLE z_small (id int PRIMARY KEY, v text, at date);
     INSERT INTO z_small SELECT g, repeat(md5(g::text), 3), DATE '2026-01-01' + g % 300 FROM generate_series(1, 20000) g;
     VACUUM ANALYZE;`,
    db,
  );
  const dbBytes = Number(await pg.psql(`SELECT pg_database_size('${db}')`));
  const smallSum = await pg.psql('SELECT count(*) || \':\' || md5(string_agg(md5(z::text), \'\' ORDER BY md5(z::text))) FROM z_small z', db);
  log(`database: ${(dbBytes / MiB).toFixed(0)} MiB`);

  // Warm cache: one dump to /dev/null.
  spawnSync('bash', ['-c', `pg_dump -Fc -Z0 ${db} > /dev/null`], { env });

  const backups = { plain: [], indexed: [] };
  for (let i = 0; i < opts.repeat; i++) {
    for (const kind of i % 2 === 0 ? ['plain', 'indexed'] : ['indexed', 'plain']) {
      const r = await coffer(['backup', '--to', `s3://bench/${kind}`, '--db', db, '--recipient', recipient, '--tier', 'manual', '--json', ...(kind === 'plain' ? ['--no-index'] : [])], env);
      const m = JSON.parse(r.stdout)[0];
      backups[kind].push({ seconds: r.seconds, size: m.dump.size, indexSize: m.index?.size ?? 0, id: m.id, frames: undefined });
      log(`backup ${kind}: ${r.seconds.toFixed(1)} s, ${(m.dump.size / MiB).toFixed(1)} MiB${m.index ? ` + index ${m.index.size} B` : ''}`);
    }
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
  const plainS = median(backups.plain.map((b) => b.seconds));
  const indexedS = median(backups.indexed.map((b) => b.seconds));
  const plainSize = backups.plain[0].size;
  const indexed = backups.indexed[0];
  const indexedSize = indexed.size + indexed.indexSize;

  const restores = [];
  const restore = async (name, target, extra) => {
    const r = await coffer(['restore', '--from', 's3://bench/indexed', '--db', db, '--backup', indexed.id, '--identity', keyFile, '--target-db', target, '--json', ...extra], env);
    const s = JSON.parse(r.stdout);
    const d = s.selection?.download;
    restores.push({ name, seconds: r.seconds, bytes: d && d !== 'whole' ? d.bytes : s.storedBytes, requests: d && d !== 'whole' ? d.requests : 1 });
    log(`${name}: ${r.seconds.toFixed(1)} s, ${(restores.at(-1).bytes / MiB).toFixed(2)} MiB downloaded`);
    if (process.env.BENCH_TRACE) for (const l of r.stderr.split('\n').filter(Boolean)) console.error(`   ${l.slice(0, 200)}`);
    if (extra.includes('z_small')) {
      const got = await pg.psql('SELECT count(*) || \':\' || md5(string_agg(md5(z::text), \'\' ORDER BY md5(z::text))) FROM z_small z', target);
      if (got !== smallSum) throw new Error(`${name}: z_small differs from the source`);
    }
    await pg.psql(`DROP DATABASE ${target}`);
  };
  await restore('full restore (whole database)', 'r_full', []);
  await restore('restore --table z_small (ranged, by the index)', 'r_ranged', ['--table', 'z_small']);
  await restore('restore --table z_small --download-whole', 'r_whole', ['--table', 'z_small', '--download-whole']);
  await restore('restore --table z_small (ranged, again)', 'r_ranged2', ['--table', 'z_small']);

  const full = restores[0];
  const ranged = restores.filter((r) => r.name.includes('ranged'));
  const rangedS = median(ranged.map((r) => r.seconds));
  const lines = [
    '',
    `## Selective restore by the archive index (bench/selective-restore.mjs, ${new Date().toISOString().slice(0, 10)})`,
    '',
    `One run against a throwaway RGW: database of ${(dbBytes / MiB).toFixed(0)} MiB (table \`big\` ${opts.bigMb} MiB on disk, text that compresses about 2:1, between \`a_small\` and \`z_small\`); ${cpus().length} cores, load ${loadavg()[0].toFixed(2)} at the end; zstd level 1 (coffer's default), pzstd frames of 2 MiB.`,
    '',
    '| backup | wall s (median of ' + opts.repeat + ') | stored bytes |',
    '|---|---:|---:|',
    `| backup --no-index (pg_dump → dd → zstd -T0) | ${plainS.toFixed(1)} | ${plainSize} |`,
    `| backup, the default (pg_dump → node → pzstd -p 1, index sidecar) | ${indexedS.toFixed(1)} | ${indexed.size} + ${indexed.indexSize} (index) |`,
    `| **ratio** | **${(indexedS / plainS).toFixed(3)}×** | **${(indexedSize / plainSize).toFixed(4)}×** |`,
    '',
    '| restore of the indexed backup | wall s | downloaded | of the object | ranged reads |',
    '|---|---:|---:|---:|---:|',
    ...restores.map((r) => `| ${r.name} | ${r.seconds.toFixed(1)} | ${(r.bytes / MiB).toFixed(2)} MiB | ${((100 * r.bytes) / indexed.size).toFixed(2)} % | ${r.requests} |`),
    '',
    `Ranged restore of one small table against the full restore: **${(full.seconds / rangedS).toFixed(1)}× faster**, **${((100 * median(ranged.map((r) => r.bytes))) / indexed.size).toFixed(2)} %** of the bytes. Against the same selection read whole (--download-whole): ${(restores[2].seconds / rangedS).toFixed(1)}× faster.`,
    '',
  ];
  await writeSection(opts.out, lines.join('\n'));
}

runBench(main);
