/** Where the PostgreSQL server binaries (initdb, pg_ctl, postgres) of a throwaway cluster are. */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { DatabaseError } from '../errors.js';

function versionOf(dir: string): number {
  const m = /postgresql\/(\d+)(?:\.(\d+))?\/bin\/?$/.exec(dir);
  return m ? Number(m[1]) * 1000 + Number(m[2] ?? 0) : -1;
}

/**
 * Finds PostgreSQL server binaries: `explicit`, else $COFFER_PG_BIN_DIR, else the newest
 * /usr/lib/postgresql/<N>/bin having initdb, else `pg_config --bindir`.
 */
export function findServerBinDir(explicit?: string): string {
  const hasInitdb = (d: string): boolean => existsSync(join(d, 'initdb')) && existsSync(join(d, 'pg_ctl'));
  const hint = 'install the PostgreSQL server, e.g. `apt-get install postgresql-15` (or `postgresql`), or set COFFER_PG_BIN_DIR';
  for (const [source, dir] of [
    ['binDir option', explicit],
    ['COFFER_PG_BIN_DIR', process.env.COFFER_PG_BIN_DIR],
  ] as const) {
    if (dir === undefined || dir === '') continue;
    if (!hasInitdb(dir)) throw new DatabaseError(`no PostgreSQL server binaries (initdb, pg_ctl) in ${dir} (from ${source})`, { hint });
    return resolve(dir);
  }
  const root = '/usr/lib/postgresql';
  let candidates: string[] = [];
  try {
    candidates = readdirSync(root)
      .map((n) => join(root, n, 'bin'))
      .filter(hasInitdb)
      .sort((a, b) => versionOf(b) - versionOf(a));
  } catch {
    // no Debian-style layout
  }
  if (candidates[0]) return candidates[0];
  const pc = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  const dir = pc.status === 0 ? pc.stdout.trim() : '';
  if (dir && hasInitdb(dir)) return dir;
  throw new DatabaseError('no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin and `pg_config --bindir`)', { hint });
}
