/**
 * `coffer restore --physical`: a cluster's physical backup (pg_basebackup tar or cold volume
 * archive) unpacked into a new data directory, set up to replay archived WAL to a recovery
 * target, and optionally started once on a private socket to prove it recovers:
 *
 *   store ─▶ sha256/size ─▶ age decrypt ─▶ zstd -d ─▶ tar check ─▶ tar -x -C DIR
 *                                                        └─▶ postgresql.auto.conf + recovery.signal
 *                                                            └─▶ (--verify) pg_verifybackup, postgres, smoke, stop
 *
 * The directory must be empty or new. Whatever fails — a damaged object, a wrong identity, a
 * failed recovery — the directory is emptied again (and removed if coffer created it): nothing
 * is left that could be started on damaged data.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { spawnSync } from 'node:child_process';
import { parseLsn, parseSegmentName, walPrefix, type PhysicalKind } from '../catalog/cluster-layout.js';
import type { PhysicalManifest } from '../catalog/physical-manifest.js';
import { UNTRUSTED_HINT } from '../catalog/catalog.js';
import { findPhysicalBackup, listPhysicalKeys, loadPhysicalEntry, type PhysicalEntry } from '../catalog/physical-catalog.js';
import { confValue, isRoot, osUser } from '../demo/throwaway-cluster.js';
import { IntegrityError, StorageError, UsageError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { openArchive } from '../pipeline/archive.js';
import { missingTool } from '../pg/tools.js';
import { Supervisor, toolEnv } from '../run/supervisor.js';
import { resumableGet } from '../store/resumable.js';
import { commitFile, tempPathIn } from '../atomic-write.js';
import { openDecryptStream } from '../crypto/age.js';
import type { ObjectStore } from '../store/object-store.js';
import { findServerBinaries } from './server-version.js';
import { decodeWalFile } from './wal-codec.js';
import { chooseTimeline, listWal, parseHistory, timelineBegins, walkRecoveryPath, type HistoryEntry, type WalObject } from './wal-catalog.js';
import { checkRecovery, type RecoveryCheck } from './recovery-check.js';

/** Where recovery stops (PostgreSQL's recovery_target_*). */
export type RecoveryTarget = { kind: 'time'; time: Date; /** As given (microseconds kept: a Date has milliseconds only). */ text: string } | { kind: 'lsn'; lsn: string; value: bigint } | { kind: 'name'; name: string } | { kind: 'immediate' };

export type TargetAction = 'promote' | 'pause' | 'shutdown';

/** `--target-timeline`: the backup's own (`current`), the newest archived (`latest`), or a number. */
export type TargetTimeline = 'current' | 'latest' | number;

export interface PhysicalRestoreRequest {
  store: ObjectStore;
  cluster: string;
  /** `latest` or a backup id. */
  selector: string;
  identities: string[];
  /** Identity files named in restore_command (absolute paths). */
  identityFiles: string[];
  toDir: string;
  target?: RecoveryTarget;
  targetAction: TargetAction;
  /** `--target-timeline`: the timeline recovery follows (default: chosen from the archived history files, {@link chooseTimeline}). */
  targetTimeline?: TargetTimeline;
  /** OS user to own the directory when coffer runs as root (default: the directory's owner, else `postgres`). */
  owner?: string;
  /** Directory of the server binaries (postgres, pg_ctl, pg_verifybackup). */
  binDir?: string;
  verify: boolean;
  smoke: string[];
  smokeDb: string;
  /** Where to write the files stored with the backup (`--attach`); they are listed, not fetched, without it. */
  attachmentsDir?: string;
  /** The shell command PostgreSQL runs to fetch archived WAL (%f %p in it). */
  restoreCommand: string;
  zstdCommand?: string[];
  env: NodeJS.ProcessEnv;
  /** S3 credentials for the verification server's restore_command (its environment only). */
  serverSecrets?: Record<string, string>;
  signal: AbortSignal;
  log: Logger;
  /** The stored bytes read so far, and the stored archive's size (the manifest's). */
  onProgress?: (bytes: number, total: number) => void;
  /**
   * `--trusted-signers`: why a backup may not be used (its manifest's signature, one line), or
   * undefined when it may. `latest` passes over such backups, telling `onSkip`; an id is refused.
   */
  untrustedBecause?: (e: PhysicalEntry) => Promise<string | undefined>;
  onSkip?: (why: string) => void;
}

export interface PhysicalRestoreSummary {
  backupId: string;
  cluster: string;
  kind: PhysicalKind;
  dir: string;
  majorVersion: number;
  /** Recovery set up: replays archived WAL (to the target, or to the end of the archive). */
  recovery: { restoreCommand: string; target: string | null; action: TargetAction } | null;
  storedBytes: number;
  tarBytes: number;
  verified: RecoveryCheck | null;
  /** The files stored with the backup, and where they were written (null: not fetched). */
  attachments: Array<{ name: string; bytes: number; path: string | null }>;
  durationMs: number;
  /** How to start it for real. */
  startHint: string;
}

export async function runPhysicalRestore(req: PhysicalRestoreRequest): Promise<PhysicalRestoreSummary> {
  const started = Date.now();
  if (req.target?.kind !== undefined && req.verify && req.targetAction === 'shutdown') {
    throw new UsageError('--verify cannot be combined with --target-action shutdown', { hint: 'the server would stop at the target before it could be checked; use promote or pause' });
  }
  const dir = path.resolve(req.toDir);
  const created = await prepareDirectory(dir);
  let cleanupNeeded = true;
  try {
    const chosen = await selectBackup(req);
    const m = chosen.manifest;
    req.log.info('physical backup selected', { id: chosen.id, cluster: req.cluster, kind: m.kind, tier: m.tier, size: m.archive.size, label: m.label ?? undefined });

    // The version warning of the operations document, made concrete: binaries of the backup's major only.
    const bins = findServerBinaries(m.postgres.majorVersion, req.binDir);
    if (bins.kind === 'other') {
      throw new UsageError(`the backup is of PostgreSQL ${m.postgres.majorVersion}, but the server binaries here are PostgreSQL ${bins.major} (${bins.binDir}): a data directory only starts with the major version that wrote it`, {
        hint: `install PostgreSQL ${m.postgres.majorVersion} (apt-get install postgresql-${m.postgres.majorVersion}) and pass --pg-bin /usr/lib/postgresql/${m.postgres.majorVersion}/bin, or restore on a host that has it`,
      });
    }
    if (bins.kind === 'none') {
      if (req.verify) throw new UsageError(`--verify needs the PostgreSQL ${m.postgres.majorVersion} server binaries (postgres, pg_ctl), and none were found`, { hint: `install postgresql-${m.postgres.majorVersion} or pass --pg-bin DIR` });
      req.log.warn(`no PostgreSQL server binaries found here: the directory must be started with PostgreSQL ${m.postgres.majorVersion}`);
    }
    const owner = resolveOwner(req.owner, created ? undefined : dir);
    if (owner) await fsp.chown(dir, owner.uid, owner.gid);
    await fsp.chmod(dir, 0o700);

    // Replay archived WAL when a target is asked for, or when the archive reaches past the backup.
    const recovery = await planRecovery(req, m);
    if (recovery && owner) {
      checkReadableBy(owner, req.identityFiles, 'identity file');
      // a file repository is read by restore_command too, as the server's user
      if (req.store.location.startsWith('file://')) {
        const walDir = path.join(fileURLToPath(req.store.location), walPrefix(req.cluster));
        if (existsSync(walDir)) checkReadableBy(owner, [walDir], 'repository directory');
      }
    }

    const { storedBytes, tarBytes } = await unpack(req, m, dir);
    const version = (await fsp.readFile(path.join(dir, 'PG_VERSION'), 'utf8').catch(() => '')).trim();
    if (version !== String(m.postgres.majorVersion)) {
      throw new IntegrityError(`the unpacked directory says PostgreSQL ${JSON.stringify(version)}, its manifest ${m.postgres.majorVersion}`, { hint: 'the object or the manifest was replaced; do not trust this backup' });
    }
    if (recovery) await writeRecoveryConfig(dir, recovery, chosen.id);
    if (owner) await chownTree(dir, owner.uid, owner.gid);

    const attachments = await fetchAttachments(req, m);
    let verified: RecoveryCheck | null = null;
    if (req.verify && bins.kind === 'same') {
      verified = await checkRecovery({
        binDir: bins.binDir,
        dataDir: dir,
        user: owner,
        env: { ...req.env, ...(req.serverSecrets ?? {}) },
        smoke: req.smoke,
        smokeDb: req.smokeDb,
        // roles to try for the verification connection: the backup's own, postgres, the owner's name
        users: [m.postgres.role, 'postgres', req.owner].filter((u): u is string => !!u),
        hasBackupManifest: existsSync(path.join(dir, 'backup_manifest')),
        recovery: recovery ? { action: req.targetAction } : null,
        log: req.log,
        signal: req.signal,
      }).catch(async (err: unknown) => {
        throw await restorePointHint(req, chosen, err);
      });
    }
    cleanupNeeded = false;
    const binDir = bins.kind === 'same' ? bins.binDir : `/usr/lib/postgresql/${m.postgres.majorVersion}/bin`;
    return {
      backupId: chosen.id,
      cluster: req.cluster,
      kind: m.kind,
      dir,
      majorVersion: m.postgres.majorVersion,
      recovery: recovery ? { restoreCommand: req.restoreCommand, target: recovery.describe, action: req.targetAction } : null,
      storedBytes,
      tarBytes,
      verified,
      attachments,
      durationMs: Date.now() - started,
      startHint: startHint(dir, binDir, owner ? (req.owner ?? userName(owner.uid)) : undefined, m.postgres.majorVersion),
    };
  } finally {
    if (cleanupNeeded) {
      await emptyDirectory(dir, created).catch((err: unknown) => req.log.warn(`could not remove the partly restored directory ${dir}: ${String(err)}; remove it before starting anything there`));
      req.log.warn(`restore failed: the partly restored directory was ${created ? 'removed' : 'emptied'}`, { dir });
    }
  }
}

/**
 * A restore point cannot be placed before recovery: `latest` takes the newest backup, and a
 * restore point created before that backup's end is unreachable from it (recovery ends without
 * reaching the target). The failure then names the older backups to pass with `--backup`.
 */
async function restorePointHint(req: PhysicalRestoreRequest, chosen: PhysicalEntry, err: unknown): Promise<unknown> {
  if (req.target?.kind !== 'name' || req.selector !== 'latest' || !(err instanceof IntegrityError) || !/recovery of the restored directory failed/.test(err.message)) return err;
  const older = (await listPhysicalKeys(req.store, { cluster: req.cluster, signal: req.signal }).catch(() => [])).map((k) => k.id).filter((id) => id < chosen.id).sort().reverse();
  if (older.length === 0) return err;
  return new IntegrityError(`${err.message}; restore point ${JSON.stringify(req.target.name)} may have been created before backup ${chosen.id} (the newest, which coffer chose) ended, so recovery from it cannot reach it`, {
    cause: err,
    hint: `pass --backup with an older backup: ${older.slice(0, 3).join(', ')}${older.length > 3 ? ', …' : ''} (newest first; coffer list --cluster ${req.cluster})`,
  });
}

// ---------------------------------------------------------------------------------------------
// The directory

/** An empty directory to unpack into: created when missing (its parent must exist); refuses a non-empty one. Returns whether it was created. */
async function prepareDirectory(dir: string): Promise<boolean> {
  let st;
  try {
    st = await fsp.stat(dir);
  } catch {
    try {
      await fsp.mkdir(dir, { mode: 0o700 });
    } catch (err) {
      throw new UsageError(`--to-dir ${dir}: cannot create it (${(err as NodeJS.ErrnoException).code ?? String(err)})`, { hint: 'its parent directory must exist and be writable' });
    }
    return true;
  }
  if (!st.isDirectory()) throw new UsageError(`--to-dir ${dir} is not a directory`);
  const entries = await fsp.readdir(dir);
  if (entries.length > 0) {
    throw new UsageError(`--to-dir ${dir} is not empty (${entries.length} entries, e.g. ${JSON.stringify(entries.sort()[0])}); coffer unpacks only into an empty or new directory`, {
      hint: 'choose a new directory (or a new, empty Docker volume); never restore over a data directory',
    });
  }
  return false;
}

async function emptyDirectory(dir: string, remove: boolean): Promise<void> {
  if (remove) {
    await fsp.rm(dir, { recursive: true, force: true });
    return;
  }
  for (const e of await fsp.readdir(dir).catch(() => [] as string[])) await fsp.rm(path.join(dir, e), { recursive: true, force: true });
}

/** The OS user to own the directory: only when coffer runs as root (otherwise the files are ours). */
function resolveOwner(name: string | undefined, existingDir: string | undefined): { uid: number; gid: number } | undefined {
  if (!isRoot()) {
    if (name !== undefined && osUser(name)?.uid !== process.getuid?.()) throw new UsageError(`--dir-owner ${name}: only root can give the files to another user`, { hint: 'run coffer as that user, or as root' });
    return undefined;
  }
  if (name !== undefined) {
    const u = osUser(name);
    if (!u) throw new UsageError(`--dir-owner ${name}: no such OS user`);
    return u;
  }
  if (existingDir !== undefined) {
    const st = spawnSync('stat', ['-c', '%u:%g', existingDir], { encoding: 'utf8' });
    const [uid, gid] = (st.stdout ?? '').trim().split(':').map(Number);
    if (uid !== undefined && gid !== undefined && uid > 0) return { uid, gid };
  }
  const pg = osUser('postgres');
  if (!pg) throw new UsageError('running as root, but there is no `postgres` OS user to own the data directory', { hint: 'pass --dir-owner USER (the OS user that will run the server)' });
  return pg;
}

/** restore_command runs as the server's user: it must be able to read the identity files (and a file repository). */
function checkReadableBy(owner: { uid: number; gid: number }, paths: string[], what: string): void {
  for (const p of paths) {
    const r = spawnSync('sh', ['-c', 'test -r "$1" && { test ! -d "$1" || test -x "$1"; }', 'sh', p], { uid: owner.uid, gid: owner.gid });
    if (r.status !== 0) {
      throw new UsageError(`the server's OS user (uid ${owner.uid}) cannot read the ${what} ${p}, which restore_command needs to fetch archived WAL`, {
        hint: what === 'identity file' ? 'give that user read access to the file (and its directories), e.g. a copy owned by it with mode 0600; never inside the data directory' : 'give that user read access to the repository (e.g. chown -R it, or run the server as the repository owner)',
      });
    }
  }
}

/** An OS user's name (for the printed start command), or `#uid` (sudo's form) when it has none. */
function userName(uid: number): string {
  const r = spawnSync('id', ['-nu', String(uid)], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : `#${uid}`;
}

async function chownTree(dir: string, uid: number, gid: number): Promise<void> {
  await fsp.lchown(dir, uid, gid);
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await chownTree(p, uid, gid);
    else await fsp.lchown(p, uid, gid);
  }
}

// ---------------------------------------------------------------------------------------------
// Which backup

async function selectBackup(req: PhysicalRestoreRequest): Promise<PhysicalEntry> {
  if (req.selector !== 'latest') {
    const e = await findPhysicalBackup(req.store, { cluster: req.cluster, selector: req.selector, signal: req.signal });
    const untrusted = await req.untrustedBecause?.(e);
    if (untrusted !== undefined) throw new IntegrityError(untrusted, { hint: UNTRUSTED_HINT });
    const why = tooLate(e.manifest, req.target);
    if (why) throw new UsageError(`backup ${e.id} cannot reach the recovery target: ${why}`, { hint: 'choose an earlier backup, or leave out --backup to let coffer choose' });
    return e;
  }
  const keys = await listPhysicalKeys(req.store, { cluster: req.cluster, signal: req.signal });
  const where = `of cluster ${JSON.stringify(req.cluster)} in ${req.store.location}`;
  if (keys.length === 0) throw new StorageError('NotFound', `no physical backup ${where}`, { hint: 'run `coffer list --cluster NAME` to see what is there' });
  // Newest first: the first that ended before the target (recovery only goes forward from a backup's end).
  const skipped: string[] = [];
  for (const k of keys) {
    const e = await loadPhysicalEntry(req.store, k, req.signal);
    if (tooLate(e.manifest, req.target)) continue;
    const untrusted = await req.untrustedBecause?.(e);
    if (untrusted === undefined) return e;
    skipped.push(untrusted);
    req.onSkip?.(untrusted);
  }
  if (skipped.length > 0) throw new IntegrityError(`no trusted physical backup ${where}: ${skipped.length} untrusted one(s) refused, the newest: ${skipped[0]}`, { hint: UNTRUSTED_HINT });
  throw new StorageError('NotFound', `no physical backup ${where} ended before the recovery target ${describeTarget(req.target!)}`, { hint: 'a backup can only be rolled forward: the target must lie after the end of a backup' });
}

/** Why a backup ends after the target (so cannot reach it); `undefined` when it can. */
function tooLate(m: PhysicalManifest, target: RecoveryTarget | undefined): string | undefined {
  if (target?.kind === 'time' && new Date(m.finishedAt).getTime() >= target.time.getTime()) return `it ended at ${m.finishedAt}, after ${target.time.toISOString()}`;
  if (target?.kind === 'lsn' && m.wal) {
    const stop = parseLsn(m.wal.stopLsn);
    if (stop > target.value) return `its WAL ends at ${m.wal.stopLsn}, after ${target.lsn}`;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Unpacking

async function unpack(req: PhysicalRestoreRequest, m: PhysicalManifest, dir: string): Promise<{ storedBytes: number; tarBytes: number }> {
  const sup = new Supervisor(req.signal);
  return sup.run(async () => {
    const ciphertext = resumableGet(req.store, m.archive.key, m.archive.size, { signal: sup.signal, log: req.log, onProgress: req.onProgress ? (n) => req.onProgress!(n, m.archive.size) : undefined });
    const opened = await openArchive({
      ciphertext,
      expected: { sha256: m.archive.sha256, size: m.archive.size, dumpBytes: m.archive.plainBytes, format: 'tar' },
      identities: req.identities,
      zstdCommand: req.zstdCommand,
      sup,
      env: req.env,
    });
    // GNU tar: the files become ours (root: chowned after), modes as stored.
    const tar = sup.spawn({
      argv: ['tar', '-x', '-f', '-', '-C', dir, '--no-same-owner', '--same-permissions'],
      env: toolEnv(req.env),
      stdin: 'pipe',
      what: 'tar -x',
      missing: missingTool('tar', 'install GNU tar (apt-get install tar)'),
      // a full disk (or quota) under --to-dir is a storage failure (exit 4), not tar's (exit 3)
      explain: (f) => {
        const full = /No space left on device|Disk quota exceeded/i.exec(f.stderr.text());
        if (!full || f.killedByUs) return undefined;
        return new StorageError('Failed', `unpack into ${dir}: ${full[0].toLowerCase()} (tar -x exited with code ${f.code ?? f.signal}: ${f.stderr.lastLines(1, 200)})`, {
          hint: `free disk space under ${dir} (the restored directory needs about ${m.archive.plainBytes} bytes, the backup's size unpacked), or restore into a larger volume`,
        });
      },
    });
    await Promise.all([pipeline(opened.archive, intoTar(tar.stdin!, tar.done), { signal: sup.signal }), tar.done, ...opened.children.map((c) => c.done)]);
    const s = opened.stats();
    return { storedBytes: s.storedBytes, tarBytes: s.archiveBytes };
  });
}

/**
 * Feeds tar's stdin. tar stops reading at the end-of-archive blocks and exits, but the stream
 * goes on to its last byte (zero padding to the writer's record size), which must still be read:
 * the object is authenticated and its sha256 checked only at its end. After tar closed its
 * input, what follows must be zeros.
 */
function intoTar(stdin: Writable, tarDone: Promise<void>): Writable {
  let closed = false;
  let pending: (() => void) | undefined;
  const onClosed = (): void => {
    closed = true;
    const p = pending;
    pending = undefined;
    p?.();
  };
  stdin.on('error', onClosed); // EPIPE once tar exited; its exit status is what counts
  stdin.on('close', onClosed);
  return new Writable({
    highWaterMark: 1024 * 1024,
    write(chunk: Buffer, _e, cb) {
      if (closed) {
        if (!chunk.some((b) => b !== 0)) cb();
        // tar stopped early because it failed (disk full, …): its error is the cause, not this
        else tarDone.then(() => cb(new IntegrityError('the tar archive has data after its end-of-archive blocks', { hint: 'the object was modified; do not trust this backup' })), cb);
        return;
      }
      if (stdin.write(chunk)) cb();
      else {
        pending = () => cb();
        stdin.once('drain', () => {
          const p = pending;
          pending = undefined;
          p?.();
        });
      }
    },
    final(cb) {
      if (!closed) stdin.end();
      cb();
    },
  });
}

/**
 * The files stored with the backup (`--attach`: a migration script, …), each decrypted to
 * `attachmentsDir/<name>` (refusing to overwrite), its stored sha256 and plaintext sha256 checked
 * before it is committed. Without `attachmentsDir` they are only listed.
 */
async function fetchAttachments(req: PhysicalRestoreRequest, m: PhysicalManifest): Promise<PhysicalRestoreSummary['attachments']> {
  if (req.attachmentsDir === undefined) {
    if (m.attachments.length > 0) req.log.info(`the backup holds ${m.attachments.length} attached file(s): ${m.attachments.map((a) => a.name).join(', ')}; fetch them with --attachments-dir DIR`);
    return m.attachments.map((a) => ({ name: a.name, bytes: a.plainBytes, path: null }));
  }
  const out: PhysicalRestoreSummary['attachments'] = [];
  await fsp.mkdir(req.attachmentsDir, { recursive: true, mode: 0o700 });
  for (const a of m.attachments) {
    const file = path.join(req.attachmentsDir, a.name);
    const tmp = tempPathIn(req.attachmentsDir);
    try {
      const ciphertext = await req.store.getBytes(a.key, { signal: req.signal });
      if (ciphertext.length !== a.size || createHash('sha256').update(ciphertext).digest('hex') !== a.sha256) {
        throw new IntegrityError(`attached file ${a.name}: the stored object does not match its manifest (size or sha256)`, { hint: 'the object was modified or swapped; do not trust it' });
      }
      const { plaintext } = await openDecryptStream(Readable.from([ciphertext]), req.identities);
      const hash = createHash('sha256');
      let n = 0;
      plaintext.on('data', (c: Buffer) => {
        hash.update(c);
        n += c.length;
      });
      await pipeline(plaintext, createWriteStream(tmp, { flags: 'wx', mode: 0o600 }));
      if (n !== a.plainBytes || hash.digest('hex') !== a.plainSha256) throw new IntegrityError(`attached file ${a.name}: its content does not match the manifest`, { hint: 'do not trust it' });
      await commitFile(tmp, file, { exclusive: true });
    } finally {
      await fsp.rm(tmp, { force: true });
    }
    out.push({ name: a.name, bytes: a.plainBytes, path: file });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Recovery

interface RecoveryPlan {
  settings: Record<string, string>;
  describe: string | null;
}

/**
 * recovery_target_time in UTC with a numeric offset (the server reads it at start, before it
 * knows zone abbreviations such as `Z`), and every digit of the seconds' fraction as given:
 * the Date holds milliseconds only, and a commit time printed to the microsecond, cut to the
 * millisecond, would stop recovery before that very commit.
 */
export function targetTimeSetting(t: { time: Date; text: string }): string {
  const fraction = /:\d{2}[.,](\d+)/.exec(t.text)?.[1];
  return `${t.time.toISOString().slice(0, 19).replace('T', ' ')}${fraction ? `.${fraction}` : ''}+00`;
}

async function planRecovery(req: PhysicalRestoreRequest, m: PhysicalManifest): Promise<RecoveryPlan | null> {
  const settings: Record<string, string> = { restore_command: req.restoreCommand, recovery_target_timeline: 'latest' };
  const wal = await listWal(req.store, req.cluster, req.signal);
  // A base backup: the timeline to follow, from the archived history files (not blindly 'latest').
  const timelinePlan = m.kind === 'basebackup' && m.wal ? await planTimeline(req, m, wal) : undefined;
  if (timelinePlan) settings.recovery_target_timeline = timelinePlan.setting;
  else if (req.targetTimeline !== undefined) settings.recovery_target_timeline = String(req.targetTimeline);
  const t = req.target;
  if (t) {
    if (t.kind === 'time') settings.recovery_target_time = targetTimeSetting(t);
    else if (t.kind === 'lsn') settings.recovery_target_lsn = t.lsn;
    else if (t.kind === 'name') settings.recovery_target_name = t.name;
    else settings.recovery_target = 'immediate';
    settings.recovery_target_action = req.targetAction;
    if (timelinePlan) refuseAmbiguousTarget(req, m, wal, timelinePlan, t);
    return { settings, describe: describeTarget(t) };
  }
  // No target: a volume archive starts as it was stopped; a base backup replays the archived WAL
  // beyond it to its end, if there is any.
  if (m.kind !== 'basebackup') {
    // It holds no WAL position to replay from: WAL stored since it was taken is named, not replayed.
    const since = wal.filter((w) => w.lastModified.getTime() >= Date.parse(m.startedAt)).sort((a, b) => a.lastModified.getTime() - b.lastModified.getTime());
    const newest = since[since.length - 1];
    if (newest) {
      req.log.warn(
        `archived WAL was stored after this volume archive (${since.length} file(s), the newest ${newest.file} at ${newest.lastModified.toISOString()}): without a target the directory starts as it was stopped, without what that WAL holds; to roll forward, restore with --target-time or --target-lsn after it`,
      );
    }
    return null;
  }
  const after = archivedWalAfter(wal, m);
  if (after !== undefined && timelinePlan) refuseGap(req, m, wal, timelinePlan);
  if (after === undefined) {
    req.log.info('no archived WAL after this backup: the directory starts at the end of the backup');
    return null;
  }
  req.log.info('archived WAL reaches past this backup: recovery replays it to its end', { newest: after, timeline: timelinePlan?.timeline });
  return { settings, describe: null };
}

/** The timeline recovery follows from a base backup, and the path to it. */
interface TimelinePlan {
  /** recovery_target_timeline. */
  setting: string;
  timeline: number;
  /** Where each timeline of the path begins (segment numbers), from the backup's timeline on. */
  begins: Array<{ timeline: number; fromSegNo: number }>;
  /** The chosen timeline's history (empty for the backup's own). */
  history: HistoryEntry[];
}

/**
 * Reads the archived `.history` files (small; decrypted with the restore's identities) and
 * chooses the timeline to follow: `--target-timeline` when given, else the newest timeline that
 * descends from the backup's timeline at or after the backup's end ({@link chooseTimeline}) —
 * not PostgreSQL's 'latest', which may be a timeline forked before the backup (a copy promoted
 * elsewhere) that this backup cannot reach.
 */
async function planTimeline(req: PhysicalRestoreRequest, m: PhysicalManifest, wal: WalObject[]): Promise<TimelinePlan> {
  const own = m.wal!.timeline;
  const histories = new Map<number, HistoryEntry[]>();
  for (const w of wal) {
    if (!w.file.endsWith('.history')) continue;
    const tl = Number.parseInt(w.file.slice(0, 8), 16);
    if (tl <= own || histories.has(tl)) continue;
    const plain = await decodeWalFile(await req.store.getBytes(w.key, { signal: req.signal }), req.identities, w.sha256, w.key, { env: req.env, signal: req.signal });
    try {
      histories.set(tl, parseHistory(plain.toString('utf8')));
    } catch (err) {
      throw new IntegrityError(`${w.key}: ${(err as Error).message}`, { hint: 'the archived timeline history file is damaged; do not trust this archive' });
    }
  }
  const stop = parseLsn(m.wal!.stopLsn);
  let timeline: number;
  const asked = req.targetTimeline;
  if (asked === undefined) timeline = chooseTimeline(own, stop, histories);
  else if (asked === 'current') timeline = own;
  else if (asked === 'latest') timeline = Math.max(own, ...histories.keys());
  else timeline = asked;
  if (timeline !== own) {
    const h = histories.get(timeline);
    const fork = h?.find((e) => e.timeline === own);
    if (!h || !fork || fork.switchLsn < stop) {
      throw new UsageError(
        h ? `timeline ${timeline} does not descend from this backup's timeline ${own} after the backup's end (${m.wal!.stopLsn}): recovery cannot reach it from this backup` : `timeline ${timeline} has no history file in the archive of cluster ${JSON.stringify(req.cluster)}`,
        { hint: `leave out --target-timeline (coffer chooses), pass --target-timeline current, or choose another backup (coffer list --cluster ${req.cluster})` },
      );
    }
  }
  const history = timeline === own ? [] : histories.get(timeline)!;
  if (asked === undefined && timeline === own && histories.size > 0) {
    const others = [...histories.keys()].sort((a, b) => a - b).join(', ');
    req.log.info(`the archive holds timeline(s) ${others}, none forked from timeline ${own} after this backup's end: recovery stays on timeline ${own}`);
  }
  return { setting: timeline === own ? 'current' : String(timeline), timeline, begins: timelineBegins(own, timeline, history), history };
}

/**
 * A target after the point where the followed timeline forked from the backup's is ambiguous
 * when the parent timeline holds archived WAL past the fork: the parent's state at that time or
 * LSN (the abandoned "mistake", or a split brain's other primary) is not the child's. Refused
 * (exit 2) rather than silently restoring the child's state: `--target-timeline` says which.
 * Not ambiguous: a target before the fork (a time before the parent's segment preceding the
 * switch was stored, an LSN at or before the switch point), or a time after the child's history
 * was archived (its promotion) when the parent archived nothing after that (it was retired).
 */
function refuseAmbiguousTarget(req: PhysicalRestoreRequest, m: PhysicalManifest, wal: WalObject[], plan: TimelinePlan, t: RecoveryTarget): void {
  if (req.targetTimeline !== undefined || plan.timeline === m.wal!.timeline) return;
  if (t.kind !== 'time' && t.kind !== 'lsn') return;
  const own = m.wal!.timeline;
  const fork = plan.history.find((e) => e.timeline === own)!;
  const child = plan.begins[1]!.timeline;
  const forkSeg = plan.begins[1]!.fromSegNo;
  const per = 256; // 16 MiB segments (as the rest of restore assumes)
  const parent = wal.filter((w) => parseSegmentName(w.file)?.timeline === own).map((w) => ({ w, no: parseSegmentName(w.file)!.log * per + parseSegmentName(w.file)!.seg }));
  const beyond = parent.filter((p) => p.no >= forkSeg);
  if (beyond.length === 0) return;
  const hex8 = (n: number): string => n.toString(16).toUpperCase().padStart(8, '0');
  const promotedAt = wal.filter((w) => w.file === `${hex8(child)}.history`).map((w) => w.lastModified.getTime()).sort((x, y) => x - y)[0];
  let ambiguous: boolean;
  if (t.kind === 'lsn') ambiguous = t.value > fork.switchLsn;
  else {
    const at = t.time.getTime();
    const beforeFork = parent.filter((p) => p.no === forkSeg - 1).some((p) => at <= p.w.lastModified.getTime());
    if (beforeFork) ambiguous = false;
    else if (promotedAt !== undefined && at > promotedAt) ambiguous = beyond.some((p) => p.w.lastModified.getTime() > promotedAt);
    else ambiguous = true;
  }
  if (!ambiguous) return;
  const lsn = `${(fork.switchLsn >> 32n).toString(16).toUpperCase()}/${(fork.switchLsn & 0xffffffffn).toString(16).toUpperCase()}`;
  const newest = beyond.map((p) => p.w).sort((x, y) => y.lastModified.getTime() - x.lastModified.getTime())[0]!;
  throw new UsageError(
    `the recovery target ${describeTarget(t)} may lie after timeline ${child} forked from timeline ${own} (at ${lsn}${promotedAt !== undefined ? `, promoted by ${new Date(promotedAt).toISOString()}` : ''}), and timeline ${own} has archived WAL past that point (up to ${newest.file}, stored ${newest.lastModified.toISOString()}): the two timelines hold different states there`,
    { hint: `say which timeline to follow: --target-timeline current (timeline ${own}, the backup's) or --target-timeline ${plan.timeline}` },
  );
}

/**
 * A restore without a target replays the archived WAL "to its end": PostgreSQL stops at the
 * first segment missing from the unbroken run after the backup, promotes, and reports success.
 * Along the timeline path recovery follows (the backup's timeline, then each child from the
 * segment holding its switch point), a segment missing while later ones of the path are stored
 * would silently drop what they hold (or, at a switch segment, stay on the abandoned parent):
 * refused.
 */
function refuseGap(req: PhysicalRestoreRequest, m: PhysicalManifest, wal: WalObject[], plan: TimelinePlan): void {
  const stop = m.wal!.stopSegment;
  const stored = new Set(wal.filter((w) => parseSegmentName(w.file) !== undefined).map((w) => w.file));
  const walk = walkRecoveryPath(stop, plan.begins, stored);
  if (walk.missing === undefined) return;
  const beyond = walk.beyond;
  const via = plan.begins.length > 1 ? ` on the timeline path ${plan.begins.map((b) => b.timeline).join('→')}` : '';
  throw new IntegrityError(
    `the archived WAL of cluster ${JSON.stringify(req.cluster)} has a gap after ${walk.reach}: segment ${walk.missing} is missing${via}; recovery without a target would stop there and promote, and drop what ${beyond.length} later segment(s) up to ${beyond[beyond.length - 1]} hold`,
    { hint: `put ${walk.missing} back (coffer status --cluster ${req.cluster} names the gaps), or accept the loss explicitly: --target-lsn or --target-time before the gap` },
  );
}

/** The newest archived WAL segment after the backup (any timeline at or after its own), if any. */
function archivedWalAfter(wal: WalObject[], m: PhysicalManifest): string | undefined {
  const from = m.wal?.stopSegment.slice(8);
  if (from === undefined) return undefined;
  let newest: string | undefined;
  for (const w of wal) {
    if (!parseSegmentName(w.file)) continue;
    const position = w.file.slice(8);
    if (position <= from) continue;
    if (newest === undefined || position > newest.slice(8)) newest = w.file;
  }
  return newest;
}

function describeTarget(t: RecoveryTarget): string {
  switch (t.kind) {
    case 'time':
      return `time ${t.time.toISOString()}`;
    case 'lsn':
      return `LSN ${t.lsn}`;
    case 'name':
      return `restore point ${JSON.stringify(t.name)}`;
    default:
      return 'the end of the backup (immediate)';
  }
}

/** Appends the recovery settings to postgresql.auto.conf (read last: they win) and creates recovery.signal. */
async function writeRecoveryConfig(dir: string, plan: RecoveryPlan, id: string): Promise<void> {
  const lines = [`# coffer restore --physical (backup ${id}, ${new Date().toISOString()}): recovery settings`];
  for (const [k, v] of Object.entries(plan.settings)) lines.push(`${k} = ${confValue(v)}`);
  await fsp.appendFile(path.join(dir, 'postgresql.auto.conf'), `\n${lines.join('\n')}\n`, { mode: 0o600 });
  await fsp.rm(path.join(dir, 'standby.signal'), { force: true });
  await fsp.writeFile(path.join(dir, 'recovery.signal'), '', { mode: 0o600 });
}

function startHint(dir: string, binDir: string, user: string | undefined, major: number): string {
  const asUser = user ? `sudo -u ${user} ` : '';
  return [
    `start it: ${asUser}${binDir}/pg_ctl -D ${dir} -l ${dir}.log start   (PostgreSQL ${major}; check port, paths and archive_command in its postgresql.conf first: once promoted it archives a new timeline into the same repository, which a copy that is not the new primary must not do)`,
    `into a new Docker volume: docker volume create NEW && docker run --rm -v ${dir}:/from:ro -v NEW:/to alpine sh -c 'cp -a /from/. /to/ && chown -R 999:999 /to'   (999 = postgres in the official image), then mount NEW at /var/lib/postgresql/data of a postgres:${major} container`,
  ].join('\n');
}

