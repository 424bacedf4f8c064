#!/usr/bin/env node
// Does `coffer wal-push` as archive_command keep up with a write-heavy load (issue 14, item 3)?
//
//   node bench/wal-archive.mjs                 pgbench -i -s 50; cp, coffer → file, coffer → S3 (RGW)
//   node bench/wal-archive.mjs --scale 10 --modes cp,file,file-async,s3-async
//
// For each archive_command, in the same run, one after the other: a fresh throwaway PostgreSQL 15
// cluster (archive_mode=on, wal_level=replica) runs `pgbench -i -s N`; every 250 ms the script
// reads pg_stat_archiver and counts pg_wal/archive_status/*.ready (the segments PostgreSQL has
// finished and the archiver has not yet stored: the backlog). After pgbench exits it waits for the
// backlog to drain. Reported per mode: segments archived, pgbench's wall time, the time until the
// last segment was archived, segments per second over that time, the peak backlog, and ratios
// against the `cp %p DIR/%f` baseline measured in the same run.
//
// Options: --scale N (default 50), --modes cp,file,s3,file-async,s3-async,file-async-fast,s3-async-fast,file-async-front,s3-async-front (default cp,file,s3), --out FILE (append the
// Markdown table; default: print only), --max-drain-s N (give up waiting for the backlog, default 600).
// Needs a build (`npx tsc -p tsconfig.json`): dist/cli/main.js and dist/demo/throwaway-cluster.js;
// pgbench (PostgreSQL 15), zstd, and for s3 the Ceph binaries of scripts/rgw-up.sh. Everything it
// starts or writes is removed at the end, also on failure.
import { spawn, spawnSync } from 'node:child_process';
import { chownSync, mkdtempSync, readdirSync, rmSync, appendFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'dist/cli/main.js');
const FRONT = join(ROOT, 'bin/coffer-wal-push-async');
const { startThrowawayCluster } = await import(join(ROOT, 'dist/demo/throwaway-cluster.js'));
const { generateIdentity } = await import(join(ROOT, 'dist/crypto/age.js'));

const opts = { scale: 50, modes: ['cp', 'file', 's3'], out: undefined, maxDrainS: 600 };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  const v = () => process.argv[++i];
  if (a === '--scale') opts.scale = Number(v());
  else if (a === '--modes') opts.modes = v().split(',');
  else if (a === '--out') opts.out = v();
  else if (a === '--max-drain-s') opts.maxDrainS = Number(v());
  else {
    console.error(`unknown option ${a}`);
    process.exit(2);
  }
}

const work = mkdtempSync(join(tmpdir(), 'coffer-walbench-'));
const isRoot = process.getuid?.() === 0;
const pgUser = isRoot ? { uid: Number(spawnSync('id', ['-u', 'postgres']).stdout), gid: Number(spawnSync('id', ['-g', 'postgres']).stdout) } : undefined;
const own = (p) => pgUser && chownSync(p, pgUser.uid, pgUser.gid);
own(work);
const cleanups = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function rgwUp() {
  const dir = join(work, 'rgw');
  const r = spawnSync('bash', [join(ROOT, 'scripts/rgw-up.sh'), dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) throw new Error('rgw-up.sh failed');
  cleanups.push(() => spawnSync('bash', [join(ROOT, 'scripts/rgw-down.sh'), dir], { stdio: 'ignore' }));
  const v = Object.fromEntries(r.stdout.trim().split('\n').map((l) => l.split(/=(.*)/s).slice(0, 2)));
  const s3 = new S3Client({ region: v.RGW_REGION, endpoint: v.RGW_ENDPOINT, forcePathStyle: true, credentials: { accessKeyId: v.RGW_ADMIN_ACCESS_KEY, secretAccessKey: v.RGW_ADMIN_SECRET_KEY } });
  await s3.send(new CreateBucketCommand({ Bucket: 'walbench' }));
  s3.destroy();
  return `AWS_ACCESS_KEY_ID=${v.RGW_ADMIN_ACCESS_KEY} AWS_SECRET_ACCESS_KEY=${v.RGW_ADMIN_SECRET_KEY} AWS_ENDPOINT_URL_S3=${v.RGW_ENDPOINT} AWS_REGION=${v.RGW_REGION}`;
}

const fastPath = (dir) => `test -f ${dir}/spool/%f.ok && rm ${dir}/spool/%f.ok ||`;

async function runMode(mode, recipient, s3vars) {
  const dir = join(work, mode);
  mkdtempSync(dir);
  spawnSync('mkdir', ['-p', dir]);
  own(dir);
  const coffer = `COFFER_LOG_FORMAT=json ${process.execPath} ${CLI} wal-push --cluster bench --recipient ${recipient}`;
  const command = {
    cp: `cp %p ${dir}/%f`,
    file: `${coffer} --to ${dir}/repo %p`,
    s3: `${s3vars} ${coffer} --to s3://walbench/${mode} %p`,
    'file-async': `${coffer} --async --spool-dir ${dir}/spool --to ${dir}/repo %p`,
    's3-async': `${s3vars} ${coffer} --async --spool-dir ${dir}/spool --to s3://walbench/${mode} %p`,
    // The README's recommended form: when the worker got there first, no node process starts at all.
    'file-async-fast': `${fastPath(dir)} ${coffer} --async --spool-dir ${dir}/spool --to ${dir}/repo %p`,
    's3-async-fast': `${fastPath(dir)} ${s3vars} ${coffer} --async --spool-dir ${dir}/spool --to s3://walbench/${mode} %p`,
    // bin/coffer-wal-push-async: the shell waits for the worker's answer; node only when it cannot.
    'file-async-front': `COFFER_NODE=${process.execPath} ${FRONT} ${dir}/spool %p --cluster bench --recipient ${recipient} --to ${dir}/repo`,
    's3-async-front': `${s3vars} COFFER_NODE=${process.execPath} ${FRONT} ${dir}/spool %p --cluster bench --recipient ${recipient} --to s3://walbench/${mode}`,
  }[mode];
  const pg = await startThrowawayCluster({ baseDir: work, settings: { wal_level: 'replica', archive_mode: 'on', archive_command: command, max_wal_size: '1GB' } });
  try {
    const status = join(pg.dataDir, 'pg_wal', 'archive_status');
    const ready = () => readdirSync(status).filter((n) => n.endsWith('.ready')).length;
    const archived = async () => Number((await pg.psql('SELECT archived_count FROM pg_stat_archiver')).trim());
    const failed = async () => Number((await pg.psql('SELECT failed_count FROM pg_stat_archiver')).trim());
    const base = await archived();
    const t0 = Date.now();
    let peak = 0;
    let done = false;
    const bench = spawn('/usr/lib/postgresql/15/bin/pgbench', ['-i', '-q', '-s', String(opts.scale), 'postgres'], { env: { ...process.env, ...pg.env() }, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    bench.stderr.on('data', (b) => (err += b));
    const exit = new Promise((r) => bench.on('close', (c) => ((done = true), r(c))));
    while (!done) {
      peak = Math.max(peak, ready());
      await sleep(250);
    }
    if ((await exit) !== 0) throw new Error(`pgbench failed: ${err.slice(-500)}`);
    const pgbenchS = (Date.now() - t0) / 1000;
    const backlogAtEnd = ready();
    // Everything written so far must be archived: switch the current segment out, then wait.
    await pg.psql('SELECT pg_switch_wal()');
    while (ready() > 0) {
      peak = Math.max(peak, ready());
      if (Date.now() - t0 > opts.maxDrainS * 1000) throw new Error(`${mode}: backlog of ${ready()} segments not drained after ${opts.maxDrainS} s`);
      await sleep(250);
    }
    const drainedS = (Date.now() - t0) / 1000;
    const n = (await archived()) - base;
    return { mode, segments: n, pgbenchS, drainedS, segPerS: n / drainedS, peakBacklog: peak, backlogAtEnd, failed: await failed() };
  } finally {
    await pg.stop();
  }
}

const results = [];
try {
  const id = await generateIdentity();
  const s3vars = opts.modes.some((m) => m.startsWith('s3')) ? await rgwUp() : '';
  for (const m of opts.modes) {
    const r = await runMode(m, id.recipient, s3vars);
    results.push(r);
    console.error(JSON.stringify(r));
  }
} finally {
  for (const c of cleanups.reverse()) c();
  rmSync(work, { recursive: true, force: true });
}

const cp = results.find((r) => r.mode === 'cp');
const label = {
  cp: '`cp %p DIR/%f` (baseline)',
  file: '`coffer wal-push` → file repository',
  s3: '`coffer wal-push` → S3 (Ceph RGW)',
  'file-async': '`coffer wal-push --async` → file repository',
  's3-async': '`coffer wal-push --async` → S3 (Ceph RGW)',
  'file-async-fast': '`test -f SPOOL/%f.ok && rm SPOOL/%f.ok \\|\\| coffer wal-push --async` → file repository',
  's3-async-fast': '`test -f SPOOL/%f.ok && rm SPOOL/%f.ok \\|\\| coffer wal-push --async` → S3 (Ceph RGW)',
  'file-async-front': '`coffer-wal-push-async SPOOL %p …` (shell front end) → file repository',
  's3-async-front': '`coffer-wal-push-async SPOOL %p …` (shell front end) → S3 (Ceph RGW)',
};
const lines = [
  `pgbench -i -s ${opts.scale}, ${new Date().toISOString()}, ${cpus().length} cores, load average at the end ${loadavg()[0].toFixed(1)}`,
  '',
  '| archive_command | segments | pgbench -i (s) | last segment archived after (s) | segments/s | × cp | peak `.ready` backlog | backlog when pgbench ended | failed |',
  '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ...results.map((r) => `| ${label[r.mode]} | ${r.segments} | ${r.pgbenchS.toFixed(1)} | ${r.drainedS.toFixed(1)} | ${r.segPerS.toFixed(2)} | ${cp ? (r.segPerS / cp.segPerS).toFixed(2) : '–'} | ${r.peakBacklog} | ${r.backlogAtEnd} | ${r.failed} |`),
  '',
];
console.log(lines.join('\n'));
if (opts.out) appendFileSync(opts.out, `${lines.join('\n')}\n`);
