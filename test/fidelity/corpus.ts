/**
 * The fidelity corpus: real, publicly available PostgreSQL schemas with data, as Debian 12
 * packages ship them, plus coffer's own additions (test/fixtures/fidelity/<name>/overlay.sql).
 *
 * Nothing of the upstream SQL is committed: {@link ensureCorpusFiles} takes the packages from
 * Debian's archive with `apt-get download` (the package manager's own client) and unpacks them
 * with `dpkg-deb -x` (never installed: no daemon, no maintainer script) into a cache directory
 * that survives between runs. test/fixtures/fidelity/README.md says where each part comes from,
 * its license, and what coffer adds.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { execa } from 'execa';

export interface CorpusSchema {
  /** Short name, also the folder of its overlay under test/fixtures/fidelity/. */
  name: string;
  /** How the source database is created (after `CREATE DATABASE <name>`). */
  createOptions: string;
  /** Upstream SQL files, loaded in this order: [Debian package, path inside the package]. */
  files: Array<[pkg: string, file: string]>;
  /** coffer's additions, loaded after the upstream files. */
  overlay: string;
}

/** Debian packages the corpus is taken from (unpacked, not installed). */
export const CORPUS_PACKAGES = ['ledgersmb', 'zabbix-server-pgsql', 'davical', 'libawl-php'] as const;

const OVERLAYS = new URL('../fixtures/fidelity/', import.meta.url);

export const CORPUS: CorpusSchema[] = [
  {
    // LedgerSMB 1.6 (accounting): 164 tables, inheritance, rules, triggers, plpgsql, seed data
    // (countries, menus, MIME types, …). A UTF8 database with a non-default locale.
    name: 'ledgersmb',
    createOptions: "TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.utf8'",
    files: [['ledgersmb', 'usr/share/ledgersmb/sql/Pg-database.sql']],
    overlay: fileOf(new URL('ledgersmb/overlay.sql', OVERLAYS)),
  },
  {
    // Zabbix 6.0 (monitoring): 173 tables and the 187 images (bytea) Zabbix ships. Loaded into a
    // LATIN1 database: the non-UTF8 member of the corpus.
    name: 'zabbix',
    createOptions: "TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C'",
    files: [
      ['zabbix-server-pgsql', 'usr/share/zabbix-server-pgsql/schema.sql.gz'],
      ['zabbix-server-pgsql', 'usr/share/zabbix-server-pgsql/images.sql.gz'],
    ],
    overlay: fileOf(new URL('zabbix/overlay.sql', OVERLAYS)),
  },
  {
    // DAViCal 1.1 (CalDAV/CardDAV server) on AWL's tables: many plpgsql functions, triggers,
    // rules, base data and supported locales. A database with the server's defaults.
    name: 'davical',
    createOptions: '',
    files: [
      ['libawl-php', 'usr/share/awl/dba/awl-tables.sql'],
      ['libawl-php', 'usr/share/awl/dba/schema-management.sql'],
      ['davical', 'usr/share/davical/dba/davical.sql'],
      ['davical', 'usr/share/davical/dba/caldav_functions.sql'],
      ['davical', 'usr/share/davical/dba/rrule_functions.sql'],
      ['davical', 'usr/share/davical/dba/base-data.sql'],
      ['davical', 'usr/share/davical/dba/supported_locales.sql'],
    ],
    overlay: fileOf(new URL('davical/overlay.sql', OVERLAYS)),
  },
];

function fileOf(u: URL): string {
  return fileURLToPath(u);
}

/** Where the unpacked packages are kept between runs. */
export function corpusCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'coffer-test', 'fidelity-corpus');
}

export interface CorpusFiles {
  /** Root of the unpacked package `pkg`. */
  root(pkg: string): string;
  /** `Package Version` of each package, as downloaded. */
  versions: string[];
}

/**
 * Makes sure the corpus packages are unpacked in the cache (downloading them once) and returns
 * where. When apt has no package lists yet and we are root, runs `apt-get update` once.
 * @throws when a package cannot be downloaded (with apt-get's message).
 */
export async function ensureCorpusFiles(): Promise<CorpusFiles> {
  const cache = corpusCacheDir();
  const key = createHash('sha256').update(CORPUS_PACKAGES.join(' ')).digest('hex').slice(0, 12);
  const dir = path.join(cache, key);
  const stamp = path.join(dir, 'versions.txt');
  if (!fs.existsSync(stamp)) {
    await fsp.mkdir(cache, { recursive: true });
    const work = await fsp.mkdtemp(path.join(cache, 'tmp-'));
    try {
      const download = () =>
        execa('apt-get', ['download', '-qq', ...CORPUS_PACKAGES], { cwd: work, reject: false, all: true, env: { DEBIAN_FRONTEND: 'noninteractive' } });
      let r = await download();
      if (r.exitCode !== 0 && process.getuid?.() === 0) {
        await execa('apt-get', ['update', '-qq'], { reject: false });
        r = await download();
      }
      if (r.exitCode !== 0) throw new Error(`apt-get download ${CORPUS_PACKAGES.join(' ')} failed: ${String(r.all).trim()}`);
      const versions: string[] = [];
      for (const deb of (await fsp.readdir(work)).filter((f) => f.endsWith('.deb')).sort()) {
        const fields = await execa('dpkg-deb', ['-f', path.join(work, deb), 'Package', 'Version']);
        const pkgName = /^Package: (.+)$/m.exec(String(fields.stdout))![1]!;
        versions.push(`${pkgName} ${/^Version: (.+)$/m.exec(String(fields.stdout))![1]!}`);
        await fsp.mkdir(path.join(work, 'unpacked', pkgName), { recursive: true });
        await execa('dpkg-deb', ['-x', path.join(work, deb), path.join(work, 'unpacked', pkgName)]);
        await fsp.rm(path.join(work, deb));
      }
      await fsp.writeFile(path.join(work, 'versions.txt'), `${versions.join('\n')}\n`);
      // Another run may have unpacked the same packages meanwhile: keep the first complete copy.
      await fsp.rename(work, dir).catch((err: unknown) => {
        if (!fs.existsSync(stamp)) throw err;
      });
    } finally {
      await fsp.rm(work, { recursive: true, force: true });
    }
  }
  return {
    root: (pkg) => path.join(dir, 'unpacked', pkg),
    versions: (await fsp.readFile(stamp, 'utf8')).trim().split('\n'),
  };
}

/** The text of an upstream SQL file (gunzipped when it ends in .gz). */
export async function upstreamSql(files: CorpusFiles, pkg: string, file: string): Promise<Buffer> {
  const bytes = await fsp.readFile(path.join(files.root(pkg), file));
  return file.endsWith('.gz') ? gunzipSync(bytes) : bytes;
}
