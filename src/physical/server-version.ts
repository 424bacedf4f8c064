/** Which PostgreSQL server binaries can start a restored data directory: only the major version that wrote it. */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { UsageError } from '../errors.js';
import { findServerBinDir } from '../demo/server-binaries.js';

export type ServerBinaries = { kind: 'same'; binDir: string } | { kind: 'other'; binDir: string; major: number } | { kind: 'none' };

/** The major version of the `postgres` in `binDir` (`postgres (PostgreSQL) 15.14 (Debian …)` → 15), or `undefined`. */
export function serverMajor(binDir: string): number | undefined {
  const r = spawnSync(join(binDir, 'postgres'), ['--version'], { encoding: 'utf8' });
  const m = /\(PostgreSQL\)\s+(\d+)/.exec(r.stdout ?? '');
  return r.status === 0 && m ? Number(m[1]) : undefined;
}

/**
 * Server binaries for `major`: `binDir` when given (it must hold that major), else
 * /usr/lib/postgresql/<major>/bin, else whatever is installed (reported as another major, so
 * the caller can name both), else none.
 */
export function findServerBinaries(major: number, binDir?: string): ServerBinaries {
  if (binDir !== undefined) {
    const have = serverMajor(binDir);
    if (have === undefined) throw new UsageError(`--pg-bin ${binDir}: no PostgreSQL server (postgres --version failed)`, { hint: `point it at the bin directory of PostgreSQL ${major}, e.g. /usr/lib/postgresql/${major}/bin` });
    return have === major ? { kind: 'same', binDir } : { kind: 'other', binDir, major: have };
  }
  const debian = `/usr/lib/postgresql/${major}/bin`;
  if (existsSync(join(debian, 'postgres')) && serverMajor(debian) === major) return { kind: 'same', binDir: debian };
  let other: string;
  try {
    other = findServerBinDir();
  } catch {
    return { kind: 'none' };
  }
  const have = serverMajor(other);
  if (have === undefined) return { kind: 'none' };
  return have === major ? { kind: 'same', binDir: other } : { kind: 'other', binDir: other, major: have };
}
