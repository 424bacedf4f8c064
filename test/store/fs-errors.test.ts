/**
 * The file repository's refusals and clean-ups (src/store/fs.ts) that the CLI tests do not reach:
 * invalid keys, a repository path that is not a directory, missing objects, and a write whose
 * producer fails or is aborted (its temporary is removed, the target never appears).
 * Permission errors from file modes are not tested here (the suite runs as root, which ignores
 * them); an immutable file (chattr +i, where the file system has attributes) stands in for EPERM.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StorageError } from '../../src/errors.js';
import { TEMP_PREFIX } from '../../src/atomic-write.js';
import { FsStore } from '../../src/store/fs.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-fs-errors-'));
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

async function caught(p: Promise<unknown>): Promise<StorageError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(StorageError);
    return e as StorageError;
  }
  throw new Error('expected a StorageError');
}

const names = async (dir: string): Promise<string[]> => (await fsp.readdir(dir, { recursive: true })).map(String).sort();

describe('FsStore', () => {
  it('refuses keys that are empty or leave their directory, before touching the disk', async () => {
    const root = path.join(tmp, 'keys');
    const store = new FsStore(root);
    for (const key of ['', 'a//b', '../outside', 'a/./b', 'a/../../b', 'a/']) {
      const e = await caught(store.putBytes(key, Buffer.from('x')));
      expect(e.message).toBe(`invalid object key ${JSON.stringify(key)}`);
      expect((await caught(store.getBytes(key))).message).toBe(`invalid object key ${JSON.stringify(key)}`);
    }
    await expect(fsp.stat(root)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a missing object is NotFound ("no such file"); a key under a file is absent for head', async () => {
    const root = path.join(tmp, 'missing');
    const store = new FsStore(root);
    await store.putBytes('db/a', Buffer.from('a'));
    const e = await caught(store.getBytes('db/b'));
    expect(e.code).toBe('NotFound');
    expect(e.message).toBe(`read ${path.join(root, 'db', 'b')}: no such file`);
    expect((await caught(store.get('db/b'))).code).toBe('NotFound');
    expect(await store.head('db/a/under-a-file')).toBeUndefined();
    expect(await store.head('db/b')).toBeUndefined();
  });

  it('a repository path that is a file: writes fail with the path and the reason, listing finds nothing', async () => {
    const root = path.join(tmp, 'a-file');
    await fsp.writeFile(root, 'not a directory');
    const store = new FsStore(root);
    const e = await caught(store.putBytes('db/x', Buffer.from('x')));
    expect(e.code).toBe('Failed');
    expect(e.message).toMatch(new RegExp(`^create directory ${root}/db: .*(ENOTDIR|EEXIST)`));
    const listed = [];
    for await (const o of store.list('')) listed.push(o);
    expect(listed).toEqual([]);
    expect(await fsp.readFile(root, 'utf8')).toBe('not a directory');
  });

  // Node's mkdir({ recursive: true }) never returns where mkdir fails with ENOENT under a parent
  // that exists (procfs): `backup --to /proc/repo` hung forever. Each level is made on its own now.
  it.each([['/proc/coffer-no-such-repo', 'one level'], ['/proc/coffer-no-such-repo/a/b', 'three levels'], ['/sys/coffer-no-such-repo', 'sysfs']])('a repository where no directory can be made (%s, %s) fails at once', async (root) => {
    const store = new FsStore(root);
    const e = await caught(Promise.race([store.putBytes('db/x', Buffer.from('x')), new Promise((_r, reject) => setTimeout(() => reject(new Error('still running after 10 s')), 10_000))]));
    expect(e.message).toMatch(/^create directory \/(proc|sys)\/coffer-no-such-repo/);
  });

  it('a write whose producer fails keeps the producer\'s error and leaves neither the temporary nor the object', async () => {
    const root = path.join(tmp, 'producer');
    const store = new FsStore(root);
    const boom = new Error('pg_dump exited with status 1');
    const body = Readable.from(
      (async function* () {
        yield Buffer.alloc(64 * 1024, 1);
        throw boom;
      })(),
    );
    await expect(store.putStream('db/x.dump.age', body, { signal: new AbortController().signal, partSize: 8 * 1024 * 1024 })).rejects.toBe(boom);
    expect(await names(root)).toEqual(['db']);
  });

  it('an aborted write is StorageError Aborted and leaves neither the temporary nor the object', async () => {
    const root = path.join(tmp, 'aborted');
    const store = new FsStore(root);
    const ac = new AbortController();
    let sent = 0;
    const body = new Readable({
      read() {
        sent += 1;
        if (sent === 3) ac.abort(new Error('stop'));
        setTimeout(() => this.push(Buffer.alloc(64 * 1024, 2)), 5);
      },
    });
    const e = await caught(store.putStream('db/x.dump.age', body, { signal: ac.signal, partSize: 8 * 1024 * 1024 }));
    expect(e.code).toBe('Aborted');
    expect(e.message).toBe('write db/x.dump.age: aborted');
    expect(await names(root)).toEqual(['db']);
  });

  it.runIf(process.getuid?.() === 0)('run as root, the directories it makes take the owner of the directory they are made in (a repository of the server\'s user stays usable by it)', async () => {
    const root = path.join(tmp, 'owned');
    await fsp.mkdir(root);
    await fsp.chown(root, 4242, 4343);
    const store = new FsStore(root);
    await store.putBytes('cluster=main/monthly/20261203T000000Z-00000001.manifest.json', Buffer.from('{}'));
    for (const d of ['cluster=main', 'cluster=main/monthly']) {
      const st = await fsp.stat(path.join(root, d));
      expect([st.uid, st.gid], d).toEqual([4242, 4343]);
    }
    // Made in a root-owned directory: root's, as before.
    const mine = new FsStore(path.join(tmp, 'root-owned'));
    await mine.putBytes('db/daily/20261203T000000Z-00000001.manifest.json', Buffer.from('{}'));
    expect((await fsp.stat(path.join(tmp, 'root-owned', 'db'))).uid).toBe(0);
  });

  it('a file that cannot be unlinked (immutable: EPERM) is reported with the unlink\'s reason, not as a directory; a missing one is no error', async () => {
    const root = path.join(tmp, 'immutable');
    const store = new FsStore(root);
    const keys = ['db/daily/20200101T000000Z-00000001.dump.zst.age', 'db/daily/20200101T000000Z-00000001.manifest.json', `db/daily/${TEMP_PREFIX}a1b2c3`];
    for (const k of keys) {
      await fsp.mkdir(path.dirname(path.join(root, k)), { recursive: true });
      await fsp.writeFile(path.join(root, k), 'x');
    }
    await store.delete('db/daily/20200101T000000Z-00000002.dump.zst.age'); // missing: nothing to do
    await store.removeTemporary(`db/daily/${TEMP_PREFIX}gone`);
    // chattr +i needs root and a file system with attributes (ext4, xfs; not tmpfs): skipped elsewhere.
    const locked = keys.filter((k) => spawnSync('chattr', ['+i', path.join(root, k)]).status === 0);
    if (locked.length === 0) return;
    try {
      for (const k of locked) {
        const e = await caught(path.basename(k).startsWith(TEMP_PREFIX) ? store.removeTemporary(k) : store.delete(k));
        expect(e.code, k).toBe('AccessDenied');
        expect(e.message, k).toBe(`delete ${k}: permission denied`);
        expect(e.message).not.toMatch(/ENOTDIR|scandir|directory/);
        expect(e.hint).toMatch(/lsattr/);
      }
    } finally {
      for (const k of locked) spawnSync('chattr', ['-i', path.join(root, k)]);
    }
    expect(await names(root)).toEqual(['db', 'db/daily', ...keys.map((k) => k)].sort());
  });

  it('removeTemporary refuses anything that is not a coffer temporary', async () => {
    const root = path.join(tmp, 'temps');
    const store = new FsStore(root);
    await store.putBytes('db/keep', Buffer.from('k'));
    await expect(store.removeTemporary('db/keep')).rejects.toThrow('internal: db/keep is not a temporary');
    await fsp.writeFile(path.join(root, 'db', `${TEMP_PREFIX}abc`), 'partial');
    await store.removeTemporary(`db/${TEMP_PREFIX}abc`);
    expect(await names(root)).toEqual(['db', 'db/keep']);
  });
});
