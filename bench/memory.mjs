#!/usr/bin/env node
// Memory of `coffer backup` against the size of the stream (issue 6: peak RSS must not grow with
// the database size).
//
//   node bench/memory.mjs                          1, 2, 4, 8 GiB streams, to a local directory and to S3 (RGW)
//   node bench/memory.mjs --sizes 1,4 --target fs  quicker
//
// The database side is synthetic: coffer runs a stand-in for pg_dump (--pg-dump-command, a small
// bash script written to the work dir) that ignores its arguments and writes N bytes of
// incompressible data (AES-CTR keystream from openssl), so the node side of the pipeline (the
// counting hop, zstd's pipes, age encryption, sha256, multipart upload or file write) sees an
// N-byte dump without an N-byte database. A throwaway PostgreSQL (tiny, empty database) still
// answers coffer's probe and advisory lock; a throwaway Ceph RGW is the S3 target.
//
// Each run's figures come from inside the coffer node process (a sampler preloaded with
// NODE_OPTIONS=--import, not part of coffer): peak RSS (getrusage maxRSS = VmHWM), the peaks of
// process.memoryUsage() (heapTotal, external, arrayBuffers) and of RssAnon, and the process's
// own CPU seconds (user + system; children such as zstd are separate processes). Printed as a
// table on stdout; --json prints the raw figures.
//
// Options: --sizes 1,2,4,8 (GiB), --target fs|s3|both, --dist DIR (a build of coffer, default
// ./dist; e.g. another outDir to compare before/after), --repeat N, --compress zstd:1|none,
// --part-size SIZE, --samples FILE (every sample of every run, JSON lines), --json,
// --node-flags '…' (extra node/V8 flags for the coffer process, through NODE_OPTIONS).
// Needs a build (`npx tsc -p tsconfig.json`), openssl, zstd, and for s3 the Ceph binaries that
// scripts/rgw-up.sh uses. Everything it starts or writes is removed at the end.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync, appendFileSync, chmodSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { DeleteObjectCommand, CreateBucketCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const GiB = 1024 ** 3;

function usage(msg) {
  if (msg) console.error(`memory.mjs: ${msg}`);
  console.error('usage: node bench/memory.mjs [--sizes 1,2,4,8] [--target fs|s3|both] [--dist DIR] [--repeat N] [--compress zstd:1|none] [--part-size SIZE] [--samples FILE] [--node-flags FLAGS] [--json]');
  process.exit(msg ? 2 : 0);
}

const opts = { sizes: [1, 2, 4, 8], target: 'both', dist: join(ROOT, 'dist'), repeat: 1, compress: 'zstd:1', partSize: undefined, samples: undefined, json: false };
{
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => argv[++i] ?? usage(`${a} needs a value`);
    if (a === '--sizes') opts.sizes = val().split(',').map(Number);
    else if (a === '--target') opts.target = val();
    else if (a === '--dist') opts.dist = resolve(val());
    else if (a === '--repeat') opts.repeat = Number(val());
    else if (a === '--compress') opts.compress = val();
    else if (a === '--part-size') opts.partSize = val();
    else if (a === '--samples') opts.samples = resolve(val());
    else if (a === '--json') opts.json = true;
    else if (a === '--node-flags') opts.nodeFlags = val();
    else if (a === '-h' || a === '--help') usage();
    else usage(`unknown option ${a}`);
  }
  if (!['fs', 's3', 'both'].includes(opts.target)) usage('--target is fs, s3 or both');
  if (opts.sizes.some((s) => !(s > 0))) usage('--sizes: positive numbers of GiB');
}
const CLI = join(opts.dist, 'cli/main.js');
if (!existsSync(CLI)) usage(`${CLI} is missing: build first (npx tsc -p tsconfig.json)`);

const log = (m) => console.error(`[memory ${new Date().toISOString().slice(11, 19)}] ${m}`);
const cleanups = [];
async function cleanup() {
  while (cleanups.length) {
    try {
      await cleanups.pop()();
    } catch (e) {
      log(`cleanup: ${e.message}`);
    }
  }
}
for (const s of ['SIGINT', 'SIGTERM']) {
  process.on(s, () => {
    cleanup().finally(() => process.exit(130));
  });
}

const SAMPLER = `
import { appendFileSync, readFileSync } from 'node:fs';
const file = process.env.COFFER_MEM_LOG;
if (file) {
  const t0 = Date.now();
  const M = 1 << 20;
  const sample = () => {
    const m = process.memoryUsage();
    const s = readFileSync('/proc/self/status', 'utf8');
    const kb = (k) => Number(new RegExp(k + ':\\\\s+(\\\\d+)').exec(s)?.[1] ?? 0) / 1024;
    appendFileSync(file, JSON.stringify({ t: Date.now() - t0, rss: m.rss / M, heapTotal: m.heapTotal / M, heapUsed: m.heapUsed / M, external: m.external / M, arrayBuffers: m.arrayBuffers / M, anon: kb('RssAnon'), hwm: kb('VmHWM') }) + '\\n');
  };
  setInterval(sample, 50).unref();
  process.on('exit', () => {
    sample();
    const c = process.cpuUsage();
    appendFileSync(file, JSON.stringify({ end: true, user: c.user / 1e6, system: c.system / 1e6, maxRSS: process.resourceUsage().maxRSS / 1024 }) + '\\n');
  });
}
`;

// Stand-in for pg_dump: `--version` as pg_dump 15 would answer, otherwise COFFER_FAKE_BYTES of
// AES-CTR keystream (incompressible, fast, not from /dev/urandom's slower path).
const FAKE_DUMP = `#!/bin/bash
for a in "$@"; do
  if [[ "$a" == --version ]]; then echo 'pg_dump (PostgreSQL) 15.99'; exit 0; fi
done
openssl enc -aes-128-ctr -nosalt -pass pass:coffer-memory-bench -pbkdf2 -in /dev/zero 2>/dev/null | head -c "$COFFER_FAKE_BYTES"
`;

function runBackup(env, args) {
  return new Promise((resolvePromise, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(process.execPath, [CLI, 'backup', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out = [];
    const err = [];
    child.stdout.on('data', (b) => out.push(b));
    child.stderr.on('data', (b) => err.push(b));
    child.on('close', (code) => {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      if (code !== 0) reject(new Error(`coffer backup exited ${code}: ${Buffer.concat(err).toString().trim().split('\n').slice(-3).join(' | ')}`));
      else resolvePromise({ seconds, stdout: Buffer.concat(out).toString() });
    });
  });
}

async function main() {
  for (const tool of ['openssl', 'zstd', 'age-keygen']) {
    if (spawnSync('bash', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is not on PATH`);
  }
  const work = await mkdtemp(join(tmpdir(), 'coffer-memory-'));
  spawnSync('chmod', ['755', work]);
  cleanups.push(() => rm(work, { recursive: true, force: true }));
  const sampler = join(work, 'sampler.mjs');
  writeFileSync(sampler, SAMPLER);
  const fakeDump = join(work, 'fake-pg_dump');
  writeFileSync(fakeDump, FAKE_DUMP);
  chmodSync(fakeDump, 0o755);
  const keyFile = join(work, 'identity.txt');
  spawnSync('age-keygen', ['-o', keyFile], { stdio: 'ignore' });
  const recipient = spawnSync('age-keygen', ['-y', keyFile], { encoding: 'utf8' }).stdout.trim();

  log('starting PostgreSQL' + (opts.target !== 'fs' ? ' and RGW' : ''));
  const { startThrowawayCluster } = await import(pathToFileURL(join(opts.dist, 'demo/throwaway-cluster.js')).href);
  const pgP = startThrowawayCluster({ baseDir: work });
  let rgw;
  if (opts.target !== 'fs') {
    const dir = join(work, 'rgw');
    cleanups.push(async () => spawnSync('bash', [join(ROOT, 'scripts/rgw-down.sh'), dir], { stdio: 'ignore', timeout: 60_000 }));
    // Deleted objects free their space only at RGW's garbage collection (hours later), so the
    // OSD must hold every run's object (a full OSD stalls uploads instead of failing them).
    // The BlueStore file is sparse: unused size costs nothing.
    const totalGiB = opts.sizes.reduce((a, b) => a + b, 0) * (opts.repeat ?? 1);
    const r = spawnSync('bash', [join(ROOT, 'scripts/rgw-up.sh'), dir], {
      env: { ...process.env, RGW_OSD_SIZE_GB: String(Math.max(10, Math.ceil(totalGiB * 1.5) + 5)) },
      encoding: 'utf8',
      timeout: 180_000,
    });
    if (r.status !== 0) throw new Error(`rgw-up.sh failed:\n${(r.stderr ?? '').split('\n').slice(-10).join('\n')}`);
    rgw = {};
    for (const line of r.stdout.split('\n')) {
      const m = /^([A-Z0-9_]+)=(.*)$/.exec(line);
      if (m) rgw[m[1]] = m[2];
    }
  }
  const pg = await pgP;
  cleanups.push(() => pg.stop());
  await pg.psql('CREATE DATABASE mem');

  const env = { ...process.env, ...pg.env(), PATH: `${pg.binDir}:${process.env.PATH}`, COFFER_LOG_FORMAT: 'json' };
  delete env.PGDATABASE;
  delete env.NODE_OPTIONS;
  let s3;
  const bucket = 'memory';
  if (rgw) {
    delete env.AWS_CA_BUNDLE;
    Object.assign(env, {
      AWS_ACCESS_KEY_ID: rgw.RGW_ADMIN_ACCESS_KEY,
      AWS_SECRET_ACCESS_KEY: rgw.RGW_ADMIN_SECRET_KEY,
      AWS_ENDPOINT_URL_S3: rgw.RGW_ENDPOINT,
      AWS_REGION: rgw.RGW_REGION,
    });
    s3 = new S3Client({
      endpoint: rgw.RGW_ENDPOINT,
      region: rgw.RGW_REGION,
      forcePathStyle: true,
      credentials: { accessKeyId: rgw.RGW_ADMIN_ACCESS_KEY, secretAccessKey: rgw.RGW_ADMIN_SECRET_KEY },
    });
    cleanups.push(async () => s3.destroy());
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
  }

  const targets = opts.target === 'both' ? ['fs', 's3'] : [opts.target];
  const results = [];
  for (let rep = 0; rep < opts.repeat; rep++) {
    for (const target of targets) {
      for (const gib of opts.sizes) {
        const bytes = Math.round(gib * GiB);
        const memLog = join(work, 'mem.jsonl');
        writeFileSync(memLog, '');
        const repoDir = join(work, 'repo');
        const to = target === 'fs' ? `file://${repoDir}` : `s3://${bucket}/run`;
        const args = ['--to', to, '--db', 'mem', '--recipient', recipient, '--json', '--compress', opts.compress, '--pg-dump-command', fakeDump, '--lock-dir', work];
        if (opts.partSize) args.push('--part-size', opts.partSize);
        const runEnv = { ...env, COFFER_FAKE_BYTES: String(bytes), COFFER_MEM_LOG: memLog, NODE_OPTIONS: `--import=${pathToFileURL(sampler).href} ${opts.nodeFlags ?? ''}`.trim() };
        log(`${target} ${gib} GiB …`);
        const r = await runBackup(runEnv, args);
        const lines = readFileSync(memLog, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
        if (opts.samples) appendFileSync(opts.samples, lines.map((l) => JSON.stringify({ target, gib, rep, ...l })).join('\n') + '\n');
        const end = lines.find((l) => l.end);
        const samples = lines.filter((l) => !l.end);
        const peak = (k) => Math.max(...samples.map((s) => s[k]));
        const manifest = JSON.parse(r.stdout)[0];
        if (manifest.dump.dumpBytes !== bytes) throw new Error(`dumpBytes ${manifest.dump.dumpBytes} != ${bytes}`);
        const row = {
          target,
          gib,
          rep,
          seconds: r.seconds,
          cpu: end.user + end.system,
          user: end.user,
          system: end.system,
          maxRSS: end.maxRSS,
          heapTotal: peak('heapTotal'),
          external: peak('external'),
          arrayBuffers: peak('arrayBuffers'),
          anon: peak('anon'),
          stored: manifest.dump.size,
        };
        results.push(row);
        log(`${target} ${gib} GiB: peak RSS ${row.maxRSS.toFixed(0)} MiB (anon ${row.anon.toFixed(0)}, heapTotal ${row.heapTotal.toFixed(0)}, external ${row.external.toFixed(0)}, arrayBuffers ${row.arrayBuffers.toFixed(0)}), CPU ${row.cpu.toFixed(1)} s, wall ${row.seconds.toFixed(1)} s`);
        // Free the space for the next run.
        if (target === 'fs') rmSync(repoDir, { recursive: true, force: true });
        else {
          const listed = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'run/' }));
          for (const o of listed.Contents ?? []) await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: o.Key }));
        }
      }
    }
  }
  if (opts.json) console.log(JSON.stringify(results, null, 2));
  else {
    console.log('| target | stream GiB | peak RSS MiB | peak RssAnon | peak heapTotal | peak external | peak arrayBuffers | CPU s (user+sys) | CPU s / GiB | wall s |');
    console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const r of results) {
      console.log(
        `| ${r.target} | ${r.gib} | ${r.maxRSS.toFixed(0)} | ${r.anon.toFixed(0)} | ${r.heapTotal.toFixed(0)} | ${r.external.toFixed(0)} | ${r.arrayBuffers.toFixed(0)} | ${r.cpu.toFixed(1)} | ${(r.cpu / r.gib).toFixed(2)} | ${r.seconds.toFixed(1)} |`,
      );
    }
  }
}

main()
  .catch((e) => {
    console.error(`memory.mjs: ${e.stack ?? e}`);
    process.exitCode = 1;
  })
  .finally(cleanup);
