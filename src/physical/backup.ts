/**
 * One physical backup of a cluster (issue 14): a tar stream of its data directory, from
 * `pg_basebackup` (online, ./basebackup.ts) or `tar` (a stopped cluster, ./volume.ts), stored
 * the way a logical backup is, with the logical pipeline's building blocks:
 *
 *   source (tar) ─▶ node: tar walk, count ─▶ zstd ─▶ gate ─▶ age ─▶ sha256/count ─▶ store.putStream
 *   --attach FILE ─────────────────────────────────▶ gate ─▶ age ─▶ sha256/count ─▶ store.putStream
 *                                                                                   └─▶ manifest (last)
 *
 * Node sees the tar before compression (the source writes to node, node to zstd's stdin): it
 * walks every header as it passes ({@link TarWalk}), so a stream cut short by a wrapper that
 * still exited 0 fails the run, and it hashes the backup_manifest entry on the way. The gate
 * holds the end of the encrypted stream until the source and zstd exited 0 and the walk found a
 * whole archive with the entries the source requires; until then the upload cannot complete.
 * Any failure aborts everything, removes what the run stored, and writes no manifest.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { hostname } from 'node:os';
import * as path from 'node:path';
import { pipeline, Transform } from 'node:stream';
import { physicalKeys, type PhysicalKind } from '../catalog/cluster-layout.js';
import { newBackupId } from '../catalog/layout.js';
import { listPhysicalKeys } from '../catalog/physical-catalog.js';
import { encodePhysicalManifest, type Attachment, type PhysicalManifest, type PhysicalObject } from '../catalog/physical-manifest.js';
import { errnoWords, IntegrityError, UsageError } from '../errors.js';
import { missingTool } from '../pg/tools.js';
import { commitManifest, removeOrphans, spawnCompressor, streamObject, zstdCounts, type ObjectTarget, type Producer, type StoringRequest } from '../pipeline/backup.js';
import { choosePartSize } from '../pipeline/part-size.js';
import { TIER_TAG } from '../retention/lifecycle.js';
import { chooseTier } from '../retention/tiers.js';
import { interruptedBy } from '../run/abort.js';
import { Supervisor, toolEnv, type Child } from '../run/supervisor.js';
import { COFFER_VERSION } from '../version.js';
import { TarWalk, type TarWalkOptions, type TarWalkResult } from './tar-walk.js';
import { checkSystem, recordSystem } from './system-marker.js';

/** What the manifest says of the cluster and its WAL, from the source and its walked tar. */
export interface SourceFacts {
  postgres: PhysicalManifest['postgres'];
  wal?: PhysicalManifest['wal'];
  backupManifestSha256?: string;
  warnings: string[];
}

/**
 * Where the tar comes from. `prepare` runs before anything is written (checks and refusals);
 * `spawn` starts the program writing the tar to its stdout (`stdout: 'pipe'`); `finish` reads
 * the walk of a whole tar after the program exited 0, and says what the manifest records, or
 * why the output is not the backup it should be.
 */
export interface PhysicalSource {
  kind: PhysicalKind;
  /** Checks (refusals) and what the part size is planned from. */
  prepare(signal: AbortSignal): Promise<{ expectedBytes: number; warnings: string[] }>;
  spawn(sup: Supervisor): Child;
  walk: TarWalkOptions;
  finish(walk: TarWalkResult, child: Child): { problem: string } | SourceFacts;
  /** What to check when the output is not whole. */
  hint: string;
}

export interface PhysicalBackupRequest extends StoringRequest {
  cluster: string;
  source: PhysicalSource;
  /** zstd level. */
  level: number;
  /** Files stored beside the backup, encrypted to the same recipients, not compressed. */
  attach: string[];
  /**
   * For the progress display: the tar bytes the source wrote so far, with what the source
   * expected in `prepare` (the databases' sizes, or the data directory's file bytes; 0 when it
   * cannot tell): an estimate, no more (tar headers, WAL written meanwhile).
   */
  onTarProgress?: (tarBytes: number, expectedBytes: number) => void;
}

export interface PhysicalBackupResult {
  manifest: PhysicalManifest;
  manifestKey: string;
}

export async function runPhysicalBackup(req: PhysicalBackupRequest): Promise<PhysicalBackupResult> {
  const now = req.now ?? (() => new Date());
  const startedAt = now();
  if (req.signal.aborted) throw interruptedBy(req.signal);
  const sup = new Supervisor(req.signal);
  const stored: string[] = [];
  /** Once the manifest was sent, commitManifest alone decides what to remove (it may have landed). */
  let committing = false;
  try {
    // 1. Before anything is written: the source's checks.
    const prep = await req.source.prepare(sup.signal);
    const warnings = [...prep.warnings];
    for (const w of warnings) req.log.warn(w, { cluster: req.cluster });

    // 2. Where it goes: the tier from the physical backups of this cluster (listing only).
    const tier = req.tier ?? chooseTier(await listPhysicalKeys(req.store, { cluster: req.cluster, signal: sup.signal }), startedAt);
    const id = newBackupId(startedAt);
    const keys = physicalKeys(req.cluster, tier, id, req.source.kind);
    const retention = req.retentionFor?.(tier, startedAt);
    const tags = { [TIER_TAG]: tier };
    const partSize = choosePartSize(prep.expectedBytes, req.maxParts, req.partSize);
    const target: ObjectTarget = { req, sup, partSize, retention, tags };
    req.log.info('physical backup started', { cluster: req.cluster, kind: req.source.kind, id, tier, key: keys.archive, partSize });

    // 3. The archive, then the attachments (small), then the manifest.
    let facts: SourceFacts | undefined;
    const archiveStored = await streamObject(target, keys.archive, req.source.kind === 'basebackup' ? 'base backup' : 'volume archive', () =>
      tarProducer(req, sup, (f) => (facts = f), req.onTarProgress ? (n) => req.onTarProgress!(n, prep.expectedBytes) : undefined),
    );
    stored.push(keys.archive);
    const archive: PhysicalObject = { key: archiveStored.key, size: archiveStored.size, sha256: archiveStored.sha256, plainBytes: archiveStored.dumpBytes };
    const attachments: Attachment[] = [];
    for (const [n, file] of req.attach.entries()) {
      const key = keys.attachment(n);
      let plainSha256 = '';
      const o = await streamObject({ ...target, partSize: choosePartSize(0, req.maxParts, req.partSize) }, key, `attachment ${path.basename(file)}`, () => fileProducer(sup, file, (h) => (plainSha256 = h)));
      stored.push(key);
      attachments.push({ key, size: o.size, sha256: o.sha256, plainBytes: o.dumpBytes, name: path.basename(file), plainSha256 });
    }
    if (sup.failed) throw sup.cause();
    if (!facts) throw new Error('internal: the source reported nothing');
    warnings.push(...facts.warnings);
    const system = facts.postgres.systemIdentifier === undefined ? undefined : { store: req.store, cluster: req.cluster, systemIdentifier: facts.postgres.systemIdentifier, what: 'this server', usage: true, signal: sup.signal };
    // One --cluster name holds one PostgreSQL system (src/physical/system-marker.ts): another
    // is refused before the manifest is written (the objects already stored are removed);
    // otherwise both would archive WAL under one name. The first backup of a name records it.
    const recordAfter = system !== undefined && (await checkSystem(system));

    const finishedAt = now();
    const manifest: PhysicalManifest = {
      format: 'coffer-physical-manifest',
      formatVersion: 1,
      id,
      cluster: req.cluster,
      tier,
      label: req.label ?? null,
      kind: req.source.kind,
      cofferVersion: COFFER_VERSION,
      host: hostname(),
      postgres: facts.postgres,
      ...(facts.wal ? { wal: facts.wal } : {}),
      ...(facts.backupManifestSha256 ? { backupManifestSha256: facts.backupManifestSha256 } : {}),
      compression: { kind: 'zstd', level: req.level },
      encryption: { format: 'age-v1', recipients: [...req.recipients] },
      archive,
      attachments,
      warnings,
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      durationMs: finishedAt.getTime() - startedAt.getTime(),
      manualRestore: `age -d -i IDENTITY_FILE ${path.posix.basename(keys.archive)} | zstd -d | tar -xf - -C NEW_EMPTY_DIR --numeric-owner`,
    };
    // 4. The commit (not cancelled by a stop signal once sent: see src/pipeline/backup.ts).
    committing = true;
    await commitManifest(req.store, req.log, keys.manifest, encodePhysicalManifest(manifest), { retention, tags, signer: req.signer }, stored);
    if (req.signal.aborted) req.log.warn('the stop signal came after the backup was committed: the backup is complete', { cluster: req.cluster, id });
    if (recordAfter && !req.signal.aborted) {
      await recordSystem({ ...system!, signal: req.signal }, (line) => req.log.warn(line, { cluster: req.cluster })).catch((err: unknown) => {
        req.log.warn(err instanceof Error ? err.message.replace(/; not stored$/, '') : String(err), { cluster: req.cluster });
      });
    }
    req.log.info('physical backup complete', {
      cluster: req.cluster,
      kind: manifest.kind,
      id,
      tier,
      bytes: archive.size,
      sha256: archive.sha256,
      seconds: manifest.durationMs / 1000,
      ...(warnings.length > 0 ? { warnings: warnings.length } : {}),
    });
    return { manifest, manifestKey: keys.manifest };
  } catch (err) {
    sup.fail(err);
    await sup.teardown();
    // The objects of a run without a manifest are not a backup: remove them (best effort).
    if (!committing && stored.length > 0) await removeOrphans(req.store, req.log, stored);
    throw sup.cause();
  } finally {
    await sup.teardown();
  }
}

/**
 * The source's tar through node (walked and counted) into zstd; node reads zstd's output. Its
 * settle checks the walk (a whole archive), zstd's byte counts (what it read is what node
 * wrote to it; what it wrote is what node received) and the source's required entries.
 */
function tarProducer(req: PhysicalBackupRequest, sup: Supervisor, onFacts: (f: SourceFacts) => void, onTar?: (tarBytes: number) => void): Producer {
  const source = req.source;
  const missingZstd = missingTool('zstd', 'install zstd (apt-get install zstd)');
  const child = source.spawn(sup);
  const zstd = spawnCompressor(sup, req.zstdCommand ?? ['zstd'], req.level, toolEnv(req.env), 'pipe', missingZstd);
  const walk = new TarWalk(source.walk);
  let plain = 0;
  let received = 0;
  let pipeError: Error | undefined;
  const walker = new Transform({
    transform(chunk: Buffer, _e, cb) {
      plain += chunk.length;
      onTar?.(plain);
      try {
        walk.push(chunk);
      } catch (err) {
        cb(err as Error);
        return;
      }
      cb(null, chunk);
    },
  });
  pipeline(child.stdout!, walker, zstd.stdin!, (err) => {
    if (!err) return;
    // A damaged tar is the cause; a broken pipe is an echo of a child's end (its exit says why).
    if (err instanceof IntegrityError) sup.fail(new IntegrityError(`${child.what}: ${err.message}; nothing was stored`, { hint: source.hint }));
    else pipeError = err;
  });
  return {
    stdout: zstd.stdout!,
    children: [child, zstd],
    hint: source.hint,
    observe(chunk) {
      received += chunk.length;
    },
    settle: () => {
      const r = walk.end();
      if (pipeError) return Promise.resolve({ problem: `the tar stream did not reach zstd whole: ${pipeError.message}` });
      if (r.problem) return Promise.resolve({ problem: `${child.what}'s output is not a whole tar archive: ${r.problem}` });
      const counts = zstdCounts(zstd.stderr.text());
      if (counts && counts.read !== plain) return Promise.resolve({ problem: `coffer gave zstd ${plain} bytes but zstd read ${counts.read}` });
      if (counts && counts.wrote !== received) return Promise.resolve({ problem: `zstd wrote ${counts.wrote} bytes but ${received} reached coffer` });
      if (!counts) req.log.warn("could not read zstd's byte counts", { zstd: zstd.stderr.lastLines(2) });
      const f = source.finish(r, child);
      if ('problem' in f) return Promise.resolve(f);
      onFacts(f);
      return Promise.resolve({ dumpBytes: plain });
    },
  };
}

/** A file as it is (an attachment): counted and hashed as it is read. */
function fileProducer(sup: Supervisor, file: string, onSha256: (hex: string) => void): Producer {
  const hash = createHash('sha256');
  let n = 0;
  const stdout = createReadStream(file);
  stdout.on('error', (err) => sup.fail(new UsageError(`--attach ${file}: ${errnoWords(err)}`)));
  return {
    stdout,
    children: [],
    hint: 'the attached file must stay readable while the backup runs',
    observe(chunk) {
      n += chunk.length;
      hash.update(chunk);
    },
    settle: () => {
      onSha256(hash.digest('hex'));
      return Promise.resolve({ dumpBytes: n });
    },
  };
}
