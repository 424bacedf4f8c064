/**
 * The container image, without a Docker engine (none runs in CI, so the image is not built here):
 * the Dockerfile read line by line and held to what README "Container image" says of it: a base
 * pinned by version tag and digest, Debian packages pinned to versions Debian 12 serves, coffer
 * at package.json's version, a numeric non-root user, coffer as the entrypoint, and a build
 * context (COPY sources minus .dockerignore) that a fresh clone provides; the Kubernetes CronJob
 * runs that image as that user and its arguments are accepted by coffer.
 * test/install/install.test.ts performs the image's install (npm pack, npm install -g) and runs
 * the installed coffer as the image's entrypoint would.
 */
import { execFileSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseEnv, runCoffer } from '../harness/cli.js';
import { dockerignore, envOf, execForm, expand, parseDockerfile, parseImageRef, valuesOf, type Dockerfile, type Stage } from '../harness/dockerfile.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const read = (p: string): Promise<string> => fsp.readFile(path.join(REPO, p), 'utf8');

let docker: Dockerfile;
let runtime: Stage;
let build: Stage;
let pkg: { name: string; version: string; engines: { node: string }; files: string[]; bin: Record<string, string> };
let tmp: string;

beforeAll(async () => {
  docker = parseDockerfile(await read('Dockerfile'));
  runtime = docker.stages[docker.stages.length - 1]!;
  build = docker.stages.find((s) => s.name === 'build')!;
  pkg = JSON.parse(await read('package.json')) as typeof pkg;
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-image-'));
});
afterAll(async () => {
  if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
});

/** The `npm install -g --prefix DIR …` of the runtime stage: where coffer lands in the image. */
function installPrefix(): string {
  const run = valuesOf(runtime, 'RUN').find((r) => /\bnpm install -g\b/.test(r));
  const prefix = run && /--prefix (\S+)/.exec(run)?.[1];
  if (!prefix) throw new Error('Dockerfile: no "npm install -g --prefix DIR" in the runtime stage');
  return prefix;
}

/** `USER uid:gid` of the runtime stage, as numbers. */
function imageUser(): { uid: number; gid: number } {
  const users = valuesOf(runtime, 'USER');
  expect(users, 'one USER in the runtime stage').toHaveLength(1);
  const m = /^(\d+):(\d+)$/.exec(users[0]!);
  if (!m) throw new Error(`Dockerfile: USER ${users[0]} is not numeric uid:gid (Kubernetes runAsNonRoot needs a numeric user)`);
  return { uid: Number(m[1]), gid: Number(m[2]) };
}

describe('Dockerfile', () => {
  it('the reader understands the syntax used (continuations, comments, stages, ARG defaults)', () => {
    const d = parseDockerfile('ARG V=1.2\n# c\nFROM img:1@sha256:ab AS one\nRUN a \\\n  # inner comment\n  && b\nFROM one\nENV A=x B=/y\nCMD ["a", "b"]\n');
    expect([...d.args]).toEqual([['V', '1.2']]);
    expect(d.stages.map((s) => [s.from, s.name, s.fromStage])).toEqual([
      ['img:1@sha256:ab', 'one', false],
      ['one', undefined, true],
    ]);
    expect(valuesOf(d.stages[0]!, 'RUN')).toEqual(['a && b']);
    expect(envOf(d.stages[1]!)).toEqual({ A: 'x', B: '/y' });
    expect(execForm(valuesOf(d.stages[1]!, 'CMD')[0]!)).toEqual(['a', 'b']);
    expect(() => execForm('coffer --help')).toThrow();
    expect(expand('coffer-${V}.tgz', d.args)).toBe('coffer-1.2.tgz');
  });

  it('starts from one Node 20 base pinned by exact version tag and digest, satisfying package.json engines', () => {
    const bases = docker.stages.filter((s) => !s.fromStage);
    expect(bases, 'one external base image (later stages start from it)').toHaveLength(1);
    const ref = parseImageRef('Dockerfile', bases[0]!.from);
    expect(ref.repository).toBe('library/node');
    const tag = /^(\d+)\.(\d+)\.(\d+)-bookworm-slim$/.exec(ref.tag ?? '');
    expect(tag, `${ref.ref}: an exact version tag (node:X.Y.Z-bookworm-slim), not a moving one`).not.toBeNull();
    expect(ref.digest, `${ref.ref}: tag and digest`).toMatch(/^sha256:[0-9a-f]{64}$/);
    const [major, minor] = [Number(tag![1]), Number(tag![2])];
    const engines = /^>=(\d+)\.(\d+)$/.exec(pkg.engines.node)!;
    expect(major).toBe(Number(engines[1]));
    expect(minor, `Node ${tag![0]} against engines ${pkg.engines.node}`).toBeGreaterThanOrEqual(Number(engines[2]));
    expect(build, 'a stage named build').toBeDefined();
    expect(docker.stages.indexOf(runtime)).toBeGreaterThan(docker.stages.indexOf(build));
  });

  it('runs as a numeric non-root user that the image creates, with coffer as the entrypoint', () => {
    const { uid, gid } = imageUser();
    expect(uid).toBeGreaterThan(0);
    expect(gid).toBeGreaterThan(0);
    const runs = valuesOf(runtime, 'RUN').join('\n');
    // A passwd entry: libpq asks for the user's name when PGUSER is unset.
    expect(runs).toMatch(new RegExp(`\\bgroupadd\\b[^\\n&]*--gid ${gid}\\b`));
    expect(runs).toMatch(new RegExp(`\\buseradd\\b[^\\n&]*--uid ${uid}\\b[^\\n&]*--gid ${gid}\\b`));
    // The USER comes after the install steps (they need root) and is the last word on it.
    const order = runtime.instructions.map((i) => i.keyword);
    expect(order.lastIndexOf('RUN')).toBeLessThan(order.indexOf('USER'));
    expect(execForm(valuesOf(runtime, 'ENTRYPOINT')[0]!)).toEqual(['coffer']);
    // `coffer` is found on the base image's PATH (/usr/local/bin) where the install puts it.
    expect(`${installPrefix()}/bin`).toBe('/usr/local/bin');
    expect(Object.keys(pkg.bin)).toContain('coffer');
    const cmd = execForm(valuesOf(runtime, 'CMD')[0]!);
    expect(cmd.length).toBeGreaterThan(0);
  });

  it("gives that user a writable HOME and lock directory (coffer's default: $XDG_RUNTIME_DIR/coffer)", () => {
    const { uid, gid } = imageUser();
    const env = envOf(runtime);
    const runs = valuesOf(runtime, 'RUN').join('\n');
    expect(env.HOME).toMatch(/^\//);
    expect(runs).toMatch(new RegExp(`\\buseradd\\b[^\\n&]*--home-dir ${env.HOME}\\b[^\\n&]*--create-home`));
    expect(env.XDG_RUNTIME_DIR, 'XDG_RUNTIME_DIR: the lock directory is its coffer/').toMatch(/^\//);
    // Created for the user and private (coffer refuses a lock directory it does not own).
    expect(runs).toMatch(new RegExp(`\\binstall -d -o ${uid} -g ${gid} -m 0700 ${env.XDG_RUNTIME_DIR}(\\s|$)`));
    expect(env.TMPDIR).toBe('/tmp');
  });

  it('installs postgresql-client-15, zstd and age at exact versions that Debian 12 serves', async (ctx) => {
    const install = valuesOf(runtime, 'RUN').find((r) => /\bapt-get install\b/.test(r));
    expect(install, 'an apt-get install in the runtime stage').toBeDefined();
    expect(install).toContain('--no-install-recommends');
    expect(install).toMatch(/rm -rf \/var\/lib\/apt\/lists\/\*/);
    const command = install!.split('&&').find((seg) => seg.includes('apt-get install'))!;
    const words = command.slice(command.indexOf('apt-get install') + 'apt-get install'.length).trim().split(' ');
    const pins = new Map(words.filter((w) => !w.startsWith('-')).map((w) => w.split('=') as [string, string | undefined]));
    for (const [name, version] of pins) expect(version, `${name}: pinned as ${name}=VERSION`).toMatch(/^[0-9][A-Za-z0-9.+~:-]*$/);
    // The PostgreSQL client's major version matches the one of its package name.
    expect(pins.get('postgresql-client-15')).toMatch(/^15\./);

    const osRelease = await fsp.readFile('/etc/os-release', 'utf8').catch(() => '');
    if (!/^VERSION_CODENAME=bookworm$/m.test(osRelease)) ctx.skip('not a Debian 12 (bookworm) machine: the pinned versions cannot be compared with apt-cache policy here');
    const policy = await execa('apt-cache', ['policy', ...pins.keys()], { reject: false, env: { LANG: 'C' } });
    if (policy.exitCode !== 0) ctx.skip('apt-cache is not available: the pinned versions are not compared with Debian 12');
    const text = String(policy.stdout);
    for (const [name, version] of pins) {
      const section = text.slice(text.indexOf(`${name}:\n`)).split(/\n(?=\S)/)[0]!;
      const table = section.slice(section.indexOf('Version table:'));
      const available = [...table.matchAll(/^\s+(?:\*\*\* )?(\S+) \d+$/gm)].map((m) => m[1]!);
      expect(available, `${name}=${version}: not in apt-cache policy on this Debian 12 machine (a superseded security update? the current candidate is ${/Candidate: (\S+)/.exec(section)?.[1]})`).toContain(version);
    }
  });

  it("installs coffer at package.json's version, from the tarball npm pack names after it", () => {
    const version = docker.args.get('COFFER_VERSION');
    expect(version, 'ARG COFFER_VERSION=… before the first FROM').toBe(pkg.version);
    for (const stage of [build, runtime]) expect(valuesOf(stage, 'ARG'), `${stage.name ?? 'runtime'} stage uses ARG COFFER_VERSION`).toContain('COFFER_VERSION');
    const tarball = `/tmp/${pkg.name}-${pkg.version}.tgz`; // npm pack's file name: <name>-<version>.tgz
    expect(valuesOf(build, 'RUN').map((r) => expand(r, docker.args)).some((r) => r.includes('npm pack --pack-destination /tmp') && r.includes(`test -f "${tarball}"`))).toBe(true);
    expect(valuesOf(runtime, 'COPY').map((c) => expand(c, docker.args))).toContain(`--from=build ${tarball} /tmp/`);
    const install = expand(valuesOf(runtime, 'RUN').find((r) => /\bnpm install -g\b/.test(r))!, docker.args);
    expect(install).toContain(`"${tarball}"`);
    expect(install).toMatch(/npm cache clean --force/);
    expect(expand(valuesOf(runtime, 'LABEL').join(' '), docker.args)).toContain(`org.opencontainers.image.version="${pkg.version}"`);
    // The build stage installs exactly the lockfile's dependencies.
    expect(valuesOf(build, 'RUN').some((r) => /^npm ci\b/.test(r))).toBe(true);
  });

  it('copies only files a fresh clone has and .dockerignore keeps, and all that npm pack needs', async () => {
    const ignored = dockerignore(await read('.dockerignore'));
    // The reader of .dockerignore: root-anchored, directories exclude their contents, ** any depth.
    expect(ignored('node_modules/x/index.js')).toBe(true);
    expect(ignored('src/node_modules')).toBe(false);
    expect(ignored('.git/config')).toBe(true);
    expect(ignored('test/x/y.log')).toBe(true);
    expect(ignored('src/cli/main.ts')).toBe(false);
    expect(dockerignore('*\n!src\n')('src/a.ts')).toBe(false);
    for (const local of ['.git', 'node_modules', 'dist', 'backups', '.coffer-demo', 'coverage']) expect(ignored(local), `.dockerignore leaves out ${local}`).toBe(true);

    const tracked = execFileSync('git', ['ls-files', '-z'], { cwd: REPO, encoding: 'utf8' }).split('\0').filter(Boolean);
    const copied: string[] = [];
    for (const stage of docker.stages) {
      for (const copy of valuesOf(stage, 'COPY')) {
        if (copy.startsWith('--from=')) continue; // from an earlier stage, not the context
        const parts = copy.split(' ').filter((p) => !p.startsWith('--'));
        for (const src of parts.slice(0, -1)) {
          const rel = src.replace(/^\.\//, '').replace(/\/$/, '');
          const files = tracked.filter((f) => f === rel || f.startsWith(`${rel}/`));
          expect(files.length, `COPY ${src}: in git (a fresh clone has it)`).toBeGreaterThan(0);
          expect(files.filter(ignored), `COPY ${src}: .dockerignore leaves these out`).toEqual([]);
          copied.push(rel);
        }
      }
    }
    // What `npm pack` reads: the manifest and lockfile, the compiler's configuration and sources
    // (tsconfig rootDir), and what package.json `files` ships beside dist/ (built in the image).
    const tsconfig = JSON.parse(await read('tsconfig.json')) as { compilerOptions: { rootDir: string; outDir: string } };
    const needed = ['package.json', 'package-lock.json', 'tsconfig.json', 'README.md', 'LICENSE', tsconfig.compilerOptions.rootDir];
    for (const f of pkg.files) if (!f.startsWith('!') && f.replace(/\/$/, '') !== tsconfig.compilerOptions.outDir) needed.push(f.replace(/\/$/, ''));
    for (const n of needed) expect(copied, `the build stage must COPY ${n}`).toContain(n);
    expect(build.instructions.filter((i) => i.keyword === 'COPY').length).toBeGreaterThan(0);
  });
});

describe('deploy/kubernetes/cronjob.yaml and the image', () => {
  let cron: { spec: { jobTemplate: { spec: { template: { spec: any } } } } };
  let configMap: { data: Record<string, string> };
  let header: string;
  beforeAll(async () => {
    const text = await read('deploy/kubernetes/cronjob.yaml');
    header = text.slice(0, text.search(/^apiVersion:/m));
    const objs = parseAllDocuments(text).map((d) => d.toJS() as { kind: string });
    cron = objs.find((o) => o.kind === 'CronJob') as unknown as typeof cron;
    configMap = objs.find((o) => o.kind === 'ConfigMap') as unknown as typeof configMap;
  });

  it("runs the Dockerfile's image, tagged with coffer's version, as its user, calling its coffer", () => {
    const pod = cron.spec.jobTemplate.spec.template.spec;
    const c = pod.containers[0];
    const ref = parseImageRef('cronjob.yaml', c.image as string);
    expect(ref.repository).toBe('coffer');
    expect(ref.tag, `${c.image as string}: tagged with package.json's version`).toBe(pkg.version);
    // The header says how to build that image, and carries no Dockerfile of its own.
    expect(header).toContain(`docker build -t ${ref.registry}/${ref.repository}:${pkg.version} .`);
    expect(header).not.toMatch(/^#\s+(FROM|RUN|COPY|USER)\s/m);
    const { uid, gid } = imageUser();
    expect([pod.securityContext.runAsUser, pod.securityContext.runAsGroup]).toEqual([uid, gid]);
    // `command` replaces the ENTRYPOINT: the same program, by the path the PATH lookup finds.
    expect(c.command).toEqual([`${installPrefix()}/bin/${execForm(valuesOf(runtime, 'ENTRYPOINT')[0]!)[0]!}`]);
  });

  it("passes arguments that coffer accepts, with the ConfigMap's configuration", async () => {
    const args = cron.spec.jobTemplate.spec.template.spec.containers[0].args as string[];
    const mount = (cron.spec.jobTemplate.spec.template.spec.containers[0].volumeMounts as Array<{ name: string; mountPath: string }>).find((m) => m.name === 'config')!;
    // The global options before the command, with the mounted ConfigMap file at a local path.
    const command = args.findIndex((a, i) => !a.startsWith('-') && !(args[i - 1]?.startsWith('--') ?? false));
    expect(command, `a command in ${JSON.stringify(args)}`).toBeGreaterThan(0);
    const dir = await fsp.mkdtemp(path.join(tmp, 'cfg-'));
    await fsp.writeFile(path.join(dir, 'coffer.yaml'), configMap.data['coffer.yaml']!);
    const global = args.slice(0, command).map((a) => (a.startsWith(`${mount.mountPath}/`) ? path.join(dir, a.slice(mount.mountPath.length + 1)) : a));
    expect(global).not.toEqual(args.slice(0, command)); // the config file was found under the mount
    const env = baseEnv({ COFFER_PGPASSWORD: 'example', COFFER_S3_ACCESS_KEY_ID: 'AK', COFFER_S3_SECRET_ACCESS_KEY: 'SK' });
    const show = await runCoffer([...global, 'config', 'show', '--json'], { env, cwd: dir });
    expect(show.code, show.stderr).toBe(0);
    const commands = (JSON.parse(show.stdout) as { commands: Record<string, Record<string, { value: unknown }>> }).commands;
    expect(Object.keys(commands)).toContain(args[command]);
    // The rest of the arguments parse as that command's (help stops before any connection).
    const help = await runCoffer([...global, ...args.slice(command), '--help'], { env, cwd: dir });
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toMatch(new RegExp(`^Usage: coffer ${args[command]!}\\b`));
  });
});
