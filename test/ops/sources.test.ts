/**
 * Several servers from one configuration (issue 16, item 4): the file's `sources:` (each its own
 * connection, databases and repository, the rest inherited), `backup --all-sources` /
 * `--source NAME`; one source failing does not stop the others, and the run's exit names it.
 */
import * as fsp from 'node:fs/promises';
import * as net from 'node:net';
import { beforeAll, describe, expect, it } from 'vitest';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';

const f = useFixture({ name: 'sources' });
const pg = f.pg;
let dbA: string;
let dbB: string;

/** A TCP port on 127.0.0.1 where nothing listens (bound, then closed). */
async function deadPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

async function writeConfig(name: string, text: string): Promise<string> {
  const file = f.path(name);
  await fsp.writeFile(file, text);
  return file;
}

async function listed(repo: string): Promise<Array<{ id: string; database: string }>> {
  const r = await f.run(['list', '--from', repo, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Array<{ id: string; database: string }>;
}

beforeAll(async () => {
  dbA = await f.database({ fixture: 'vault', prefix: 'src_a' });
  dbB = await f.database({ fixture: 'vault', prefix: 'src_b' });
});

describe('sources: several servers in one configuration', () => {
  it('two sources, one unreachable: the other is backed up, exit non-zero naming the failed one; --source picks one', async () => {
    const port = await deadPort();
    const repoMain = f.path('repo-main');
    const repoDown = f.path('repo-down');
    const config = await writeConfig(
      'two-sources.yaml',
      `recipients: [${f.recipient}]
backup:
  compress: zstd:3
sources:
  main:
    dbname: "host=${pg.host} port=${pg.port} user=${pg.user}"
    db: [${dbA}, ${dbB}]
    repository: ${repoMain}
  down:
    dbname: "host=127.0.0.1 port=${port} user=backup connect_timeout=5"
    db: [app]
    repository: ${repoDown}
`,
    );
    // The environment names another repository: each source's own wins over it.
    const r = await f.run(['--config', config, 'backup', '--all-sources', '--json'], { COFFER_REPOSITORY: f.path('repo-from-env') });
    expect(r.code).toBe(3);
    expect(errorLine(r.stderr)).toMatch(/^1 of 2 sources failed: "down" \(.*(connect|refused).*\); the others were backed up$/);
    const made = JSON.parse(r.stdout) as Array<{ database: string; compression: { kind: string; level?: number } }>;
    expect(made.map((m) => m.database).sort()).toEqual([dbA, dbB].sort());
    // The shared settings apply to every source (the backup: section's compression).
    expect(made.map((m) => m.compression)).toEqual([{ kind: 'zstd', level: 3 }, { kind: 'zstd', level: 3 }]);
    expect((await listed(repoMain)).map((b) => b.database).sort()).toEqual([dbA, dbB].sort());
    expect(await fsp.readdir(repoDown).catch(() => [])).toEqual([]);
    expect(await fsp.readdir(f.path('repo-from-env')).catch(() => [])).toEqual([]);
    const lines = r.stderr.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { source?: string; msg: string });
    expect(lines.some((l) => l.source === 'main' && l.msg === 'source done')).toBe(true);
    expect(lines.some((l) => l.source === 'down' && l.msg.startsWith('source "down" failed: '))).toBe(true);

    const one = await f.run(['--config', config, 'backup', '--source', 'main', '--db', dbA]);
    expect(one.code, one.stderr).toBe(0);
    expect((await listed(repoMain)).filter((b) => b.database === dbA)).toHaveLength(2);
    expect((await listed(repoMain)).filter((b) => b.database === dbB)).toHaveLength(1);

    // A source whose repository directory does not exist (never written, not mounted) fails as
    // such (exit 4), the others are reported.
    const gone = await f.run(['--config', config, 'status', '--all-sources', '--json']);
    expect(gone.code, gone.stderr).toBe(4);
    expect(errorLine(gone.stderr)).toMatch(/^1 of 2 sources failed: "down" \(the repository directory .*repo-down does not exist/);
    expect((JSON.parse(gone.stdout) as Array<{ source: string }>).map((x) => x.source)).toEqual(['main', 'main']);
    await fsp.mkdir(repoDown);

    // status and report walk the same sources: every row names its source.
    const st = await f.run(['--config', config, 'status', '--all-sources', '--json']);
    expect(st.code).toBe(7);
    const rows = JSON.parse(st.stdout) as Array<{ source: string; database: string; id: string | null }>;
    expect(rows.map((x) => `${x.source}/${x.database}`).sort()).toEqual([`down/app`, `main/${dbA}`, `main/${dbB}`].sort());
    expect(errorLine(st.stderr)).toMatch(/^1 of 3 database\(s\) have no backup newer than 26h: down\/app \(none\)/);
    const rep = await f.run(['--config', config, 'report', '--all-sources', '--json']);
    expect(rep.code, rep.stderr).toBe(0);
    const report = JSON.parse(rep.stdout) as { databases: Array<{ source: string; database: string; backups: unknown[] }> };
    expect(report.databases.map((d) => `${d.source}/${d.database}`).sort()).toEqual([`down/app`, `main/${dbA}`, `main/${dbB}`].sort());
    expect(report.databases.find((d) => d.database === dbA)!.backups).toHaveLength(2);

    const unknown = await f.run(['--config', config, 'backup', '--source', 'mian']);
    expect(unknown.code).toBe(2);
    expect(errorLine(unknown.stderr)).toBe('--source mian: no such source in the configuration file (the sources are: main, down)');
  });

  it('refuses what cannot work before anything runs: a bad key in a source, a shared ping URL, no sources', async () => {
    const bad = await writeConfig('bad-source.yaml', `sources:\n  main:\n    dbnmae: "host=x"\n`);
    const r1 = await f.run(['--config', bad, 'backup', '--all-sources']);
    expect(r1.code).toBe(2);
    expect(errorLine(r1.stderr)).toContain('config file ');
    expect(errorLine(r1.stderr)).toContain('sources.main.dbnmae: not a setting a source can have (did you mean "dbname"?)');

    const hook = await writeConfig('hook-in-source.yaml', `sources:\n  main:\n    before: /bin/true\n`);
    const rh = await f.run(['--config', hook, 'backup', '--all-sources']);
    expect(rh.code).toBe(2);
    expect(errorLine(rh.stderr)).toContain('sources.main.before: hooks run once per run, not per source');

    const shared = await writeConfig(
      'shared-ping.yaml',
      `recipients: [${f.recipient}]\nnotify: https://hc-ping.example/abc\nsources:\n  a:\n    repository: ${f.path('repo-a')}\n  b:\n    repository: ${f.path('repo-b')}\n`,
    );
    const r2 = await f.run(['--config', shared, 'backup', '--all-sources']);
    expect(r2.code).toBe(2);
    expect(errorLine(r2.stderr)).toContain('sources "a" and "b" share one --notify URL');

    const none = await writeConfig('no-sources.yaml', `recipients: [${f.recipient}]\n`);
    const r3 = await f.run(['--config', none, 'backup', '--all-sources']);
    expect(r3.code).toBe(2);
    expect(errorLine(r3.stderr)).toContain('--all-sources: the configuration file declares no sources');
  });
});
