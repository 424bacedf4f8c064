/**
 * The ObjectStore contract (src/store/object-store.ts) as one test body, run against every store by
 * test/store/conformance.test.ts: the file store and S3Store on the throwaway Ceph RGW.
 *
 * Where the stores really differ, the difference is a documented trait (see object-store.ts for
 * why), asserted as such: the test fails if a store silently starts or stops doing it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { StorageError, type StorageErrorCode } from '../../src/errors.js';
import type { ObjectStore } from '../../src/store/object-store.js';

const MiB = 1024 * 1024;
/** S3's smallest part (every part but the last): the part size the sweep runs at. */
export const PART = 5 * MiB;

/** One freshly opened, empty store, and how to see what a failed put might have left behind. */
export interface StoreUnderTest {
  store: ObjectStore;
  /** Leftovers no listing shows: temporary files (file store), multipart uploads in progress (S3). */
  leftovers(): Promise<string[]>;
}

/** What differs between stores, by design (object-store.ts says why). */
export interface StoreTraits {
  /** putStream to an existing key: refused with `Exists` (file store) or replaces the object (S3). */
  streamToExistingKey: 'refused' | 'replaces';
  /** get with `start` at or past the end: an empty body (file store) or `Failed` (S3, HTTP 416). */
  startAtOrPastEnd: 'empty' | 'fails';
}

async function rejection(p: Promise<unknown>): Promise<StorageError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(StorageError);
    return e as StorageError;
  }
  throw new Error('expected a StorageError, the call succeeded');
}

async function codeOf(p: Promise<unknown>): Promise<StorageErrorCode> {
  return (await rejection(p)).code;
}

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** `data` in uneven chunks (never aligned with parts). */
function streamOf(data: Buffer): Readable {
  let off = 0;
  let i = 0;
  return new Readable({
    read() {
      if (off >= data.length) return void this.push(null);
      const n = Math.min(data.length - off, 1 + ((++i * 48_271) % (300 * 1024)));
      this.push(data.subarray(off, off + n));
      off += n;
    },
  });
}

/** A stream that sends `bytes` of data, then neither ends nor fails. */
function stallingStream(bytes: number): Readable {
  let sent = 0;
  const chunk = randomBytes(256 * 1024);
  return new Readable({
    read() {
      if (sent >= bytes) return;
      const n = Math.min(chunk.length, bytes - sent);
      sent += n;
      this.push(chunk.subarray(0, n));
    },
  });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const never = (): AbortSignal => new AbortController().signal;

/** Runs `fn` over `items`, at most `limit` at a time. */
async function bounded<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/**
 * Defines the conformance tests for one store. `open` gives a fresh, empty store each time (and
 * is called once per test); the store is closed by the test.
 */
export function objectStoreConformance(name: string, traits: StoreTraits, open: () => Promise<StoreUnderTest>): void {
  const withStore = (fn: (s: StoreUnderTest) => Promise<void>) => async (): Promise<void> => {
    const s = await open();
    try {
      await fn(s);
    } finally {
      s.store.close();
    }
  };

  describe(`ObjectStore contract: ${name}`, () => {
    it(
      'putStream and putBytes store 0, 1, part − 1, part and part + 1 bytes whole; head, get, getBytes and list agree',
      withStore(async ({ store, leftovers }) => {
        expect(store.location).not.toBe('');
        const sizes = [0, 1, PART - 1, PART, PART + 1];
        await Promise.all(
          sizes.map(async (size) => {
            const data = randomBytes(size);
            let progress = 0;
            const r = await store.putStream(`sizes/stream-${size}`, streamOf(data), { signal: never(), partSize: PART, queueSize: 2, onProgress: (b) => (progress = b) });
            expect(r.size).toBe(size);
            expect(progress).toBe(size);
            await store.putBytes(`sizes/bytes-${size}`, data);
            for (const key of [`sizes/stream-${size}`, `sizes/bytes-${size}`]) {
              expect(await store.head(key)).toEqual({ size });
              const got = await store.get(key);
              expect(got.size).toBe(size);
              expect(sha(await readAll(got.body))).toBe(sha(data));
              expect(sha(await store.getBytes(key))).toBe(sha(data));
            }
          }),
        );
        const listed = [];
        for await (const o of store.list('sizes/')) listed.push(o);
        expect(listed.map((o) => o.key).sort()).toEqual(sizes.flatMap((n) => [`sizes/bytes-${n}`, `sizes/stream-${n}`]).sort());
        for (const o of listed) {
          expect(o.size).toBe(Number(/-(\d+)$/.exec(o.key)![1]));
          expect(o.lastModified.getTime()).toBeGreaterThan(Date.now() - 3600_000);
        }
        expect(await leftovers()).toEqual([]);
      }),
    );

    it(
      'putBytes is write-once: a taken key (by either put) is refused with Exists and keeps its object',
      withStore(async ({ store, leftovers }) => {
        const first = randomBytes(100);
        await store.putBytes('once/bytes', first);
        expect(await codeOf(store.putBytes('once/bytes', randomBytes(100)))).toBe('Exists');
        expect(await codeOf(store.putBytes('once/bytes', Buffer.alloc(0)))).toBe('Exists');
        expect(sha(await store.getBytes('once/bytes'))).toBe(sha(first));

        const streamed = randomBytes(PART + 1);
        await store.putStream('once/stream', streamOf(streamed), { signal: never(), partSize: PART });
        expect(await codeOf(store.putBytes('once/stream', randomBytes(10)))).toBe('Exists');
        expect(sha(await store.getBytes('once/stream'))).toBe(sha(streamed));
        expect(await leftovers()).toEqual([]);
      }),
    );

    it(
      `putStream to a taken key: ${traits.streamToExistingKey === 'refused' ? 'refused with Exists, the object kept' : 'the object replaced whole (not write-once on this store, see object-store.ts)'}`,
      withStore(async ({ store, leftovers }) => {
        // One stream that fits in one part (a single PutObject on S3) and one multipart stream.
        for (const size of [10, PART + 1]) {
          const key = `once/stream-${size}`;
          const first = randomBytes(size);
          const second = randomBytes(size);
          await store.putBytes(key, first);
          const put = store.putStream(key, streamOf(second), { signal: never(), partSize: PART });
          if (traits.streamToExistingKey === 'refused') {
            expect(await codeOf(put)).toBe('Exists');
            expect(sha(await store.getBytes(key))).toBe(sha(first));
          } else {
            expect(await put).toEqual({ size });
            expect(sha(await store.getBytes(key))).toBe(sha(second));
          }
          expect(await store.head(key)).toEqual({ size });
        }
        expect(await leftovers()).toEqual([]);
      }),
    );

    it(
      'an aborted or failed putStream leaves nothing: no object, no temporary, no multipart upload',
      withStore(async ({ store, leftovers }) => {
        // Aborted before it starts.
        const early = new AbortController();
        early.abort();
        expect(await codeOf(store.putStream('abort/early', streamOf(randomBytes(1000)), { signal: early.signal, partSize: PART }))).toBe('Aborted');

        // Aborted mid-stream, once more than a part was accepted (S3: the multipart upload exists).
        for (const [key, queueSize] of [['abort/mid-q1', 1], ['abort/mid-q3', 3]] as const) {
          const ac = new AbortController();
          const put = store.putStream(key, stallingStream(3 * PART), {
            signal: ac.signal,
            partSize: PART,
            queueSize,
            onProgress: (b) => {
              if (b > PART) ac.abort();
            },
          });
          // The file store counts bytes as they are written; S3 once parts are acknowledged.
          const watchdog = setTimeout(() => ac.abort(), 20_000);
          expect(await codeOf(put)).toBe('Aborted');
          clearTimeout(watchdog);
        }

        // The producer fails mid-stream: its own error comes back.
        let sent = 0;
        const failing = new Readable({
          read() {
            if (sent >= PART + 4096) return void this.destroy(new Error('producer failed'));
            sent += 64 * 1024;
            this.push(randomBytes(64 * 1024));
          },
        });
        await expect(store.putStream('abort/failed', failing, { signal: never(), partSize: PART })).rejects.toThrow('producer failed');
        // …and one that fails at once, before the store has its temporary open (a race the file
        // store lost: the temporary appeared after its removal), many times over.
        for (let i = 0; i < 40; i++) {
          const instant = new Readable({
            read() {
              this.destroy(new Error('producer failed at once'));
            },
          });
          await expect(store.putStream(`abort/instant-${i}`, instant, { signal: never(), partSize: PART })).rejects.toThrow('producer failed at once');
        }

        // An aborted small put.
        const ac = new AbortController();
        ac.abort();
        await rejection(store.putBytes('abort/bytes', randomBytes(10), { signal: ac.signal }));

        for (const key of ['abort/early', 'abort/mid-q1', 'abort/mid-q3', 'abort/failed', 'abort/bytes', 'abort/instant-0', 'abort/instant-39']) expect(await store.head(key)).toBeUndefined();
        const listed = [];
        for await (const o of store.list('')) listed.push(o.key);
        expect(listed).toEqual([]);
        expect(await leftovers()).toEqual([]);
        // Nothing was left under the keys: they can be written now.
        await store.putBytes('abort/mid-q1', Buffer.from('after'));
        expect((await store.getBytes('abort/mid-q1')).toString()).toBe('after');
      }),
    );

    it(
      'a missing key: get and getBytes fail with NotFound, head is undefined, delete succeeds, list is empty',
      withStore(async ({ store }) => {
        await store.putBytes('present/a', Buffer.from('a'));
        for (const key of ['missing', 'present/b', 'absent/dir/x']) {
          expect(await codeOf(store.get(key))).toBe('NotFound');
          expect(await codeOf(store.getBytes(key))).toBe('NotFound');
          expect(await codeOf(store.get(key, { start: 1 }))).toBe('NotFound');
          expect(await store.head(key)).toBeUndefined();
          await store.delete(key);
        }
        const listed = [];
        for await (const o of store.list('absent/')) listed.push(o.key);
        expect(listed).toEqual([]);

        // Delete removes; deleting again is still fine; the key can be written again.
        await store.delete('present/a');
        expect(await store.head('present/a')).toBeUndefined();
        await store.delete('present/a');
        await store.putBytes('present/a', Buffer.from('again'));
        expect((await store.getBytes('present/a')).toString()).toBe('again');
      }),
    );

    it(
      `ranged get: from the first, a middle, the last byte and across a part boundary, open-ended and bounded; at or past the end ${traits.startAtOrPastEnd === 'empty' ? 'an empty body' : 'fails'}`,
      withStore(async ({ store }) => {
        const small = randomBytes(1000);
        const big = randomBytes(PART + 1);
        await store.putBytes('range/small', small);
        await store.putStream('range/big', streamOf(big), { signal: never(), partSize: PART });
        const cases: Array<[string, Buffer, number]> = [
          ['range/small', small, 0],
          ['range/small', small, 1],
          ['range/small', small, 500],
          ['range/small', small, 999],
          ['range/big', big, 1],
          ['range/big', big, PART - 1],
          ['range/big', big, PART],
        ];
        for (const [key, data, start] of cases) {
          const got = await store.get(key, { start });
          expect(got.size).toBe(data.length - start);
          expect(sha(await readAll(got.body))).toBe(sha(data.subarray(start)));
        }
        // Bounded ranges [start, end): one byte, a chunk's worth inside, up to the last byte, across a part boundary.
        const bounded: Array<[string, Buffer, number, number]> = [
          ['range/small', small, 0, 1],
          ['range/small', small, 17, 18],
          ['range/small', small, 100, 700],
          ['range/small', small, 999, 1000],
          ['range/small', small, 0, 1000],
          ['range/big', big, PART - 10, PART + 1],
          ['range/big', big, 1, PART],
          ['range/big', big, PART, PART + 1],
        ];
        for (const [key, data, start, end] of bounded) {
          const got = await store.get(key, { start, end });
          expect(got.size).toBe(end - start);
          expect(sha(await readAll(got.body))).toBe(sha(data.subarray(start, end)));
        }
        for (const start of [1000, 1001, 5000]) {
          if (traits.startAtOrPastEnd === 'empty') {
            const got = await store.get('range/small', { start });
            expect((await readAll(got.body)).length).toBe(0);
          } else {
            expect(await codeOf(store.get('range/small', { start }))).toBe('Failed');
          }
        }
      }),
    );

    it(
      'list returns every key past 1,000 (S3 pages), under whole and partial prefixes, and nothing outside',
      withStore(async ({ store }) => {
        const N = 1_003;
        const keys = Array.from({ length: N }, (_, i) => `many/${String(i).padStart(4, '0')}`);
        await bounded(keys, 24, (k) => store.putBytes(k, Buffer.from(k)));
        await store.putBytes('many-not/x', Buffer.from('x'));
        await store.putBytes('other/deep/y', Buffer.from('y'));

        const all: string[] = [];
        for await (const o of store.list('many/')) {
          all.push(o.key);
          expect(o.size).toBe(9);
        }
        expect(all.length).toBe(N);
        expect(all.sort()).toEqual(keys);

        const partial: string[] = [];
        for await (const o of store.list('many/100')) partial.push(o.key);
        expect(partial.sort()).toEqual(['many/1000', 'many/1001', 'many/1002']);

        const everything: string[] = [];
        for await (const o of store.list('')) everything.push(o.key);
        expect(everything.length).toBe(N + 2);
        expect(everything).toContain('other/deep/y');
        expect(everything).toContain('many-not/x');
      }),
    );
  });
}
