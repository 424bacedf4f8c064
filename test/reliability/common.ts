/**
 * Shared helpers of the reliability suite (on the fixture of test/harness/fixture.ts): the
 * "nothing visible" checks every test ends with and the measured data loss.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { CopyObjectCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { errorLine, runCoffer } from '../harness/cli.js';
import type { TestFixture } from '../harness/fixture.js';
import { createDatabase, dataFingerprint, databaseExists, dropDatabase, listDatabases, quoteLiteral, schemaDump, uniqueDbName, type Fingerprint, type PgLike } from '../harness/pg.js';
import { listAllKeys, listMultipartUploads } from '../harness/rgw.js';

/** Backups `coffer list` shows (ids). */
export async function listedIds(f: TestFixture, repo: string): Promise<string[]> {
  const r = await runCoffer(['list', '--from', repo, '--json'], { env: f.env() });
  if (r.code !== 0) throw new Error(`list failed (${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as Array<{ id: string }>).map((x) => x.id).sort();
}

/** Keys and in-progress multipart uploads under a prefix of the fixture's bucket. */
export async function bucketState(f: TestFixture, prefix: string): Promise<{ keys: string[]; uploads: number }> {
  return {
    keys: (await listAllKeys(f.s3, f.bucket, `${prefix}/`)).sort(),
    uploads: (await listMultipartUploads(f.s3, f.bucket, `${prefix}/`)).length,
  };
}

/** Scratch databases of restores (`<target>__restoring_…`). */
export async function scratchDatabases(pg: PgLike): Promise<string[]> {
  return (await listDatabases(pg)).filter((d) => d.includes('__restoring_'));
}

/**
 * A small seeded PRNG (mulberry32): tests log the seed (COFFER_TEST_SEED reproduces a run).
 */
export function seededRandom(label: string): { seed: number; next: () => number } {
  const seed = process.env.COFFER_TEST_SEED ? Number(process.env.COFFER_TEST_SEED) : randomBytes(4).readUInt32LE(0);
  console.log(`[${label}] random seed ${seed} (set COFFER_TEST_SEED=${seed} to reproduce)`);
  let a = seed >>> 0;
  return {
    seed,
    next: () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    },
  };
}

/**
 * The pg_dump child of the coffer process `parent` (by /proc PPID), optionally the one whose
 * command line names `database` (several run at once with --parallel).
 */
export async function pgDumpPid(parent: number | undefined, database?: string): Promise<number | undefined> {
  // The kernel's list of the parent's children is quick to read, so a short dump is not missed
  // while a full /proc scan is still running (a full scan is the fallback).
  let candidates: string[];
  try {
    candidates = (await fsp.readFile(`/proc/${parent}/task/${parent}/children`, 'utf8')).trim().split(/\s+/).filter(Boolean);
  } catch {
    candidates = await fsp.readdir('/proc');
  }
  for (const name of candidates) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = (await fsp.readFile(`/proc/${name}/cmdline`, 'utf8')).split('\0');
      if (!argv[0]?.endsWith('pg_dump') || argv.includes('--version')) continue;
      if (database !== undefined && !argv.some((a) => a.includes(database))) continue;
      const stat = await fsp.readFile(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === parent) return Number(name);
    } catch {
      // gone
    }
  }
  return undefined;
}

/** Bytes a process has written so far (/proc/PID/io wchar); -1 once it is gone. */
export async function bytesWritten(pid: number): Promise<number> {
  try {
    const io = await fsp.readFile(`/proc/${pid}/io`, 'utf8');
    return Number(/wchar: (\d+)/.exec(io)?.[1] ?? 0);
  } catch {
    return -1;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` every 50 ms until it returns true (or `limitMs` passes: returns false). */
export async function waitFor(probe: () => Promise<boolean> | boolean, limitMs = 60_000): Promise<boolean> {
  const end = Date.now() + limitMs;
  while (Date.now() < end) {
    if (await probe()) return true;
    await sleep(50);
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Measured data loss (issue 21). Before a fault, the repository already holds good backups and
// the server an existing database with known content (a baseline); after it, {@link dataLoss}
// checks that nothing of either was lost or changed, and says what was. Its result is the
// matrix's "data lost" column: 'none', or a description of the loss.
// ---------------------------------------------------------------------------------------------

/** A good backup made once (the "golden" one), with what a restore of it must equal. */
export interface GoldenBackup {
  prefix: string;
  manifest: BackupManifest;
  database: string;
  schema: string;
  fingerprint: Fingerprint;
}

/** What a repository held before a fault: its backups (ids, manifests' and objects' sha256). */
export interface RepoBaseline {
  prefix: string;
  database: string;
  keys: string[];
  backups: Array<{ id: string; manifestKey: string; manifestSha256: string; dumpKey: string; dumpSha256: string }>;
  schema: string;
  fingerprint: Fingerprint;
}

/** An existing database with known content (schema dump and content fingerprint). */
export interface TargetBaseline {
  db: string;
  schema: string;
  fingerprint: Fingerprint;
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function objectSha256(f: TestFixture, key: string): Promise<string | undefined> {
  // A missing object is undefined; any other failure (a loaded machine's timeout) is tried again,
  // then thrown: a download that failed is not a deleted object.
  for (let attempt = 1; ; attempt++) {
    try {
      const out = await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: key }));
      return sha256(await out.Body!.transformToByteArray());
    } catch (err) {
      const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
      if (e.name === 'NoSuchKey' || e.$metadata?.httpStatusCode === 404) return undefined;
      if (attempt >= 3) throw new Error(`could not be read (${e.name ?? 'error'}: ${(err as Error).message})`);
      await new Promise((r) => setTimeout(r, 1000 * attempt));
    }
  }
}

/** {@link objectSha256}, with a read failure as the problem's text. */
async function objectState(f: TestFixture, key: string): Promise<string | undefined | { error: string }> {
  try {
    return await objectSha256(f, key);
  } catch (err) {
    return { error: (err as Error).message };
  }
}

/** Backs `db` up once into `prefix` (no fault) and records what a restore of it must equal. */
export async function makeGolden(f: TestFixture, pg: PgLike, prefix: string, db: string, extraArgs: string[] = []): Promise<GoldenBackup> {
  const manifest = await f.backup(f.repo(prefix), db, extraArgs);
  return { prefix, manifest, database: db, schema: await schemaDump(pg, db), fingerprint: await dataFingerprint(pg, db) };
}

/**
 * Puts a copy of the golden backup (dump, globals, manifest: server-side copies, same relative
 * keys, so the same id) into `prefix`, and returns the repository's baseline. Backup-side fault
 * tests then write into a repository that already holds a good backup.
 */
export async function seedRepository(f: TestFixture, golden: GoldenBackup, prefix: string): Promise<RepoBaseline> {
  const goldenKeys = (await listAllKeys(f.s3, f.bucket, `${golden.prefix}/`)).filter((k) => k.includes(golden.manifest.id));
  for (const k of goldenKeys) {
    await f.s3.send(new CopyObjectCommand({ Bucket: f.bucket, Key: `${prefix}/${k.slice(golden.prefix.length + 1)}`, CopySource: `${f.bucket}/${k}` }));
  }
  return repoBaseline(f, prefix, golden);
}

/** The baseline of a repository as it is now (every backup of `golden.database` in it). */
export async function repoBaseline(f: TestFixture, prefix: string, golden: Pick<GoldenBackup, 'database' | 'schema' | 'fingerprint'>): Promise<RepoBaseline> {
  const keys = (await listAllKeys(f.s3, f.bucket, `${prefix}/`)).sort();
  const backups: RepoBaseline['backups'] = [];
  for (const manifestKey of keys.filter((k) => k.endsWith('.manifest.json'))) {
    const out = await f.s3.send(new GetObjectCommand({ Bucket: f.bucket, Key: manifestKey }));
    const bytes = await out.Body!.transformToByteArray();
    const m = JSON.parse(Buffer.from(bytes).toString('utf8')) as BackupManifest;
    if (m.database !== golden.database) continue;
    const dumpKey = `${prefix}/${m.dump.key}`;
    backups.push({ id: m.id, manifestKey, manifestSha256: sha256(bytes), dumpKey, dumpSha256: (await objectSha256(f, dumpKey)) ?? 'missing' });
  }
  if (backups.length === 0) throw new Error(`baseline: no backup of ${golden.database} in ${prefix}`);
  return { prefix, database: golden.database, keys, backups, schema: golden.schema, fingerprint: golden.fingerprint };
}

/** Snapshot of an existing database (schema dump + content fingerprint). */
export async function targetBaseline(pg: PgLike, db: string): Promise<TargetBaseline> {
  return { db, schema: await schemaDump(pg, db), fingerprint: await dataFingerprint(pg, db) };
}

/** An existing database with known content (a copy of the 'varied' fixture plus one marker row). */
export async function existingTarget(pg: PgLike, prefix: string): Promise<TargetBaseline> {
  const db = await createDatabase(pg, uniqueDbName(prefix), 'varied');
  await pg.psql(`CREATE TABLE coffer_existing_marker (note text); INSERT INTO coffer_existing_marker VALUES (${quoteLiteral(`existed before the fault: ${db}`)});`, db);
  return targetBaseline(pg, db);
}

/** How a database differs from a baseline ('' when identical). */
export async function databaseDiff(pg: PgLike, db: string, want: { schema: string; fingerprint: Fingerprint }): Promise<string> {
  if (!(await databaseExists(pg, db))) return `database ${db} is gone`;
  const problems: string[] = [];
  if ((await schemaDump(pg, db)) !== want.schema) problems.push('schema differs');
  const fp = await dataFingerprint(pg, db);
  const changed = [...new Set([...Object.keys(fp), ...Object.keys(want.fingerprint)])].filter((k) => JSON.stringify(fp[k]) !== JSON.stringify(want.fingerprint[k]));
  if (changed.length > 0) problems.push(`content differs in ${changed.length} relation(s), e.g. ${changed[0]}`);
  return problems.length ? `database ${db}: ${problems.join(', ')}` : '';
}

/**
 * The data-loss check: after a fault, every backup of the repository baseline is still listed,
 * its manifest and object are byte-for-byte the same, `coffer verify` passes for each, and the
 * newest restores identically (schema dump + content fingerprint); every target baseline is
 * byte-for-byte the same database under its name. Returns 'none', or what was lost.
 */
export async function dataLoss(f: TestFixture, pg: PgLike, opts: { repo?: RepoBaseline; targets?: TargetBaseline[] }): Promise<string> {
  const lost: string[] = [];
  const r = opts.repo;
  if (r) {
    const repo = f.repo(r.prefix);
    let listed: string[] = [];
    try {
      listed = await listedIds(f, repo);
    } catch (err) {
      lost.push(`the repository cannot be listed: ${(err as Error).message.split('\n')[0]}`);
    }
    const intact: string[] = [];
    for (const b of r.backups) {
      const problems: string[] = [];
      if (!listed.includes(b.id)) problems.push('no longer listed');
      const manifestNow = await objectState(f, b.manifestKey);
      if (manifestNow === undefined) problems.push('manifest deleted');
      else if (typeof manifestNow !== 'string') problems.push(`manifest ${manifestNow.error}`);
      else if (manifestNow !== b.manifestSha256) problems.push('manifest changed');
      const dumpNow = await objectState(f, b.dumpKey);
      if (dumpNow === undefined) problems.push('dump object deleted');
      else if (typeof dumpNow !== 'string') problems.push(`dump object ${dumpNow.error}`);
      else if (dumpNow !== b.dumpSha256) problems.push('dump object changed');
      if (problems.length === 0) {
        const v = await runCoffer(['verify', '--from', repo, '--db', r.database, '--backup', b.id, '--identity', f.identityFile], { env: f.env() });
        if (v.code !== 0) problems.push(`verify failed (exit ${v.code}: ${errorLine(v.stderr)})`);
      }
      if (problems.length) lost.push(`earlier backup ${b.id}: ${problems.join(', ')}`);
      else intact.push(b.id);
    }
    const newest = intact.sort().at(-1);
    if (newest) {
      const target = uniqueDbName('dataloss_check');
      const rr = await runCoffer(['restore', '--from', repo, '--db', r.database, '--backup', newest, '--identity', f.identityFile, '--target-db', target], { env: f.env() });
      if (rr.code !== 0) lost.push(`earlier backup ${newest}: restore failed (exit ${rr.code}: ${errorLine(rr.stderr)})`);
      else {
        const diff = await databaseDiff(pg, target, r);
        if (diff) lost.push(`earlier backup ${newest} restores differently: ${diff}`);
      }
      await dropDatabase(pg, target);
    }
  }
  for (const t of opts.targets ?? []) {
    const diff = await databaseDiff(pg, t.db, t);
    if (diff) lost.push(`existing ${diff}`);
  }
  return lost.length ? lost.join('; ') : 'none';
}
