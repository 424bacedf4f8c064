#!/usr/bin/env node
// Micro-benchmark of coffer's age encryption (src/crypto) against the pure-JS age-encryption
// library and the Debian age CLI. Build first (`npx tsc -p tsconfig.json`), then
// `node bench/crypto.mjs`.
//
// Plaintext is generated (a pool of 8 random 1 MiB buffers written over and over), never held
// in memory as a whole. Encryption goes to a byte-counting sink. For decryption, one ciphertext
// of the full size is streamed to a temporary file (deleted at the end), which coffer decrypts
// through a pipe and through fs read streams, and the age CLI decrypts too (an interop check).
// The headline decrypt figure ("<- memory") takes the source out of the measurement: a 128 MiB
// age file held in memory, decrypted repeatedly until the full size has been processed. Reading
// a file with Node's default 64 KiB fs reads costs about as much as decrypting it. MB/s are 10^6 plaintext bytes per second of wall time; "cpu" is per
// second of this process's CPU time (user+system, all threads), which is steadier on a shared
// machine. Compare the ratios of one run, not absolute figures across runs.
//
// Env: BENCH_MIB (default 1024) for coffer and the CLI, BENCH_LIB_MIB (default 256) for the
// pure-JS library (about 10x slower).
import { spawn } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Decrypter, Encrypter } from 'age-encryption';
import { createEncryptStream, generateIdentity, openDecryptStream } from '../dist/crypto/age.js';

const MiB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_MIB ?? 1024) * MiB;
const LIB_SIZE = Number(process.env.BENCH_LIB_MIB ?? 256) * MiB;
const pool = Array.from({ length: 8 }, () => randomBytes(MiB));

function plaintext(size) {
  function* gen() {
    for (let sent = 0, i = 0; sent < size; sent += MiB, i++) yield pool[i % pool.length].subarray(0, Math.min(MiB, size - sent));
  }
  return Readable.from(gen());
}

function counter() {
  const sink = new Writable({
    highWaterMark: MiB,
    write(chunk, _enc, cb) {
      sink.bytes += chunk.length;
      cb();
    },
  });
  sink.bytes = 0;
  return sink;
}

function shell(cmd) {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', cmd], { stdio: ['ignore', 'ignore', 'inherit'] });
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} exited ${code}`))));
  });
}

const results = {};
/** Run `fn`, print and return wall MB/s for `size` plaintext bytes. In-process CPU only for `cpu`. */
async function measure(key, name, size, fn, { cpu = true } = {}) {
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await fn();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const c = process.cpuUsage(c0);
  const cpuSeconds = (c.user + c.system) / 1e6;
  const mbps = size / 1e6 / seconds;
  results[key] = mbps;
  const cpuText = cpu ? `  cpu ${(size / 1e6 / cpuSeconds).toFixed(0).padStart(5)} MB/s` : '';
  console.log(
    `${name.padEnd(44)} ${(size / MiB).toFixed(0).padStart(5)} MiB ${seconds.toFixed(2).padStart(6)} s ${mbps.toFixed(0).padStart(5)} MB/s${cpuText}`,
  );
  return mbps;
}

const id = await generateIdentity();
const dir = await mkdtemp(join(tmpdir(), 'coffer-bench-'));
const keyFile = join(dir, 'key.txt');
const bigFile = join(dir, 'big.age');
const libFile = join(dir, 'lib.age');
await writeFile(keyFile, id.fileText, { mode: 0o600 });

async function checkedDecrypt(source, size) {
  const { plaintext: p } = await openDecryptStream(source, [id.identity]);
  const sink = counter();
  await pipeline(p, sink);
  if (sink.bytes !== size) throw new Error(`decrypted ${sink.bytes} bytes, expected ${size}`);
}

try {
  console.log(`node ${process.version}; coffer and age CLI: ${SIZE / MiB} MiB; pure-JS library: ${LIB_SIZE / MiB} MiB\n`);

  await measure('raw', 'node:crypto raw 64 KiB loop (reference)', SIZE, async () => {
    const key = randomBytes(32);
    const nonce = Buffer.alloc(12);
    for (let i = 0; i < SIZE / 65536; i++) {
      nonce.writeUInt32BE(i, 7);
      const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
      c.update(pool[i % pool.length].subarray(0, 65536));
      c.final();
      c.getAuthTag();
    }
  });

  const rssBefore = process.memoryUsage().rss;
  await measure('enc', 'coffer encrypt -> counting sink', SIZE, async () => {
    await pipeline(plaintext(SIZE), await createEncryptStream([id.recipient]), counter());
  });
  // Not timed against the others: writes go through the page cache.
  await pipeline(plaintext(SIZE), await createEncryptStream([id.recipient]), createWriteStream(bigFile));
  await pipeline(plaintext(LIB_SIZE), await createEncryptStream([id.recipient]), createWriteStream(libFile));
  await measure('decPipe', 'coffer decrypt <- pipe from `cat file`', SIZE, () =>
    checkedDecrypt(spawn('cat', [bigFile], { stdio: ['ignore', 'pipe', 'inherit'] }).stdout, SIZE),
  );
  await measure('dec1m', 'coffer decrypt <- file (1 MiB reads)', SIZE, () =>
    checkedDecrypt(createReadStream(bigFile, { highWaterMark: MiB }), SIZE),
  );
  await measure('dec64k', 'coffer decrypt <- file (64 KiB reads)', SIZE, () => checkedDecrypt(createReadStream(bigFile), SIZE));
  await measure('both', 'coffer encrypt -> decrypt, one thread', SIZE, async () => {
    const e = await createEncryptStream([id.recipient]);
    plaintext(SIZE).pipe(e);
    await checkedDecrypt(e, SIZE);
  });
  const peak = process.resourceUsage().maxRSS / 1024;
  console.log(`  peak RSS after the streaming runs: ${peak.toFixed(0)} MiB (before them: ${(rssBefore / MiB).toFixed(0)} MiB)`);
  // The decrypter alone: a 128 MiB file held in memory, decrypted SIZE/128 MiB times from 64 KiB pieces.
  {
    const parts = [];
    const piece = 128 * MiB;
    await pipeline(plaintext(piece), await createEncryptStream([id.recipient]), new Writable({ write: (c, _e, cb) => (parts.push(c), cb()) }));
    const file = Buffer.concat(parts);
    parts.length = 0;
    function* pieces() {
      for (let o = 0; o < file.length; o += 65536) yield file.subarray(o, o + 65536);
    }
    await measure('dec', 'coffer decrypt <- memory (64 KiB pieces)', SIZE, async () => {
      for (let done = 0; done < SIZE; done += piece) await checkedDecrypt(Readable.from(pieces()), piece);
    });
  }

  await measure('libEnc', 'age-encryption (pure JS) encrypt', LIB_SIZE, async () => {
    const e = new Encrypter();
    e.addRecipient(id.recipient);
    const out = await e.encrypt(Readable.toWeb(plaintext(LIB_SIZE)));
    await pipeline(Readable.fromWeb(out), counter());
  });
  await measure('libDec', 'age-encryption (pure JS) decrypt <- file', LIB_SIZE, async () => {
    const d = new Decrypter();
    d.addIdentity(id.identity);
    const out = await d.decrypt(Readable.toWeb(createReadStream(libFile)));
    const sink = counter();
    await pipeline(Readable.fromWeb(out), sink);
    if (sink.bytes !== LIB_SIZE) throw new Error('size mismatch');
  });

  const cli = { cpu: false };
  await measure('cliEnc', 'age CLI encrypt (head -c N /dev/zero | age -r)', SIZE, () => shell(`head -c ${SIZE} /dev/zero | age -r ${id.recipient} > /dev/null`), cli);
  await measure('cliDec', 'age CLI decrypt of our file (age -d -i)', SIZE, () => shell(`age -d -i ${keyFile} ${bigFile} > /dev/null`), cli);
  const expected = (await stat(bigFile)).size;
  if (expected <= SIZE) throw new Error('ciphertext file too small');

  const r = results;
  console.log('\nratios (same run)');
  console.log(`  coffer / pure-JS library: encrypt ${(r.enc / r.libEnc).toFixed(1)}x, decrypt ${(r.dec / r.libDec).toFixed(1)}x`);
  console.log(
    `  coffer / age CLI:         encrypt ${(r.enc / r.cliEnc).toFixed(2)}x, decrypt ${(r.dec / r.cliDec).toFixed(2)}x (from a file with 1 MiB reads: ${(r.dec1m / r.cliDec).toFixed(2)}x)`,
  );
  console.log(`  coffer / raw node:crypto: encrypt ${(r.enc / r.raw).toFixed(2)}x, decrypt ${(r.dec / r.raw).toFixed(2)}x`);
  console.log(
    `  targets: encrypt >= 400 MB/s ${r.enc >= 400 ? 'met' : 'missed'} (${r.enc.toFixed(0)}), decrypt >= 500 MB/s ${r.dec >= 500 ? 'met' : 'missed'} (${r.dec.toFixed(0)})`,
  );
} finally {
  await rm(dir, { recursive: true, force: true });
}
