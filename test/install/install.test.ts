/**
 * coffer as an operator installs it: `npm pack` of the repository (which builds dist/ itself),
 * the tarball's contents, `npm install -g` of that tarball into a temporary prefix with an empty
 * npm cache (runtime dependencies come from the registry, nothing from this repository's
 * node_modules), then the installed `<prefix>/bin/coffer` run directly (shebang, executable bit):
 * --version, keygen, config show, and a backup + restore of a small database on the test cluster.
 * The systemd unit is verified against the installed program at the path the README installs to.
 * The same install is the one the Dockerfile's image performs: the installed coffer is also run
 * as that image's entrypoint would run it (its user, environment and default command; see
 * test/install/image.test.ts for the Dockerfile itself).
 *
 * The pack runs in a copy of the working tree (node_modules linked, not copied): `prepack`
 * removes and rebuilds dist/, which other test files running at the same time execute.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createDatabase, dataFingerprint, dropDatabase, pgFromInject, schemaDump } from '../harness/pg.js';
import { baseEnv, pgEnv, writeIdentityFile } from '../harness/cli.js';
import { envOf, execForm, parseDockerfile, valuesOf } from '../harness/dockerfile.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
/** Where the README installs coffer (`npm install -g --prefix /usr/local …`), as deploy/ calls it. */
const README_PREFIX = '/usr/local';
const pgInfo = inject('pg')!;
const pg = pgFromInject(pgInfo);

/** Top-level entries of the working tree that a fresh clone would not have (build output, local state). */
const NOT_IN_A_CLONE = new Set(['.git', 'node_modules', 'dist', 'backups', '.coffer-demo']);

interface PackResult {
  filename: string;
  size: number;
  unpackedSize: number;
  files: Array<{ path: string; size: number; mode: number }>;
}

let tmp: string;
let tree: string; // the copy that is packed
let prefix: string; // npm's global prefix for the install
let tarball: string;
let pack: PackResult;
let pkg: { name: string; version: string; dependencies: Record<string, string>; devDependencies: Record<string, string> };
const dropLater: string[] = [];

/** Copies directories and regular files (not symlinks, sockets, local state) from `from` to `to`. */
async function copyTree(from: string, to: string, top = true): Promise<void> {
  await fsp.mkdir(to, { recursive: true });
  for (const e of await fsp.readdir(from, { withFileTypes: true })) {
    if (e.name === 'node_modules' || (top && NOT_IN_A_CLONE.has(e.name)) || e.name.endsWith('.log')) continue;
    if (e.isDirectory()) await copyTree(path.join(from, e.name), path.join(to, e.name), false);
    else if (e.isFile()) await fsp.copyFile(path.join(from, e.name), path.join(to, e.name));
  }
}

/** Files under `dir` (relative, `/`-separated). */
async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(path.relative(dir, path.join(e.parentPath, e.name)).split(path.sep).join('/'));
  }
  return out.sort();
}

/** The environment for npm: none of the npm_* variables of an enclosing `npm test`, its own cache. */
function npmEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || /^npm_/i.test(k) || k.startsWith('PG') || k === 'NODE_ENV' || k === 'NODE_OPTIONS') continue;
    env[k] = v;
  }
  return {
    ...env,
    PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    npm_config_cache: path.join(tmp, 'npm-cache'),
    npm_config_update_notifier: 'false',
    npm_config_fund: 'false',
    npm_config_audit: 'false',
  };
}

/** Runs the installed coffer directly (as a shell or systemd would: shebang, PATH lookup of node). */
async function installedCoffer(args: string[], extra: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = baseEnv({ ...extra, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? '/usr/bin:/bin'}`, HOME: path.join(tmp, 'home') });
  const r = await execa(path.join(prefix, 'bin', 'coffer'), args, { env, extendEnv: false, cwd: path.join(tmp, 'work'), reject: false, stdin: 'ignore', timeout: 120_000 });
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-install-'));
  tree = path.join(tmp, 'tree');
  prefix = path.join(tmp, 'prefix');
  await fsp.mkdir(path.join(tmp, 'home'));
  await fsp.mkdir(path.join(tmp, 'work'));
  await fsp.mkdir(path.join(tmp, 'pack'));
  await copyTree(REPO, tree);
  await fsp.symlink(path.join(REPO, 'node_modules'), path.join(tree, 'node_modules'));
  // Left over from an older build: `prepack` must not ship it.
  await fsp.mkdir(path.join(tree, 'dist', 'removed-module'), { recursive: true });
  await fsp.writeFile(path.join(tree, 'dist', 'removed-module', 'stale.js'), 'export {};\n');
  pkg = JSON.parse(await fsp.readFile(path.join(tree, 'package.json'), 'utf8')) as typeof pkg;

  const packed = await execa('npm', ['pack', '--json', '--pack-destination', path.join(tmp, 'pack')], {
    cwd: tree,
    env: npmEnv(),
    extendEnv: false,
    reject: false,
    timeout: 300_000,
  });
  expect(packed.exitCode, `${String(packed.stderr)}\n${String(packed.stdout)}`).toBe(0); // a failed build prints to stdout
  pack = (JSON.parse(String(packed.stdout)) as PackResult[])[0]!;
  tarball = path.join(tmp, 'pack', pack.filename);

  const installed = await execa('npm', ['install', '--global', '--prefix', prefix, '--no-audit', '--no-fund', tarball], {
    cwd: path.join(tmp, 'work'),
    env: npmEnv(),
    extendEnv: false,
    reject: false,
    timeout: 400_000,
  });
  expect(installed.exitCode, String(installed.stderr)).toBe(0);
}, 720_000);

afterAll(async () => {
  for (const db of dropLater) await dropDatabase(pg, db).catch(() => undefined);
  if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
});

describe('the npm package', () => {
  it('holds dist/ (built from src/, nothing stale, no maps), the shell front end of wal-push --async, README, LICENSE and package.json; no tests or bench', async () => {
    const paths = pack.files.map((f) => f.path).sort();
    expect(paths).toContain('dist/cli/main.js');
    expect(paths).toEqual(expect.arrayContaining(['LICENSE', 'README.md', 'package.json']));
    const outside = paths.filter((p) => !p.startsWith('dist/'));
    expect(outside).toEqual(['LICENSE', 'README.md', 'bin/coffer-wal-push-async', 'package.json']);
    expect(paths.filter((p) => /^(test|bench|src|scripts|deploy|docs)\//.test(p) || /\.(ts|map)$/.test(p))).toEqual([]);
    // Exactly one .js per source file: the stale file planted above was cleaned away.
    const sources = (await listFiles(path.join(tree, 'src'))).filter((f) => f.endsWith('.ts'));
    expect(paths.filter((p) => p.startsWith('dist/'))).toEqual(sources.map((f) => `dist/${f.replace(/\.ts$/, '.js')}`).sort());
    expect(pack.size).toBeLessThan(1024 * 1024);
  });

  it('installs <prefix>/bin/coffer: a node script with a shebang, executable, needing only runtime dependencies', async () => {
    const bin = path.join(prefix, 'bin', 'coffer');
    const target = await fsp.realpath(bin);
    expect(target).toBe(path.join(prefix, 'lib', 'node_modules', pkg.name, 'dist', 'cli', 'main.js'));
    expect((await fsp.stat(target)).mode & 0o111).toBe(0o111);
    expect((await fsp.readFile(target, 'utf8')).split('\n', 1)[0]).toBe('#!/usr/bin/env node');

    // Every package the installed code imports is a runtime dependency (not a devDependency).
    const root = path.join(prefix, 'lib', 'node_modules', pkg.name);
    const imported = new Set<string>();
    for (const f of (await listFiles(path.join(root, 'dist'))).filter((x) => x.endsWith('.js'))) {
      const js = await fsp.readFile(path.join(root, 'dist', f), 'utf8');
      const specifiers = [
        ...js.matchAll(/^(?:import|export)\s[^'"]*?\bfrom\s*['"]([^'"\n]+)['"]/gm), // static (tsc: one per line)
        ...js.matchAll(/^import\s*['"]([^'"\n]+)['"]/gm), // side effect only
        ...js.matchAll(/\bimport\(\s*['"]([^'"\n]+)['"]\s*\)/g), // dynamic (the lazily loaded commands)
      ];
      for (const m of specifiers) {
        const spec = m[1]!;
        if (spec.startsWith('.') || spec.startsWith('node:')) continue;
        imported.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
      }
    }
    expect([...imported]).toEqual(expect.arrayContaining(['commander', 'age-encryption', '@aws-sdk/client-s3']));
    for (const name of imported) expect(Object.keys(pkg.dependencies), `dist imports ${name}`).toContain(name);
    // Every module loads from the installed tree (main.js runs the CLI: the next test runs it).
    const modules = (await listFiles(path.join(root, 'dist'))).filter((f) => f.endsWith('.js') && f !== 'cli/main.js');
    const load = await execa(process.execPath, ['--input-type=module', '-e', 'for (const m of JSON.parse(process.argv[1])) await import(m);', JSON.stringify(modules.map((f) => path.join(root, 'dist', f)))], {
      cwd: path.join(tmp, 'work'),
      reject: false,
    });
    expect(load.exitCode, String(load.stderr)).toBe(0);
    // …and the build and test tools were not installed with it.
    for (const dev of ['typescript', 'vitest']) {
      await expect(fsp.access(path.join(root, 'node_modules', dev)), dev).rejects.toThrow();
    }
  });

  it('the installed coffer runs: --version, keygen, config show, backup and restore of a database', async () => {
    const version = await installedCoffer(['--version']);
    expect(version.code, version.stderr).toBe(0);
    expect(version.stdout.trim()).toBe(pkg.version);

    const identity = path.join(tmp, 'work', 'identity.txt');
    const keygen = await installedCoffer(['keygen', '--out', identity]);
    expect(keygen.code, keygen.stderr).toBe(0);
    const recipient = keygen.stdout.trim();
    expect(recipient).toMatch(/^age1[0-9a-z]{58}$/);
    expect((await fsp.stat(identity)).mode & 0o777).toBe(0o600);

    const show = await installedCoffer(['config', 'show']);
    expect(show.code, show.stderr).toBe(0);

    const source = await createDatabase(pg, undefined, 'vault');
    const target = `${source}_restored`;
    dropLater.push(source, target);
    const repo = `file://${path.join(tmp, 'repository')}`;
    const backup = await installedCoffer(['backup', '--to', repo, '--db', source, '--recipient', recipient, '--json'], pgEnv(pgInfo));
    expect(backup.code, backup.stderr).toBe(0);
    const [manifest] = JSON.parse(backup.stdout) as Array<{ database: string }>;
    expect(manifest!.database).toBe(source);

    const restore = await installedCoffer(
      ['restore', '--from', repo, '--db', source, '--identity', identity, '--target-db', target, '--smoke', 'SELECT count(*) FROM vault_status', '--json'],
      pgEnv(pgInfo),
    );
    expect(restore.code, restore.stderr).toBe(0);
    expect(await schemaDump(pg, target)).toEqual(await schemaDump(pg, source));
    expect(await dataFingerprint(pg, target)).toEqual(await dataFingerprint(pg, source));

    // <prefix>/bin/coffer-wal-push-async finds the installed coffer through its own link: a
    // call it cannot answer (no such WAL file) reaches coffer, whose refusal comes back (exit 2).
    const front = path.join(prefix, 'bin', 'coffer-wal-push-async');
    expect((await fsp.stat(await fsp.realpath(front))).mode & 0o111).toBe(0o111);
    const spool = path.join(tmp, 'work', 'spool');
    const r = await execa(front, [spool, 'pg_wal/000000010000000000000001', '--cluster', 'main', '--to', repo, '--recipient', recipient], {
      env: baseEnv({ PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? '/usr/bin:/bin'}` }),
      extendEnv: false,
      cwd: path.join(tmp, 'work'),
      reject: false,
    });
    expect(r.exitCode, String(r.stderr)).toBe(2);
    expect(String(r.stderr)).toMatch(/cannot read .*000000010000000000000001/);
  });

  it('deploy/systemd/coffer-backup.service passes systemd-analyze verify with the installed coffer', async (ctx) => {
    const service = await fsp.readFile(path.join(REPO, 'deploy/systemd/coffer-backup.service'), 'utf8');
    const execStart = /^ExecStart=(\S+)/m.exec(service)?.[1];
    expect(execStart).toBe(`${README_PREFIX}/bin/coffer`);
    const which = await execa('systemd-analyze', ['--version'], { reject: false });
    if (which.exitCode !== 0) ctx.skip('systemd-analyze is not installed (Debian: apt-get install systemd)');
    const dir = path.join(tmp, 'units');
    await fsp.mkdir(dir);
    await fsp.writeFile(path.join(dir, 'coffer-backup.service'), service.replace(`ExecStart=${execStart}`, `ExecStart=${path.join(prefix, 'bin', 'coffer')}`));
    const r = await execa('systemd-analyze', ['verify', path.join(dir, 'coffer-backup.service')], { reject: false, timeout: 60_000 });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(String(r.stderr).trim()).toBe('');
  });
});

describe("the Dockerfile's image, simulated: this install run as its entrypoint", () => {
  /** The image's filesystem paths (HOME, XDG_RUNTIME_DIR, TMPDIR) are rebased under this directory. */
  let root: string;
  let image: { uid: number; gid: number; env: Record<string, string>; entrypoint: string[]; cmd: string[] };
  /** setpriv's arguments to become the image's user (empty when the tests already run as non-root). */
  let asUser: string[] | undefined;
  const roleName = `coffer_image_${process.pid}`;

  beforeAll(async () => {
    const stages = parseDockerfile(await fsp.readFile(path.join(REPO, 'Dockerfile'), 'utf8')).stages;
    const runtime = stages[stages.length - 1]!;
    const [uid, gid] = valuesOf(runtime, 'USER')[0]!.split(':').map(Number) as [number, number];
    image = { uid, gid, env: envOf(runtime), entrypoint: execForm(valuesOf(runtime, 'ENTRYPOINT')[0]!), cmd: execForm(valuesOf(runtime, 'CMD')[0]!) };
    // The install above is the image's (`npm install -g --prefix /usr/local` of the packed tarball).
    expect(valuesOf(runtime, 'RUN').some((r) => r.includes(`npm install -g --prefix ${README_PREFIX} `))).toBe(true);
    root = path.join(tmp, 'image-root');
    const rebase = (p: string): string => path.join(root, p);
    // Parents as in any image (root's, 0755), then the directories as the Dockerfile makes them.
    for (const dir of [image.env.TMPDIR!, image.env.HOME!, image.env.XDG_RUNTIME_DIR!]) await fsp.mkdir(path.dirname(rebase(dir)), { recursive: true, mode: 0o755 });
    await fsp.mkdir(rebase(image.env.TMPDIR!));
    await fsp.chmod(rebase(image.env.TMPDIR!), 0o1777);
    for (const dir of [image.env.HOME!, image.env.XDG_RUNTIME_DIR!]) await fsp.mkdir(rebase(dir), { mode: 0o700 });
    if (process.getuid?.() === 0) {
      const setpriv = await execa('setpriv', ['--version'], { reject: false });
      if (setpriv.exitCode === 0) {
        asUser = ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--clear-groups'];
        // As the Dockerfile does (useradd --create-home, install -d -o -g -m 0700), and the
        // user must reach the installed files (mkdtemp made the test directory root's only).
        for (const dir of [image.env.HOME!, image.env.XDG_RUNTIME_DIR!]) await fsp.chown(rebase(dir), uid, gid);
        await fsp.chmod(tmp, 0o755);
      }
    } else {
      asUser = []; // already not root
    }
  });

  afterAll(async () => {
    await pg.psql(`DROP ROLE IF EXISTS ${roleName};`).catch(() => undefined);
  });

  /** `docker run <image> [args]`, roughly: the entrypoint found on PATH, the image's user and ENV. */
  async function entrypoint(args: string[], extra: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
    const env: Record<string, string> = { PATH: `${path.join(prefix, 'bin')}:${path.dirname(process.execPath)}:/usr/bin:/bin`, LANG: 'C.UTF-8', ...extra };
    for (const [k, v] of Object.entries(image.env)) env[k] = v.startsWith('/') ? path.join(root, v) : v;
    const argv = [...asUser!, ...image.entrypoint, ...args];
    const r = await execa(argv[0]!, argv.slice(1), { env, extendEnv: false, cwd: env.HOME!, reject: false, stdin: 'ignore', timeout: 120_000 });
    return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
  }

  it('with no arguments (the default CMD) prints the usage, as the non-root user', async (ctx) => {
    if (asUser === undefined) ctx.skip('running as root without setpriv (util-linux): cannot run coffer as the image user');
    const r = await entrypoint(image.cmd);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Usage: coffer /);
    // …and setpriv really runs it as the image's uid.
    const [cmd, ...rest] = [...asUser!, 'id', '-u'];
    const id = await execa(cmd!, rest);
    expect(Number(String(id.stdout).trim())).toBe(asUser!.length ? image.uid : process.getuid?.());
  });

  it('backs up a database over TCP with a password file, its locks in $XDG_RUNTIME_DIR/coffer', async (ctx) => {
    if (asUser === undefined) ctx.skip('running as root without setpriv (util-linux): cannot run coffer as the image user');
    // As the CronJob connects: TCP with a password from a file (the socket directory is private).
    const password = `pw-${process.pid}-${Date.now()}`;
    await pg.psql(`CREATE ROLE ${roleName} LOGIN SUPERUSER PASSWORD '${password}';`);
    const secrets = path.join(root, 'run', 'secrets');
    await fsp.mkdir(secrets, { recursive: true });
    const passwordFile = path.join(secrets, 'pgpassword');
    await fsp.writeFile(passwordFile, `${password}\n`, { mode: 0o400 });
    if (process.getuid?.() === 0) await fsp.chown(passwordFile, image.uid, image.gid);
    const { recipient } = await writeIdentityFile(tmp, 'image-identity.txt');
    const db = await createDatabase(pg, undefined, 'vault');
    dropLater.push(db);

    const repo = `file://${path.join(root, image.env.HOME!, 'repository')}`;
    const r = await entrypoint(['backup', '--to', repo, '--db', db, '--recipient', recipient, '--json'], {
      PGHOST: '127.0.0.1',
      PGPORT: String(pgInfo.port),
      PGUSER: roleName,
      COFFER_PGPASSWORD_FILE: passwordFile,
    });
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as Array<{ database: string }>)[0]!.database).toBe(db);
    const lockDir = await fsp.stat(path.join(root, image.env.XDG_RUNTIME_DIR!, 'coffer'));
    expect(lockDir.isDirectory()).toBe(true);
    expect(lockDir.mode & 0o777).toBe(0o700);
    if (process.getuid?.() === 0) expect([lockDir.uid, lockDir.gid]).toEqual([image.uid, image.gid]);
  });
});
