#!/usr/bin/env node
// End-to-end benchmark of coffer against the pipelines people build by hand (issue 6).
//
//   npm run bench                      full scale: pgbench -s 100 + 512 MiB of random bytea (~2.1 GB)
//   npm run bench -- --scale small     quick run: pgbench -s 10 + 50 MiB of bytea (~210 MB)
//
// Options: --scale full|small, --out FILE (default docs/benchmarks.md; `-` = print only),
// --max-minutes N (hard bound on the whole run; default 45 full / 15 small), --no-large (skip
// the twice-as-large database), --no-crypto (skip bench/crypto.mjs), --no-profile (skip the extra
// coffer backup and restore under `node --cpu-prof`), --note TEXT / --note-file FILE (an analysis
// appended to the doc), --render FILE.json (re-render a previous run's figures, written beside the
// doc as <out>.json, e.g. with --note-file; measures nothing).
//
// Needs a build (`npx tsc -p tsconfig.json`): it runs dist/cli/main.js and uses
// dist/demo/throwaway-cluster.js for its own PostgreSQL, and scripts/rgw-up.sh / rgw-down.sh for its
// own Ceph RGW (S3). Needs pgbench, age, zstd, rclone (Debian's 1.60 has rcat) on PATH. Everything
// it starts or writes (RGW, PostgreSQL, temp files) is removed at the end, also on failure,
// timeout and SIGINT/SIGTERM. Not part of `npm test`.
//
// Every command runs once, in this order, on one machine, against the same RGW and database, warm
// cache (the database is dumped once before anything is timed). Wall time is measured around the
// whole command; MB/s is the database's on-disk size (pg_database_size) per second; peak RSS of
// coffer is the node process's VmHWM (/proc/<pid>/status, polled every 20 ms; children such as
// pg_dump, zstd and pg_restore are separate processes and not included).
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, DeleteObjectCommand, HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'dist/cli/main.js');
const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Options

function parseArgs(argv) {
  const o = { scale: 'full', out: join(ROOT, 'docs/benchmarks.md'), maxMinutes: undefined, large: true, crypto: true, profile: true, note: '' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) usage(`${a} needs a value`);
      return v;
    };
    if (a === '--scale') o.scale = val();
    else if (a === '--out') o.out = val();
    else if (a === '--max-minutes') o.maxMinutes = Number(val());
    else if (a === '--no-large') o.large = false;
    else if (a === '--no-crypto') o.crypto = false;
    else if (a === '--note') o.note = val();
    else if (a === '--note-file') o.note = readFileSync(val(), 'utf8').trim();
    else if (a === '--no-profile') o.profile = false;
    else if (a === '--render') o.render = val();
    else if (a === '-h' || a === '--help') usage();
    else usage(`unknown option ${a}`);
  }
  if (!['full', 'small'].includes(o.scale)) usage('--scale must be full or small');
  o.maxMinutes ??= o.scale === 'full' ? 45 : 15;
  if (!(o.maxMinutes > 0)) usage('--max-minutes must be a positive number');
  if (o.out !== '-') o.out = resolve(o.out);
  return o;
}

function usage(err) {
  const text = 'usage: node bench/run.mjs [--scale full|small] [--out FILE|-] [--max-minutes N] [--no-large] [--no-crypto] [--no-profile] [--note TEXT | --note-file FILE]';
  if (err) {
    console.error(`bench: ${err}\n${text}`);
    process.exit(2);
  }
  console.log(text);
  process.exit(0);
}

const opts = parseArgs(process.argv.slice(2));
const SCALES = {
  full: { pgbench: 100, blobMiB: 512 },
  small: { pgbench: 10, blobMiB: 50 },
};
const scale = SCALES[opts.scale];

// ---------------------------------------------------------------------------------------------
// Cleanup: everything we start registers an undo step; run once, on any exit path.

const cleanups = [];
let cleaning;
async function cleanup() {
  cleaning ??= (async () => {
    while (cleanups.length > 0) {
      const step = cleanups.pop();
      try {
        await step();
      } catch (e) {
        console.error(`bench: cleanup step failed: ${e.message}`);
      }
    }
  })();
  return cleaning;
}
const running = new Set();
function killRunning() {
  for (const c of running) {
    try {
      process.kill(-c.pid, 'SIGKILL'); // its own process group: the whole pipeline
    } catch {
      // already gone
    }
  }
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    console.error(`bench: ${sig}: cleaning up`);
    killRunning();
    cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  });
}
const deadline = setTimeout(
  () => {
    console.error(`bench: over --max-minutes ${opts.maxMinutes}: stopping, writing what was measured, cleaning up`);
    killRunning();
    flush()
      .catch(() => undefined)
      .then(cleanup)
      .finally(() => process.exit(124));
  },
  opts.maxMinutes * 60_000,
);
deadline.unref();

// ---------------------------------------------------------------------------------------------
// Running commands

/**
 * Runs `bash -o pipefail -c script` in its own process group; resolves with wall seconds and
 * stdout. With `rssOf`, the pid whose VmHWM to poll is found as the first process of the group
 * whose command line contains that string.
 */
function run(script, { env, timeoutMs = 30 * 60_000, capture = false, rssOf } = {}) {
  return new Promise((resolvePromise, reject) => {
    const t0 = process.hrtime.bigint();
    const cpuFile = join(tmpdir(), `coffer-bench-cpu-${process.pid}-${Math.random().toString(36).slice(2)}`);
    const server0 = serverCpuSeconds();
    const child = spawn(TIME, ['-q', '-f', '%U %S', '-o', cpuFile, 'bash', '-o', 'pipefail', '-c', script], {
      env,
      detached: true,
      stdio: ['ignore', capture ? 'pipe' : 'ignore', 'pipe'],
    });
    running.add(child);
    const out = [];
    const err = [];
    child.stdout?.on('data', (b) => out.push(b));
    child.stderr.on('data', (b) => {
      err.push(b);
      if (err.length > 200) err.shift();
    });
    let peakKiB = 0;
    let poll;
    if (rssOf) {
      // Find the coffer node process in the group once (cheap /proc reads), then poll its VmHWM.
      let pid;
      poll = setInterval(() => {
        pid ??= findInGroup(child.pid, (argv) => /(^|\/)node$/.test(argv[0]) && argv.includes(rssOf));
        if (pid !== undefined) peakKiB = Math.max(peakKiB, vmHwmKiB(pid));
      }, 20);
    }
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }, timeoutMs);
    child.on('close', async (code, signal) => {
      clearTimeout(timer);
      if (poll) clearInterval(poll);
      running.delete(child);
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      // A backend's CPU reaches the postmaster's cutime when it is reaped, which can be after the
      // client exited: wait for the run's backends to end, or the next run is charged for them.
      await backendsGone();
      const serverCpu = serverCpuSeconds() - server0;
      let cpu = NaN;
      try {
        const [u, sys] = readFileSync(cpuFile, 'utf8').trim().split(/\s+/).map(Number);
        cpu = u + sys;
      } catch {
        // no figure (killed)
      }
      rmSync(cpuFile, { force: true });
      if (code !== 0) {
        const tail = Buffer.concat(err).toString('utf8').trim().split('\n').slice(-8).join('\n');
        reject(new Error(`command failed (${signal ?? `exit ${code}`}) after ${seconds.toFixed(1)} s: ${script}\n${tail}`));
        return;
      }
      resolvePromise({ seconds, cpu, serverCpu, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), peakMiB: peakKiB / 1024 });
    });
  });
}

const TIME = '/usr/bin/time';
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
/** Pids of the server side (the postmaster, whose reaped backends count in its cutime/cstime, and the Ceph daemons). */
const serverPids = [];

/** CPU seconds used so far by the server side: PostgreSQL (with its ended backends) and RGW. */
function serverCpuSeconds() {
  let ticks = 0;
  for (const pid of serverPids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // fields 14..17 of stat(5): utime stime cutime cstime (f[0] is field 3)
      ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    } catch {
      // gone
    }
  }
  return ticks / CLK_TCK;
}

/** Waits (at most 5 s) until the postmaster has no client backend or parallel worker left. */
async function backendsGone() {
  const postmaster = serverPids[0];
  if (postmaster === undefined) return;
  for (let i = 0; i < 500; i++) {
    let busy = false;
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      try {
        const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
        if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) !== postmaster) continue;
        const title = readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0/g, ' ');
        if (!/^postgres: (checkpointer|background writer|walwriter|autovacuum launcher|logical replication launcher|archiver|stats collector|autovacuum worker)/.test(title)) busy = true;
      } catch {
        // gone
      }
      if (busy) break;
    }
    if (!busy) return;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The first process of process group `pgid` whose argv passes `test`. */
function findInGroup(pgid, test) {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const pgrp = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
      if (pgrp !== pgid) continue;
      if (test(readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0'))) return Number(name);
    } catch {
      // gone
    }
  }
  return undefined;
}

function vmHwmKiB(pid) {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

function q(s) {
  return `'${String(s).replace(/'/g, `'\\''`)}'`;
}

function version(cmd) {
  const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8' });
  return (r.stdout || r.stderr || '').split('\n')[0].trim() || 'unknown';
}

function log(msg) {
  console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}`);
}

// ---------------------------------------------------------------------------------------------
// Services

async function startRgw(dir) {
  await rm(dir, { recursive: true, force: true });
  const env = { ...process.env, RGW_OSD_SIZE_GB: opts.scale === 'full' ? '20' : '10' };
  cleanups.push(async () => {
    spawnSync('bash', [join(ROOT, 'scripts/rgw-down.sh'), dir], { stdio: 'ignore', timeout: 60_000 });
  });
  const r = spawnSync('bash', [join(ROOT, 'scripts/rgw-up.sh'), dir], { env, encoding: 'utf8', timeout: 180_000 });
  if (r.status !== 0) throw new Error(`rgw-up.sh failed:\n${(r.stderr ?? '').split('\n').slice(-10).join('\n')}`);
  const vars = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line);
    if (m) vars[m[1]] = m[2];
  }
  return vars;
}

async function startPg(base) {
  const { startThrowawayCluster } = await import('../dist/demo/throwaway-cluster.js');
  const pg = await startThrowawayCluster({
    baseDir: base,
    // The same server settings for every restore; large enough not to checkpoint constantly.
    settings: { shared_buffers: '256MB', max_wal_size: '4GB', maintenance_work_mem: '256MB', checkpoint_timeout: '30min' },
  });
  cleanups.push(() => pg.stop());
  return pg;
}

// ---------------------------------------------------------------------------------------------
// Main

const rows = []; // { group, name, command, seconds, cpu, serverCpu, mbps, bytes, rssMiB }
const notes = [];
/** Everything measured so far, for render(). */
let state = { rows, notes, profiles: [], large: null, crypto: null, complete: false };

async function main() {
  if (!existsSync(CLI)) throw new Error('dist/cli/main.js is missing: run `npx tsc -p tsconfig.json` first');
  for (const tool of ['pgbench', 'age', 'age-keygen', 'zstd', 'rclone', 'getconf']) {
    if (spawnSync('bash', ['-c', `command -v ${tool}`]).status !== 0 || !existsSync(TIME)) throw new Error(`${tool} is not on PATH (apt-get install postgresql-contrib age zstd rclone time)`);
  }
  state.load0 = loadavg();
  state.scale = opts.scale;
  const work = await mkdtemp(join(tmpdir(), 'coffer-bench-'));
  await import('node:fs/promises').then((f) => f.chmod(work, 0o755)); // the postgres OS user must traverse it
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  log(`scale ${opts.scale}: pgbench -s ${scale.pgbench} + ${scale.blobMiB} MiB bytea; work dir ${work}`);

  log('starting RGW and PostgreSQL');
  const [rgw, pg] = await Promise.all([startRgw(join(work, 'rgw')), startPg(join(work))]);
  serverPids.push(Number(readFileSync(join(pg.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]));
  for (const f of readdirSync(join(rgw.RGW_DIR, 'run')).filter((x) => x.endsWith('.pid'))) {
    serverPids.push(Number(readFileSync(join(rgw.RGW_DIR, 'run', f), 'utf8').trim()));
  }
  const bucket = 'bench';
  const s3 = new S3Client({
    endpoint: rgw.RGW_ENDPOINT,
    region: rgw.RGW_REGION,
    forcePathStyle: true,
    credentials: { accessKeyId: rgw.RGW_ADMIN_ACCESS_KEY, secretAccessKey: rgw.RGW_ADMIN_SECRET_KEY },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  cleanups.push(async () => s3.destroy());
  await s3.send(new CreateBucketCommand({ Bucket: bucket }));
  const objectSize = async (key) => (await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key }))).ContentLength;

  // Environment shared by every command: the cluster's libpq variables and its client binaries
  // first on PATH; rclone configured by environment for the same RGW (AWS_CA_BUNDLE unset).
  const env = { ...process.env, ...pg.env(), PATH: `${pg.binDir}:${process.env.PATH}` };
  delete env.AWS_CA_BUNDLE;
  delete env.PGDATABASE;
  Object.assign(env, {
    RCLONE_CONFIG_BENCH_TYPE: 's3',
    RCLONE_CONFIG_BENCH_PROVIDER: 'Ceph',
    RCLONE_CONFIG_BENCH_ENV_AUTH: 'false',
    RCLONE_CONFIG_BENCH_ACCESS_KEY_ID: rgw.RGW_ADMIN_ACCESS_KEY,
    RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY: rgw.RGW_ADMIN_SECRET_KEY,
    RCLONE_CONFIG_BENCH_ENDPOINT: rgw.RGW_ENDPOINT,
    RCLONE_CONFIG_BENCH_REGION: rgw.RGW_REGION,
    RCLONE_CONFIG_BENCH_NO_CHECK_BUCKET: 'true',
    AWS_ACCESS_KEY_ID: rgw.RGW_ADMIN_ACCESS_KEY,
    AWS_SECRET_ACCESS_KEY: rgw.RGW_ADMIN_SECRET_KEY,
    AWS_ENDPOINT_URL_S3: rgw.RGW_ENDPOINT,
    AWS_REGION: rgw.RGW_REGION,
    COFFER_PG_BIN: pg.binDir,
    COFFER_LOG_FORMAT: 'json',
  });
  const R = (remote) => `bench:${bucket}/${remote}`;

  // Keys.
  const keyFile = join(work, 'identity.txt');
  await run(`age-keygen -o ${q(keyFile)} 2>/dev/null`, { env });
  const recipient = (await run(`age-keygen -y ${q(keyFile)}`, { env, capture: true })).stdout.trim();

  // The reference database.
  const db = 'bench_ref';
  log(`building ${db}`);
  await pg.psql(`CREATE DATABASE ${db}`);
  const tBuild = await run(`pgbench -i -q -s ${scale.pgbench} ${db} >/dev/null 2>&1`, { env });
  await addBlobs(pg, db, 0, Math.round((scale.blobMiB * MiB) / (256 * 1024)));
  await pg.psql('VACUUM ANALYZE', db);
  const dbBytes = Number(await pg.psql(`SELECT pg_database_size('${db}')`));
  log(`${db}: ${(dbBytes / 1e9).toFixed(2)} GB (pgbench -i took ${tBuild.seconds.toFixed(0)} s)`);
  Object.assign(state, { dbBytes, pgVersion: version(`${q(join(pg.binDir, 'postgres'))} --version`) });
  const mbps = (s) => dbBytes / 1e6 / s;
  const add = (group, name, command, r, extra = {}) => {
    const row = { group, name, command, seconds: r.seconds, cpu: r.cpu, serverCpu: r.serverCpu, mbps: mbps(r.seconds), bytes: extra.bytes ?? null, rssMiB: extra.rssMiB ?? null };
    rows.push(row);
    log(`${name}: ${r.seconds.toFixed(2)} s${row.bytes ? `, ${(row.bytes / 1e6).toFixed(0)} MB` : ''}${row.rssMiB ? `, peak RSS ${row.rssMiB.toFixed(0)} MiB` : ''}`);
    return row;
  };

  // Warm the cache (not timed).
  await run(`pg_dump -Fc -Z0 ${db} > /dev/null`, { env });

  // --- backups ---------------------------------------------------------------------------------
  const L = add('backup', 'L', `pg_dump -Fc -Z0 > /dev/null`, await run(`pg_dump -Fc -Z0 ${db} > /dev/null`, { env }));

  const tmpDump = join(work, 'p1.dump');
  const p1Dump = await run(`pg_dump -Fc ${db} > ${q(tmpDump)}`, { env });
  const p1Rest = await run(`age -r ${recipient} -o ${q(tmpDump)}.age ${q(tmpDump)} && rclone copyto ${q(`${tmpDump}.age`)} ${R('p1.dump.age')} && rm -f ${q(tmpDump)} ${q(`${tmpDump}.age`)}`, { env });
  const P1 = add(
    'backup',
    'P1',
    'pg_dump -Fc > tmp; age -r … -o tmp.age tmp; rclone copyto tmp.age (docker-tool style)',
    { seconds: p1Dump.seconds + p1Rest.seconds, cpu: p1Dump.cpu + p1Rest.cpu, serverCpu: p1Dump.serverCpu + p1Rest.serverCpu },
    { bytes: await objectSize('p1.dump.age') },
  );
  notes.push(`P1 split: pg_dump -Fc to a temp file ${p1Dump.seconds.toFixed(1)} s, then encrypt + upload ${p1Rest.seconds.toFixed(1)} s.`);

  const P2 = add('backup', 'P2', 'pg_dump -Fc | age -r … | rclone rcat', await run(`pg_dump -Fc ${db} | age -r ${recipient} | rclone rcat ${R('p2.dump.age')}`, { env }), {
    bytes: await objectSize('p2.dump.age'),
  });
  const P3 = add(
    'backup',
    'P3',
    'pg_dump -Fc -Z0 | zstd -1 -T0 | age -r … | rclone rcat',
    await run(`pg_dump -Fc -Z0 ${db} | zstd -q -1 -T0 | age -r ${recipient} | rclone rcat ${R('p3.dump.zst.age')}`, { env }),
    { bytes: await objectSize('p3.dump.zst.age') },
  );
  const backupCmd = (database, prefix) => `node ${q(CLI)} backup --to s3://${bucket}/${prefix} --db ${database} --recipient ${recipient} --json`;
  const cb = await run(backupCmd(db, 'coffer'), { env, capture: true, rssOf: CLI });
  const m = JSON.parse(cb.stdout)[0];
  const C = add('backup', 'coffer', 'coffer backup (defaults: zstd:1 outside pg_dump, age, multipart)', cb, { bytes: m.dump.size, rssMiB: cb.peakMiB });
  Object.assign(state, { L, P1, P2, P3, C });
  await flush();

  // --- compression choice (issue item 2): the compressors alone, to a counting sink ------------
  const zOut = await run(`pg_dump -Fc -Z0 ${db} | zstd -q -1 -T0 | wc -c`, { env, capture: true });
  add('compress', 'zstd -1 -T0 outside', 'pg_dump -Fc -Z0 | zstd -1 -T0 | wc -c', zOut, { bytes: Number(zOut.stdout.trim()) });
  // The same through a node process that counts and forwards the bytes, as coffer did before
  // (to record pg_dump's output size in the manifest): the CPU cost of such a hop. coffer now
  // joins pg_dump -> dd -> zstd fd to fd (dd counts), so the dump never passes through node.
  const hopJs = `let n=0;const {Transform,pipeline}=require('node:stream');pipeline(process.stdin,new Transform({highWaterMark:1<<20,transform(c,e,cb){n+=c.length;cb(null,c)}}),process.stdout,(e)=>{if(e)throw e})`;
  const zHop = await run(`pg_dump -Fc -Z0 ${db} | node -e ${q(hopJs)} | zstd -q -1 -T0 | wc -c`, { env, capture: true });
  add('compress', 'zstd outside, via a node counting hop', 'pg_dump -Fc -Z0 | node (count, forward) | zstd -1 -T0 | wc -c', zHop, { bytes: Number(zHop.stdout.trim()) });
  const g1 = await run(`pg_dump -Fc -Z1 ${db} | wc -c`, { env, capture: true });
  add('compress', 'pg_dump gzip -Z1', 'pg_dump -Fc -Z1 | wc -c', g1, { bytes: Number(g1.stdout.trim()) });
  add('compress', 'pg_dump gzip -Z6 (default)', 'pg_dump -Fc > file (P1 first step)', p1Dump, { bytes: null });

  // --- restores ----------------------------------------------------------------------------------
  const drop = (name) => pg.psql(`DROP DATABASE IF EXISTS ${name}`);
  const manual = await run(`psql -X -q -c 'CREATE DATABASE r_manual' postgres && rclone cat ${R(`coffer/${m.dump.key}`)} | age -d -i ${q(keyFile)} | zstd -q -d | pg_restore --exit-on-error -d r_manual`, { env });
  const RM = add('restore', 'manual', 'rclone cat | age -d | zstd -d | pg_restore (same object)', manual);
  await drop('r_manual');
  const restoreCmd = (target, extra = '') => `node ${q(CLI)} restore --from s3://${bucket}/coffer --db ${db} --identity ${q(keyFile)} --target-db ${target} ${extra}`;
  const r1 = await run(restoreCmd('r_coffer'), { env, rssOf: CLI });
  const RC = add('restore', 'coffer restore', 'coffer restore (streamed, TOC check, rename)', r1, { rssMiB: r1.peakMiB });
  await drop('r_coffer');
  const r2 = await run(restoreCmd('r_coffer_j2', `--jobs 2 --spool-dir ${q(work)}`), { env, rssOf: CLI });
  const RJ = add('restore', 'coffer restore --jobs 2', 'coffer restore --jobs 2 (spool, pg_restore -j 2)', r2, { rssMiB: r2.peakMiB });
  await drop('r_coffer_j2');
  // Where the --jobs time goes: coffer logs its two phases (JSON log lines on stderr).
  const phase = (msg) => {
    for (const line of r2.stderr.split('\n')) {
      try {
        const o = JSON.parse(line);
        if (o.msg === msg) return o;
      } catch {
        // not a log line
      }
    }
    return undefined;
  };
  const spooled = phase('archive spooled');
  const pgrj = phase('pg_restore --jobs=2 finished');
  if (spooled && pgrj) {
    notes.push(
      `coffer restore --jobs 2 phases: download + decrypt + decompress + spool ${Number(spooled.seconds).toFixed(1)} s (${(spooled.bytes / 1e9).toFixed(2)} GB archive, ${spooled.dataOffsets} data offsets written into its TOC), then pg_restore -j 2 ${Number(pgrj.seconds).toFixed(1)} s.`,
    );
  }
  // The ceiling of a parallel restore on this machine, without coffer: pg_restore from a local,
  // seekable archive written by pg_dump -f (data offsets set), one job and two.
  const fileDump = join(work, 'ceiling.dump');
  await run(`pg_dump -Fc -Z0 -f ${q(fileDump)} ${db}`, { env });
  const pf1 = await run(`psql -X -q -c 'CREATE DATABASE r_file1' postgres && pg_restore --exit-on-error -d r_file1 ${q(fileDump)}`, { env });
  const RF1 = add('restore', 'pg_restore, local file', 'pg_restore -d (archive from pg_dump -Fc -Z0 -f, on local disk)', pf1);
  await drop('r_file1');
  const pf2 = await run(`psql -X -q -c 'CREATE DATABASE r_file2' postgres && pg_restore --exit-on-error -j 2 -d r_file2 ${q(fileDump)}`, { env });
  const RF2 = add('restore', 'pg_restore -j 2, local file', 'pg_restore -j 2 -d (the same local archive)', pf2);
  await drop('r_file2');
  rmSync(fileDump, { force: true });
  Object.assign(state, { RM, RC, RJ, RF1, RF2 });
  await flush();

  // --- memory: a database twice as large ------------------------------------------------------
  let large = null;
  if (opts.large) {
    const ldb = 'bench_large';
    log(`building ${ldb} (twice as large)`);
    await pg.psql(`CREATE DATABASE ${ldb} TEMPLATE ${db} STRATEGY FILE_COPY`);
    const extraBlobs = Math.round(dbBytes / (256 * 1024));
    await addBlobs(pg, ldb, 1_000_000, extraBlobs);
    const lBytes = Number(await pg.psql(`SELECT pg_database_size('${ldb}')`));
    const lb = await run(backupCmd(ldb, 'coffer-large'), { env, capture: true, rssOf: CLI });
    large = { bytes: lBytes, seconds: lb.seconds, rssMiB: lb.peakMiB };
    log(`${ldb}: ${(lBytes / 1e9).toFixed(2)} GB, backup ${lb.seconds.toFixed(1)} s, peak RSS ${lb.peakMiB.toFixed(0)} MiB`);
    await drop(ldb);
    state.large = large;
    await flush();
  }

  // --- crypto micro-benchmark --------------------------------------------------------------------
  let crypto = null;
  if (opts.crypto) {
    log('bench/crypto.mjs');
    const cr = await run(`node ${q(join(ROOT, 'bench/crypto.mjs'))}`, {
      env: { ...env, BENCH_MIB: opts.scale === 'full' ? '512' : '256', BENCH_LIB_MIB: opts.scale === 'full' ? '64' : '32' },
      capture: true,
    });
    const t = /encrypt >= 400 MB\/s (met|missed) \((\d+)\), decrypt >= 500 MB\/s (met|missed) \((\d+)\)/.exec(cr.stdout);
    crypto = { text: cr.stdout.trim(), enc: t ? Number(t[2]) : NaN, dec: t ? Number(t[4]) : NaN };
  }

  state.crypto = crypto;
  await flush();

  // --- profiles: one more coffer backup and restore under --cpu-prof (not timed above) ------------
  if (opts.profile) {
    for (const [what, cmd, after] of [
      ['backup', backupCmd(db, 'coffer-prof'), null],
      ['restore', restoreCmd('r_prof'), () => drop('r_prof')],
    ]) {
      const dir = join(work, `prof-${what}`);
      const r = await run(cmd.replace(`node ${q(CLI)}`, `node --cpu-prof --cpu-prof-dir=${q(dir)} ${q(CLI)}`), { env, capture: true });
      if (after) await after();
      state.profiles.push({ what, seconds: r.seconds, cpu: r.cpu, ...summarizeProfile(dir) });
      log(`profiled coffer ${what}: ${r.seconds.toFixed(1)} s`);
      await flush();
    }
  }

  state.complete = true;
  console.log(await flush());
}

/** Writes the doc with what has been measured so far (also after a timeout or failure). */
async function flush() {
  if (!state.dbBytes) return '';
  state.finishedAt ??= new Date().toISOString();
  if (!state.complete) state.finishedAt = new Date().toISOString();
  state.load1 ??= loadavg();
  if (!state.complete) state.load1 = loadavg();
  const doc = render(state);
  if (opts.out !== '-') {
    await mkdir(join(opts.out, '..'), { recursive: true });
    await writeFile(opts.out, doc);
    // The raw figures beside it, so that the doc can be re-rendered (--render) with an analysis.
    await writeFile(opts.out.replace(/\.md$/, '') + '.json', `${JSON.stringify({ ...state, machine: machineLines(), scale: opts.scale }, null, 2)}\n`);
    log(`${state.complete ? 'written' : 'partial results written'} to ${opts.out}`);
  }
  return doc;
}

/** Adds `count` rows of 256 KiB of random bytes to `blobs` (created if missing), through COPY. */
async function addBlobs(pg, db, firstId, count) {
  await pg.psql('CREATE TABLE IF NOT EXISTS blobs (id int PRIMARY KEY, data bytea NOT NULL); ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;', db);
  const env = { ...process.env, ...pg.env() };
  await new Promise((resolvePromise, reject) => {
    const child = spawn(join(pg.binDir, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', db, '-c', 'COPY blobs (id, data) FROM STDIN (FORMAT binary)'], { env, stdio: ['pipe', 'ignore', 'pipe'] });
    running.add(child);
    let err = '';
    child.stderr.on('data', (b) => (err += b));
    child.on('close', (code) => {
      running.delete(child);
      if (code === 0) resolvePromise();
      else reject(new Error(`loading blobs failed: ${err.trim()}`));
    });
    (async () => {
      // COPY binary: signature, flags, header extension length; per row: 2 fields (int4, bytea).
      child.stdin.write(Buffer.concat([Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1'), Buffer.alloc(8)]));
      for (let i = 0; i < count; i++) {
        const head = Buffer.alloc(14);
        head.writeInt16BE(2, 0);
        head.writeInt32BE(4, 2);
        head.writeInt32BE(firstId + i, 6);
        head.writeInt32BE(256 * 1024, 10);
        child.stdin.write(head);
        if (!child.stdin.write(randomBytes(256 * 1024))) await new Promise((r) => child.stdin.once('drain', r));
      }
      child.stdin.write(Buffer.from([0xff, 0xff]));
      child.stdin.end();
    })().catch(reject);
  });
}

/** Self time of a V8 CPU profile (the main thread) by function, plus idle and GC. */
function summarizeProfile(dir) {
  const file = readdirSync(dir).find((x) => x.endsWith('.cpuprofile'));
  const p = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i]);
    const url = n.callFrame.url.replace(/^.*node_modules\//, '').replace(/^.*\/dist\//, 'dist/').replace(/^file:\/\//, '');
    const key = `${n.callFrame.functionName || '(anonymous)'}${url ? ` ${url}:${n.callFrame.lineNumber + 1}` : ''}`;
    self.set(key, (self.get(key) ?? 0) + p.timeDeltas[i]);
    total += p.timeDeltas[i];
  }
  const ms = (k) => (self.get(k) ?? 0) / 1000;
  const top = [...self]
    .filter(([k]) => k !== '(idle)')
    .sort((a, b) => b[1] - a[1])
    .slice(0, 10)
    .map(([k, v]) => ({ frame: k, ms: v / 1000 }));
  return { totalMs: total / 1000, idleMs: ms('(idle)'), gcMs: ms('(garbage collector)'), top };
}

// ---------------------------------------------------------------------------------------------
// Report

/** The machine and tool versions, as lines of the doc. */
function machineLines() {
  const cpu = cpus();
  return [
    `${cpu.length} CPUs (nproc ${version('nproc')}), ${cpu[0]?.model ?? 'unknown CPU'}; ${(totalmem() / 2 ** 30).toFixed(0)} GiB memory; Linux ${release()}`,
    `node ${process.version}; ${state.pgVersion}: client tools and a throwaway server of the same version (fsync off, shared_buffers 256MB, max_wal_size 4GB)`,
    `${version('zstd --version').replace(/^\*+ | \*+$/g, '')}; age ${version('age --version')}; ${version('rclone version')}; ${version('radosgw --version')} (single-node throwaway Ceph RGW on 127.0.0.1, BlueStore in a sparse file on the same disk)`,
  ];
}

function render(r) {
  const scale = SCALES[r.scale];
  const f = (n, d = 1) => (n === null || n === undefined || Number.isNaN(n) ? '–' : n.toFixed(d));
  const mb = (b) => (b ? f(b / 1e6, 0) : '–');
  const cell = (t) => t.replace(/\|/g, '\\|'); // a pipe inside a table cell
  const ratio = (a, b) => a.seconds / b.seconds;
  const verdict = (x, limit) => `${f(x, 2)}× (target ≤ ${limit}×: ${x <= limit ? 'met' : `missed by ${f((x / limit - 1) * 100, 0)} %`})`;

  const lines = [];
  lines.push('# Benchmarks');
  lines.push('');
  if (!r.complete) {
    lines.push('**Incomplete run**: the benchmark stopped early (failure or --max-minutes); only what was measured is shown.');
    lines.push('');
  }
  lines.push(`Written by \`npm run bench${r.scale === 'small' ? ' -- --scale small' : ''}\` (bench/run.mjs) on ${r.finishedAt}. Do not edit by hand: re-run it.`);
  lines.push('');
  lines.push('## Machine');
  lines.push('');
  for (const l of r.machine ?? machineLines()) lines.push(`- ${l}`);
  lines.push(
    `- load average ${r.load0.map((x) => x.toFixed(2)).join(' ')} at the start, ${r.load1.map((x) => x.toFixed(2)).join(' ')} at the end. ${
      r.load0[0] > 0.5 ? '**The machine was shared with other work during the run** (the load average was already above 0.5 before the benchmark started anything), so absolute times are noisy; compare ratios and CPU seconds from one run.' : ''
    }`,
  );
  lines.push('');
  lines.push('## Data');
  lines.push('');
  lines.push(
    `\`pgbench -i -s ${scale.pgbench}\` plus ${scale.blobMiB} MiB of random bytea (256 KiB values, storage EXTERNAL): **${f(r.dbBytes / 1e9, 2)} GB** (pg_database_size). MB/s below = that size (10^6 bytes) per second of wall time. Warm cache. Each command ran once.`,
  );
  lines.push('');
  lines.push(
    '"client CPU" = user + system seconds of the command and every process it started (GNU time): pg_dump, zstd, age, rclone, coffer (node) and its children. "server CPU" = what PostgreSQL (postmaster and the backends that ended) and the Ceph daemons (mon, OSD, radosgw) used meanwhile. On 2 cores, client + server CPU close to 2 × wall means the run was CPU-bound; CPU seconds are steadier than wall time on a shared machine.',
  );
  lines.push('');
  lines.push('## Backup');
  lines.push('');
  lines.push('| run | command | wall s | MB/s | stored MB | client CPU s | server CPU s | coffer peak RSS MiB |');
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|');
  for (const row of r.rows.filter((x) => x.group === 'backup')) {
    lines.push(`| ${row.name} | \`${cell(row.command)}\` | ${f(row.seconds)} | ${f(row.mbps, 0)} | ${mb(row.bytes)} | ${f(row.cpu)} | ${f(row.serverCpu)} | ${row.rssMiB ? f(row.rssMiB, 0) : ''} |`);
  }
  lines.push('');
  if (r.C) {
    lines.push(`- coffer / P3: ${verdict(ratio(r.C, r.P3), 1.0)}`);
    lines.push(`- coffer / P2: ${verdict(ratio(r.C, r.P2), 0.35)}`);
    lines.push(`- coffer / P1: ${verdict(ratio(r.C, r.P1), 0.3)}`);
    lines.push(`- coffer / L: ${f(ratio(r.C, r.L), 2)}× (the floor: pg_dump alone, no compression, no upload)`);
  }
  for (const n of r.notes.filter((x) => !x.startsWith('coffer restore --jobs'))) lines.push(`- ${n}`);
  lines.push('');
  lines.push('## Compression (issue 6 item 2)');
  lines.push('');
  lines.push('| compressor | command | wall s | MB/s | output MB | client CPU s |');
  lines.push('|---|---|---:|---:|---:|---:|');
  for (const row of r.rows.filter((x) => x.group === 'compress')) {
    lines.push(`| ${row.name} | \`${cell(row.command)}\` | ${f(row.seconds)} | ${f(row.mbps, 0)} | ${mb(row.bytes)} | ${f(row.cpu)} |`);
  }
  lines.push('');
  lines.push(
    '- coffer joins `pg_dump -Z0 | dd | zstd -1 -T0` fd to fd (dd counts the dump for the manifest); the uncompressed dump never passes through node. The "node counting hop" row is what such a hop costs (coffer had one until this run).',
  );
  lines.push('');
  lines.push('## Restore');
  lines.push('');
  lines.push('| run | command | wall s | MB/s | client CPU s | server CPU s | coffer peak RSS MiB |');
  lines.push('|---|---|---:|---:|---:|---:|---:|');
  for (const row of r.rows.filter((x) => x.group === 'restore')) {
    lines.push(`| ${row.name} | \`${cell(row.command)}\` | ${f(row.seconds)} | ${f(row.mbps, 0)} | ${f(row.cpu)} | ${f(row.serverCpu)} | ${row.rssMiB ? f(row.rssMiB, 0) : ''} |`);
  }
  lines.push('');
  if (r.RJ) {
    lines.push(`- coffer restore / manual pipeline: ${verdict(ratio(r.RC, r.RM), 1.0)}`);
    lines.push(`- coffer restore --jobs 2 / coffer restore: ${verdict(ratio(r.RJ, r.RC), 0.8)}`);
  }
  if (r.RF1 && r.RF2) {
    lines.push(
      `- Without coffer, from a local seekable file: pg_restore -j 2 / pg_restore = ${f(ratio(r.RF2, r.RF1), 2)}×; pg_restore -j 2 (file) / coffer restore (streamed) = ${f(ratio(r.RF2, r.RC), 2)}× — what two jobs can gain on this machine at best.`,
    );
  }
  for (const n of r.notes.filter((x) => x.startsWith('coffer restore --jobs'))) lines.push(`- ${n}`);
  lines.push('');
  lines.push('## Memory');
  lines.push('');
  const rssTarget = (x) => `${f(x, 0)} MiB (target ≤ 200 MiB: ${x <= 200 ? 'met' : 'missed'})`;
  if (r.C) lines.push(`- coffer backup of the ${f(r.dbBytes / 1e9, 2)} GB database: peak RSS ${rssTarget(r.C.rssMiB)}.`);
  if (r.large && r.C) {
    const growth = (r.large.rssMiB / r.C.rssMiB - 1) * 100;
    lines.push(
      `- coffer backup of a database twice as large (${f(r.large.bytes / 1e9, 2)} GB, the same plus more random bytea): peak RSS ${rssTarget(r.large.rssMiB)}, ${growth >= 0 ? '+' : ''}${f(growth, 0)} % against the smaller one (target within 10 %: ${Math.abs(growth) <= 10 ? 'met' : 'missed'}); wall ${f(r.large.seconds)} s.`,
    );
  }
  if (r.RJ) lines.push(`- coffer restore: peak RSS ${rssTarget(r.RC.rssMiB)}; with --jobs 2: ${rssTarget(r.RJ.rssMiB)}.`);
  lines.push(
    `- Issue 2's "a 1 GB database keeps peak RSS under 200 MiB": covered by the backup figures above, which are for ${r.scale === 'full' ? 'databases of 2 GB and more' : 'this (small-scale) database'}; the buffers coffer holds are bounded by the upload's part buffers (at most 5 of ≥ 8 MiB, allocated once and reused: one filling, up to 4 in flight) and 1 MiB stream buffers, whatever the database size (the twice-as-large run shows how the measured peak moved; \`node bench/memory.mjs\` measures 1–8 GiB streams).`,
  );
  lines.push('- Peak RSS is the coffer node process only (VmHWM); pg_dump, zstd, pg_restore and age are separate processes.');
  if (r.profiles.length > 0) {
    lines.push('');
    lines.push('## Where coffer\'s time goes (V8 CPU profiles of the coffer process, same run)');
    lines.push('');
    lines.push(
      'One extra coffer backup and one extra restore of the same database under `node --cpu-prof` (not the timed runs above). "idle" is the main thread waiting: for its children (pg_dump, zstd, pg_restore), the server, or the network. V8 samples on wall-clock ticks, so on a loaded machine "busy" also counts time the thread was runnable but not scheduled; client CPU (coffer and all its children, from the kernel) is the exact figure.',
    );
    for (const pr of r.profiles) {
      lines.push('');
      lines.push(
        `**${pr.what}**: wall ${f(pr.seconds)} s, client CPU ${f(pr.cpu)} s; coffer main thread busy ${f((pr.totalMs - pr.idleMs) / 1000)} s of ${f(pr.totalMs / 1000)} s profiled (idle ${f((pr.idleMs / pr.totalMs) * 100, 0)} %, GC ${f(pr.gcMs / 1000, 2)} s). Top self time:`,
      );
      lines.push('');
      lines.push('| self ms | function |');
      lines.push('|---:|---|');
      for (const t of pr.top) lines.push(`| ${f(t.ms, 0)} | \`${t.frame}\` |`);
    }
  }
  if (r.crypto) {
    lines.push('');
    lines.push('## Encryption alone (bench/crypto.mjs, same run)');
    lines.push('');
    lines.push(`Targets: encrypt ≥ 400 MB/s: ${r.crypto.enc >= 400 ? 'met' : 'missed'} (${f(r.crypto.enc, 0)}); decrypt ≥ 500 MB/s: ${r.crypto.dec >= 500 ? 'met' : 'missed'} (${f(r.crypto.dec, 0)}).`);
    lines.push('');
    lines.push('```');
    lines.push(r.crypto.text);
    lines.push('```');
  }
  if (opts.note) {
    lines.push('');
    lines.push('## Analysis');
    lines.push('');
    lines.push('_Written for this run after reading its figures, and added with `--render FILE.json --note-file NOTE`._');
    lines.push('');
    lines.push(opts.note);
  }
  lines.push('');
  return lines.join('\n');
}

try {
  if (opts.render) {
    // Re-render a previous run's figures (e.g. with --note-file), measuring nothing.
    state = JSON.parse(readFileSync(opts.render, 'utf8'));
    if (opts.out === '-') console.log(render(state));
    else await writeFile(opts.out, render(state));
  } else await main();
  clearTimeout(deadline);
} catch (err) {
  console.error(`bench: ${err.message}`);
  process.exitCode = 1;
  await flush().catch(() => undefined);
} finally {
  killRunning();
  await cleanup();
}
