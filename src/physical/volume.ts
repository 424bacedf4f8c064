/**
 * The source of a cold volume archive: `tar -C DIR -cf - .` of a stopped cluster's data
 * directory (or a Docker volume's mount point), or the user's `--tar-command` (e.g. `docker run
 * --rm -v db_data:/data alpine tar -C /data -cf - .`), run without a shell.
 *
 * Checked before: DIR is a data directory (PG_VERSION) whose postmaster is not alive (the PID in
 * postmaster.pid; `kill(pid, 0)`, EPERM meaning alive too). Through --tar-command DIR is not
 * read here, so that check is impossible: the manifest says so. Checked after: a whole tar
 * holding PG_VERSION (the major version recorded) and global/pg_control.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { readdir, lstat } from 'node:fs/promises';
import * as path from 'node:path';
import { UsageError, errnoWords } from '../errors.js';
import { processAlive } from '../ops/lock.js';
import { missingTool, runChild, splitCommand } from '../pg/tools.js';
import { toolEnv } from '../run/supervisor.js';
import type { PhysicalSource, SourceFacts } from './backup.js';

export interface VolumeSourceOptions {
  /** The data directory (read locally unless `tarCommand` is given). */
  dataDir?: string;
  /** `--tar-command`: the command that writes the tar to its stdout instead of local tar. */
  tarCommand?: string;
  env: NodeJS.ProcessEnv;
}

/** `15\n` → 15; `undefined` for anything that is not a major version. */
export function majorOfPgVersion(b: Buffer | undefined): number | undefined {
  const m = b ? /^\s*(\d+)(?:\.(\d+))?\s*$/.exec(b.toString('latin1')) : null;
  if (!m) return undefined;
  // 9.6 and older wrote "9.6"; 10 on a single number.
  return Number(m[1]) >= 10 ? Number(m[1]) : Number(`${m[1]}.${m[2] ?? 0}`);
}

/**
 * The system identifier in pg_control's first 8 bytes, read both little- and big-endian (the
 * file is in the server's byte order): the decimal strings, or `undefined` when too short.
 */
export function controlFileFacts(head: Buffer | undefined): [string, string] | undefined {
  if (!head || head.length < 8) return undefined;
  return [head.readBigUInt64LE(0).toString(), head.readBigUInt64BE(0).toString()];
}

/** Refuses a directory that is not a stopped cluster's; returns its major version and warnings. */
export function checkStoppedDataDir(dir: string): { majorVersion: number; warnings: string[] } {
  let st;
  try {
    st = statSync(dir);
  } catch (err) {
    throw new UsageError(`--data-dir ${dir}: ${errnoWords(err)}`);
  }
  if (!st.isDirectory()) throw new UsageError(`--data-dir ${dir} is not a directory`);
  const versionFile = path.join(dir, 'PG_VERSION');
  let version: Buffer;
  try {
    version = readFileSync(versionFile);
  } catch (err) {
    throw new UsageError(`--data-dir ${dir} is not a PostgreSQL data directory: PG_VERSION: ${errnoWords(err)}`, {
      hint: 'point --data-dir at the directory holding PG_VERSION, base/ and global/ (for Docker: the volume mount point, e.g. /var/lib/docker/volumes/db_data/_data)',
    });
  }
  const majorVersion = majorOfPgVersion(version);
  if (majorVersion === undefined) throw new UsageError(`--data-dir ${dir}: PG_VERSION holds ${JSON.stringify(version.toString('latin1').slice(0, 20))}, not a version`);
  const warnings: string[] = [];
  const pidFile = path.join(dir, 'postmaster.pid');
  if (existsSync(pidFile)) {
    const [pidLine, dirLine] = readFileSync(pidFile, 'utf8').split('\n');
    const pid = Number.parseInt(pidLine ?? '', 10);
    // A server that saw this directory under another path ran elsewhere (a container: its PID is
    // in another namespace), so no PID here tells whether it still runs. A clean shutdown
    // removes postmaster.pid.
    if (dirLine !== undefined && dirLine !== '' && path.resolve(dirLine) !== path.resolve(dir)) {
      throw new UsageError(`${pidFile} was written by a server that saw this directory as ${dirLine} (PID ${pidLine}, in a container?): coffer cannot tell whether it still runs`, {
        hint: 'stop that server (docker compose stop db); a clean shutdown removes postmaster.pid. If it crashed and is not running, start and stop it once, or use --tar-command',
      });
    }
    if (Number.isInteger(pid) && pid > 0 && processAlive(pid)) {
      throw new UsageError(`the cluster in ${dir} is running: postmaster.pid names PID ${pid}, which is alive; a running cluster's directory is not a consistent backup`, {
        hint: `stop it first (pg_ctl stop -D ${dir}, or docker compose stop db), or take an online backup with --physical; if PID ${pid} is not a postmaster (a stale file), check with ps -p ${pid}`,
      });
    }
    warnings.push(`${pidFile} names PID ${Number.isInteger(pid) ? pid : '?'}, which is not running: the cluster was not shut down cleanly, and will run crash recovery when started from this archive`);
  }
  return { majorVersion, warnings };
}

/** Bytes of the regular files below `dir` (for the part size). */
async function treeBytes(dir: string): Promise<number> {
  let total = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) total += (await lstat(p)).size;
    }
  };
  await walk(dir).catch(() => undefined);
  return total;
}

/** Variables a container CLI needs to find its daemon (docker, podman), beside the tools' own. */
const CONTAINER_ENV = /^(DOCKER_|CONTAINER_|XDG_RUNTIME_DIR$|PODMAN_)/;

export function volumeSource(o: VolumeSourceOptions): PhysicalSource {
  const dir = o.dataDir === undefined ? undefined : path.resolve(o.dataDir);
  const argv = o.tarCommand !== undefined ? splitCommand(o.tarCommand) : ['tar', '-C', dir ?? '.', '--numeric-owner', '-cf', '-', '.'];
  const env = toolEnv(o.env);
  if (o.tarCommand !== undefined) for (const [k, v] of Object.entries(o.env)) if (CONTAINER_ENV.test(k) && v !== undefined) env[k] = v;
  const missing = missingTool(o.tarCommand !== undefined ? 'the --tar-command' : 'tar', o.tarCommand !== undefined ? 'check the program named by --tar-command' : 'install GNU tar (apt-get install tar)');
  let localMajor: number | undefined;
  let toolVersion: string | undefined;
  return {
    kind: 'volume',
    hint: o.tarCommand !== undefined ? 'check --tar-command: it must write the whole tar of the data directory to its stdout' : 'check that the data directory stays untouched while it is archived',
    walk: { watch: ['PG_VERSION', 'global/pg_control', 'postmaster.pid', 'backup_label'], keep: { PG_VERSION: 16, 'global/pg_control': 8 } },
    async prepare(signal) {
      const warnings: string[] = [];
      let expectedBytes = 0;
      if (o.tarCommand !== undefined) {
        warnings.push(`the data directory was read through --tar-command (${argv[0]}): coffer could not check that no postmaster was running on it; an archive of a running cluster's directory is not a consistent backup`);
      } else {
        const checked = checkStoppedDataDir(dir!);
        localMajor = checked.majorVersion;
        warnings.push(...checked.warnings);
        expectedBytes = await treeBytes(dir!);
        const v = await runChild(['tar', '--version'], { env, signal, what: 'tar --version' }).catch(() => '');
        toolVersion = v.split('\n')[0] || undefined;
      }
      return { expectedBytes, warnings };
    },
    spawn(sup) {
      return sup.spawn({ argv, env, what: o.tarCommand !== undefined ? `--tar-command ${argv[0]}` : 'tar', missing });
    },
    finish(walk): { problem: string } | SourceFacts {
      if (!walk.seen.has('PG_VERSION')) return { problem: 'the tar holds no PG_VERSION: it is not a PostgreSQL data directory' };
      if (!walk.seen.has('global/pg_control')) return { problem: 'the tar holds no global/pg_control: it is not a whole PostgreSQL data directory' };
      const major = majorOfPgVersion(walk.kept.get('PG_VERSION'));
      if (major === undefined) return { problem: `the tar's PG_VERSION holds ${JSON.stringify(walk.kept.get('PG_VERSION')?.toString('latin1').slice(0, 20))}, not a version` };
      if (localMajor !== undefined && major !== localMajor) return { problem: `the tar's PG_VERSION (${major}) differs from ${dir}/PG_VERSION (${localMajor}): the directory changed while it was archived` };
      const warnings: string[] = [];
      if (o.tarCommand !== undefined && walk.seen.has('postmaster.pid')) {
        warnings.push('the archive holds a postmaster.pid: the cluster was running, or was not shut down cleanly, when it was archived; it will run crash recovery when started, and if it was running the copy may be inconsistent');
      }
      const control = controlFileFacts(walk.kept.get('global/pg_control'));
      return {
        postgres: {
          majorVersion: major,
          // pg_control is in the server's byte order; the archive host is little-endian in practice (x86-64, arm64).
          ...(control ? { systemIdentifier: control[0] } : {}),
          command: argv,
          ...(toolVersion ? { toolVersion } : {}),
        },
        warnings,
      };
    },
  };
}
