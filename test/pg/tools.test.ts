/**
 * `--pg-dump-command` and friends are split into words without a shell (src/pg/tools.ts):
 * POSIX quoting is honoured, shell syntax that would need a shell is refused, nothing is expanded.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { resolvePgTools, splitCommand } from '../../src/pg/tools.js';

describe('splitCommand', () => {
  it.each([
    ['pg_dump', ['pg_dump']],
    ['  docker   compose exec -T db pg_dump  ', ['docker', 'compose', 'exec', '-T', 'db', 'pg_dump']],
    ["ssh 'db host' pg_dump", ['ssh', 'db host', 'pg_dump']],
    ["'it''s' x", ['its', 'x']],
    ["''", ['']],
    ['"a b" c', ['a b', 'c']],
    ['"say \\"hi\\" \\\\ \\$HOME \\`x\\`"', ['say "hi" \\ $HOME `x`']],
    ['"keep \\n and \\a"', ['keep \\n and \\a']],
    ['"$"', ['$']],
    ["'$HOME|x;y'", ['$HOME|x;y']],
    ['a\\ b c\\|d', ['a b', 'c|d']],
    ['pre"mid"\'post\' next', ['premidpost', 'next']],
    ['pg_dump # the dump | not a pipe', ['pg_dump']],
    ['pg#dump', ['pg#dump']],
    ['a\tb\nc', ['a', 'b', 'c']],
    ['x \\', ['x', '\\']],
  ])('%j → %j', (input, words) => {
    expect(splitCommand(input)).toEqual(words);
  });

  it.each([
    ['pg_dump | gzip', '|'],
    ['pg_dump && rm -rf /', '&'],
    ['pg_dump; true', ';'],
    ['pg_dump > out', '>'],
    ['pg_dump < in', '<'],
    ['pg_dump `id`', '`'],
    ['pg_dump $PGDATABASE', '$'],
  ])('refuses %j: shell character %j (no shell runs it)', (input, char) => {
    let err: unknown;
    try {
      splitCommand(input);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as UsageError).message).toBe(`command ${JSON.stringify(input)} contains the shell character ${JSON.stringify(char)}`);
    expect((err as UsageError).hint).toBe('coffer runs commands without a shell; put pipelines in a wrapper script');
  });

  it.each([
    ["ssh 'db host pg_dump", `unterminated single quote in command "ssh 'db host pg_dump"`],
    ['ssh "db host pg_dump', 'unterminated double quote in command "ssh \\"db host pg_dump"'],
    ['"ends in backslash\\"', 'unterminated double quote in command "\\"ends in backslash\\\\\\""'],
    ['', 'empty command'],
    ['   ', 'empty command'],
    ['# only a comment', 'empty command'],
  ])('refuses %j', (input, message) => {
    expect(() => splitCommand(input)).toThrow(UsageError);
    expect(() => splitCommand(input)).toThrow(message);
  });
});

describe('resolvePgTools', () => {
  it('takes the programs from PATH by default, from --pg-bin when given, and command prefixes over both', async () => {
    expect(resolvePgTools()).toEqual({ pgDump: ['pg_dump'], pgDumpWrapped: false, pgDumpall: ['pg_dumpall'], pgRestore: ['pg_restore'], psql: ['psql'], psqlWrapped: false });
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-pgbin-'));
    try {
      for (const n of ['pg_dump', 'pg_dumpall', 'pg_restore', 'psql']) await fsp.writeFile(path.join(dir, n), '');
      const tools = resolvePgTools({ binDir: dir, pgDumpCommand: "docker exec -i 'db 1' pg_dump" });
      expect(tools.pgDump).toEqual(['docker', 'exec', '-i', 'db 1', 'pg_dump']);
      // Through a wrapper, the backup reads the whole compressed stream back.
      expect(tools.pgDumpWrapped).toBe(true);
      expect(tools.psqlWrapped).toBe(false);
      // A psql wrapper: a psql per statement, no session kept open (src/pg/admin.ts).
      expect(resolvePgTools({ binDir: dir, psqlCommand: 'docker compose exec -T db psql' })).toMatchObject({ psql: ['docker', 'compose', 'exec', '-T', 'db', 'psql'], psqlWrapped: true });
      expect(tools.pgRestore).toEqual([path.join(dir, 'pg_restore')]);
      await fsp.rm(path.join(dir, 'psql'));
      expect(() => resolvePgTools({ binDir: dir })).toThrow(`--pg-bin ${dir}: psql not found there`);
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});
