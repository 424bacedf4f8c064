/**
 * The configuration layer: precedence flags > env > file > defaults, implemented once for
 * whatever options a command declares (shown on a synthetic command with options coffer does
 * not have), the `…File` / `…_FILE` secret forms, redaction, and the built CLI end to end.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseEnv, runCoffer } from '../harness/cli.js';
import { childSafeEnv, secretVariables, valuesOf, type ConfigLayout } from '../../src/config/layers.js';
import { flag, list, secret, value } from '../../src/config/options.js';
import { count, duration, repository, sql, text } from '../../src/config/parsers.js';
import { defineCommand, type CommandModule } from '../../src/cli/command.js';
import { addOptions, registerCommands, resolveInvocation } from '../../src/cli/program.js';
import { LAYOUT } from '../../src/cli/registry.js';
import { suggestKey } from '../../src/config/suggest.js';
import { passwordInConnectionString, redactConnectionString } from '../../src/config/redact.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-layers-'));
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

/** Per option: the value as given (`raw`) and where it came from. */
type Seen = { opts: Record<string, unknown>; sources: Record<string, string>; values: Record<string, unknown>; secrets: string[] };

const REPO = { key: 'repository', env: 'COFFER_REPOSITORY' };
const GLOBALS = {
  timeout: value('--timeout <duration>', '', duration),
  config: value('--config <file>', '', text, { configurable: false }),
};
/** Commands shaped like coffer's, with options invented here. */
const SYNTHETIC: CommandModule[] = [
  defineCommand({
    name: 'backup',
    summary: '',
    options: {
      to: value('--to <repository>', '', repository, { aliases: [REPO] }),
      dbname: value('--dbname <conninfo>', '', text),
      pgPassword: secret('COFFER_PGPASSWORD'),
      futureFlag: value('--future-flag <duration>', '', duration),
      shelf: list('--shelf <name>', 'repeatable', text),
      probe: list('--probe <sql>', 'repeatable', sql),
      noFrob: flag('--no-frob', ''),
      level: value('--level <n>', 'with a default', count(), { default: '3', showDefault: true }),
    },
    run: () => undefined,
  }),
  defineCommand({
    name: 'restore',
    summary: '',
    options: { from: value('--from <repository>', '', repository, { aliases: [REPO] }), dbname: value('--dbname <conninfo>', '', text), pgPassword: secret('COFFER_PGPASSWORD') },
    run: () => undefined,
  }),
  defineCommand({ name: 'ret check', summary: '', options: { futureFlag: value('--future-flag <duration>', '', duration) }, run: () => undefined }),
];
const SYNTHETIC_LAYOUT: ConfigLayout & { globals: typeof GLOBALS } = { globals: GLOBALS, commands: SYNTHETIC.map((c) => ({ path: c.name.split(' '), options: c.options })) };

/** Runs the synthetic program, wired as main.ts wires coffer's. */
async function runSynthetic(argv: string[], env: Record<string, string>, yaml?: string, inDir?: string): Promise<Seen> {
  const dir = inDir ?? (await fsp.mkdtemp(path.join(tmp, 'syn-')));
  if (yaml !== undefined) await fsp.writeFile(path.join(dir, 'coffer.yaml'), yaml);
  let seen: Seen | undefined;
  const program = new Command('coffer').exitOverride();
  addOptions(program, GLOBALS);
  registerCommands(program, SYNTHETIC, {}, async (m, cmd) => {
    const run = resolveInvocation(program, cmd, m, SYNTHETIC_LAYOUT, env, dir);
    const all = { ...run.resolved, timeout: run.globals.timeout };
    seen = {
      opts: Object.fromEntries(Object.entries(all).map(([k, s]) => [k, s.raw])),
      sources: Object.fromEntries(Object.entries(all).map(([k, s]) => [k, s.source])),
      values: { ...valuesOf(run.resolved) },
      secrets: run.secrets,
    };
  });
  await program.parseAsync(argv, { from: 'user' });
  return seen!;
}

describe('precedence, for options the layer has never heard of', () => {
  const yaml = 'futureFlag: 3h\nshelf: [top]\nbackup:\n  futureFlag: 2h\n  level: 7\n';

  it('flag > COFFER_<COMMAND>_<FLAG> > COFFER_<FLAG> > section > top level > default', async () => {
    const env = { COFFER_FUTURE_FLAG: '5m', COFFER_BACKUP_FUTURE_FLAG: '9m' };
    expect((await runSynthetic(['backup', '--future-flag', '1s'], env, yaml)).opts.futureFlag).toBe('1s');
    const s = await runSynthetic(['backup'], env, yaml);
    expect([s.opts.futureFlag, s.sources.futureFlag]).toEqual(['9m', 'env']);
    expect(s.values.futureFlag).toEqual({ ms: 540_000, text: '9m' });
    expect((await runSynthetic(['backup'], { COFFER_FUTURE_FLAG: '5m' }, yaml)).opts.futureFlag).toBe('5m');
    const f = await runSynthetic(['backup'], {}, yaml);
    expect([f.opts.futureFlag, f.sources.futureFlag]).toEqual(['2h', 'file']);
    expect([f.opts.level, f.sources.level, f.values.level]).toEqual(['7', 'file', 7]);
    expect(f.opts.shelf).toEqual(['top']);
    const d = await runSynthetic(['backup'], {}, 'shelf: x\n');
    expect([d.opts.level, d.sources.level, d.values.level, d.opts.futureFlag]).toEqual(['3', 'default', 3, undefined]);
  });

  it('lists, switches and negated switches from env and file', async () => {
    const e = await runSynthetic(['backup'], { COFFER_SHELF: 'a, b c', COFFER_PROBE: 'SELECT 1\nSELECT count(*) FROM t', COFFER_NO_FROB: 'true' });
    expect(e.opts.shelf).toEqual(['a', 'b', 'c']);
    expect(e.opts.probe).toEqual(['SELECT 1', 'SELECT count(*) FROM t']);
    expect([e.opts.noFrob, e.sources.noFrob]).toEqual([true, 'env']);
    const one = await runSynthetic(['backup'], { COFFER_PROBE: 'SELECT count(*) FROM t' });
    expect(one.opts.probe).toEqual(['SELECT count(*) FROM t']);
    const f = await runSynthetic(['backup'], {}, 'noFrob: false\nshelf: [x, 2]\n');
    expect([f.values.noFrob, (await runSynthetic(['backup', '--no-frob'], {})).values.noFrob, (await runSynthetic(['backup'], {})).values.noFrob]).toEqual([false, true, false]);
    expect(f.opts.shelf).toEqual(['x', '2']);
    // A flag list replaces the configured one; it is not merged with it.
    expect((await runSynthetic(['backup', '--shelf', 'cli'], { COFFER_SHELF: 'env' })).opts.shelf).toEqual(['cli']);
  });

  it('global options take the command section; repository maps to --to and --from', async () => {
    const s = await runSynthetic(['backup'], {}, 'timeout: 1h\nrepository: /r/top\nbackup:\n  timeout: 2h\n');
    expect([s.opts.timeout, s.sources.timeout, s.opts.to]).toEqual(['2h', 'file', '/r/top']);
    expect(s.values.to).toEqual({ kind: 'file', root: '/r/top' });
    expect((await runSynthetic(['restore'], { COFFER_REPOSITORY: '/r/env' }, 'repository: /r/file\n')).opts.from).toBe('/r/env');
    expect((await runSynthetic(['restore'], { COFFER_FROM: '/r/from', COFFER_REPOSITORY: '/r/env' })).opts.from).toBe('/r/from');
  });

  it('a subcommand (`ret check`) reads the section of its top-level command', async () => {
    const s = await runSynthetic(['ret', 'check'], {}, 'futureFlag: 1h\nret:\n  futureFlag: 4h\n  timeout: 5m\n');
    expect([s.opts.futureFlag, s.opts.timeout]).toEqual(['4h', '5m']);
    expect((await runSynthetic(['ret', 'check'], { COFFER_RET_FUTURE_FLAG: '6h' }, 'ret:\n  futureFlag: 4h\n')).opts.futureFlag).toBe('6h');
    // A list where the option takes one value is refused, with its origin.
    await expect(runSynthetic(['restore'], {}, 'dbname: [a, b]\n')).rejects.toThrow('dbname: expected a single value (got a list)');
  });

  it('unknown keys get suggestions from the options actually declared', async () => {
    await expect(runSynthetic(['backup'], {}, 'futureFlg: 1h\n')).rejects.toThrow('futureFlg: unknown setting (did you mean "futureFlag"?)');
    await expect(runSynthetic(['backup'], {}, 'restore:\n  futureFlag: 1h\n')).rejects.toThrow('restore.futureFlag: not a setting of coffer restore');
    await expect(runSynthetic(['backup'], {}, 'backup:\n  futureFlag: 1 hour\n')).rejects.toThrow('backup.futureFlag: invalid duration "1 hour"');
  });
});

describe('secrets', () => {
  it('from …File keys and the …_FILE convention; per-command before shared', async () => {
    const dir = await fsp.mkdtemp(path.join(tmp, 'sec-'));
    await fsp.writeFile(path.join(dir, 'pw'), 'from-a-file\n');
    const f = await runSynthetic(['backup'], {}, 'pgPasswordFile: pw\n', dir);
    expect([f.opts.pgPassword, f.sources.pgPassword]).toEqual(['from-a-file', 'file']);
    // No command here has --s3-endpoint: S3 keys are not settings of this program.
    await expect(runSynthetic(['backup'], {}, 's3SecretAccessKey: x\n')).rejects.toThrow('s3SecretAccessKey: unknown setting');
    expect(f.secrets).toContain('from-a-file');
    const e = await runSynthetic(['backup'], { COFFER_PGPASSWORD_FILE: path.join(dir, 'pw') });
    expect([e.opts.pgPassword, e.sources.pgPassword]).toEqual(['from-a-file', 'env']);
    const scoped = await runSynthetic(['restore'], { COFFER_PGPASSWORD: 'shared', COFFER_RESTORE_PGPASSWORD: 'restore-only' });
    expect(scoped.opts.pgPassword).toBe('restore-only');
    const uri = await runSynthetic(['backup', '--dbname', 'postgresql://u:in-uri-pw@h/db'], {});
    expect(uri.secrets).toContain('in-uri-pw');
  });

  it('children get no S3 secret and no coffer secret variable, but keep PGPASSWORD', () => {
    const env = childSafeEnv(
      {
      PATH: '/bin',
      PGPASSWORD: 'libpq',
      AWS_SECRET_ACCESS_KEY: 'x',
      AWS_SESSION_TOKEN: 'y',
      AWS_REGION: 'r',
      COFFER_PGPASSWORD: 'a',
      COFFER_RESTORE_PGPASSWORD_FILE: '/f',
      COFFER_S3_SECRET_ACCESS_KEY: 'b',
      COFFER_TIMEOUT: '1h',
      },
      secretVariables(LAYOUT),
    );
    expect(env).toEqual({ PATH: '/bin', PGPASSWORD: 'libpq', AWS_REGION: 'r', COFFER_TIMEOUT: '1h' });
  });

  it('redacts passwords in connection strings and URLs', () => {
    expect(redactConnectionString('postgresql://app:s3cr%40t@db:5432/vault?sslmode=require')).toBe('postgresql://app:***@db:5432/vault?sslmode=require');
    expect(redactConnectionString("host=db password='it''s' user=app")).toContain('password=***');
    expect(redactConnectionString("host=db password='a b\\' c' user=app")).toBe('host=db password=*** user=app');
    expect(redactConnectionString('https://hc-ping.com/x?token=abc&x=1')).toBe('https://hc-ping.com/x?token=***&x=1');
    expect(redactConnectionString('host=db user=app')).toBe('host=db user=app');
    expect(passwordInConnectionString('postgresql://app:s3cr%40t@db/vault')).toBe('s3cr@t');
    expect(passwordInConnectionString("host=db password='a b\\' c'")).toBe("a b' c");
    expect(passwordInConnectionString('host=db')).toBe(undefined);
  });

  it('suggests the closest key, and other spellings of the same key', () => {
    const keys = ['keepDaily', 'keepWeekly', 'recipient', 'recipientsFile', 'timeout'];
    expect(suggestKey('keep_daily', keys)).toBe('keepDaily');
    expect(suggestKey('keepWekly', keys)).toBe('keepWeekly');
    expect(suggestKey('recipents', keys)).toBe('recipient');
    expect(suggestKey('zzz', keys)).toBe(undefined);
  });
});

describe('the built CLI', () => {
  // `list` prints the repository it looked in: a precise probe of which source won.
  const where = async (args: string[], env: Record<string, string>, yaml?: string): Promise<string> => {
    const dir = await fsp.mkdtemp(path.join(tmp, 'cli-'));
    if (yaml !== undefined) await fsp.writeFile(path.join(dir, 'coffer.yaml'), yaml);
    // Every candidate exists (a missing repository directory is an error, exit 4).
    for (const d of ['flag', 'env', 'section', 'top', 'backups']) await fsp.mkdir(path.join(dir, d));
    const r = await runCoffer(['list', ...args], { env: baseEnv(env), cwd: dir });
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.trim().replace(`file://${dir}/`, './');
  };
  it('flags > env > file section > file top level > default, for --from', async () => {
    const yaml = 'repository: ./top\nlist:\n  from: ./section\n';
    const results = await Promise.all([
      where(['--from', './flag'], { COFFER_REPOSITORY: './env' }, yaml),
      where([], { COFFER_REPOSITORY: './env' }, yaml),
      where([], {}, yaml),
      where([], {}, 'repository: ./top\n'),
      where([], {}),
    ]);
    expect(results).toEqual(['no backups in ./flag', 'no backups in ./env', 'no backups in ./section', 'no backups in ./top', 'no backups in ./backups']);
  });

  it('--config and COFFER_CONFIG name the file; a missing ./coffer.yaml is fine', async () => {
    const dir = await fsp.mkdtemp(path.join(tmp, 'cfg-'));
    await fsp.writeFile(path.join(dir, 'other.yaml'), 'repository: ./other\n');
    await fsp.mkdir(path.join(dir, 'other'));
    const a = await runCoffer(['--config', 'other.yaml', 'list'], { env: baseEnv(), cwd: dir });
    const b = await runCoffer(['list'], { env: baseEnv({ COFFER_CONFIG: path.join(dir, 'other.yaml') }), cwd: dir });
    expect([a.code, b.code]).toEqual([0, 0]);
    expect(a.stdout).toContain(`no backups in file://${dir}/other`);
    expect(b.stdout).toContain(`no backups in file://${dir}/other`);
    const show = await runCoffer(['config', 'show', '--json'], { env: baseEnv(), cwd: dir });
    expect(show.code).toBe(0);
    expect(JSON.parse(show.stdout).configFile).toBe(null);
  });
});
