/**
 * S3Store.putStream through MultipartWriter (src/store/s3/multipart.ts), against the throwaway RGW:
 * sizes around the part boundaries, uneven chunking, a single buffer pool (queue 1), the bytes
 * read back identical, the part count S3 reports, and no upload left behind.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { S3Store } from '../../src/store/s3/store.js';
import { startFaultProxy, type S3Op } from '../harness/fault-proxy.js';
import { createTestBucket, listMultipartUploads, s3ClientFor } from '../harness/rgw.js';

const MiB = 1024 * 1024;
const PART = 5 * MiB;
const rgw = inject('rgw')!;
let admin: S3Client;
let bucket: string;
let store: S3Store;

beforeAll(async () => {
  admin = s3ClientFor(rgw, rgw.admin);
  bucket = await createTestBucket(admin);
  store = new S3Store({ bucket, prefix: 'mp', endpoint: rgw.endpoint, region: rgw.region, credentials: rgw.admin });
});
afterAll(() => {
  store?.close();
  admin?.destroy();
});

/** `data` as a stream of uneven chunks (1 byte up to ~200 KiB), so parts never align with chunks. */
function unevenStream(data: Buffer): Readable {
  let off = 0;
  let i = 0;
  return new Readable({
    read() {
      if (off >= data.length) return void this.push(null);
      const n = Math.min(data.length - off, i++ % 7 === 0 ? 1 : 1 + ((i * 48_271) % (200 * 1024)));
      this.push(data.subarray(off, off + n));
      off += n;
    },
  });
}

async function readBack(key: string): Promise<Buffer> {
  const { body } = await store.get(key);
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe.concurrent('multipart upload at part boundaries', () => {
  const sizes: Array<[string, number, number]> = [
    ['empty', 0, 1],
    ['one byte', 1, 1],
    ['one part less a byte', PART - 1, 1],
    ['exactly one part', PART, 1],
    ['one part and a byte', PART + 1, 2],
    ['exactly two parts', 2 * PART, 2],
    ['five and a half parts', 5.5 * PART, 6],
  ];
  for (const [name, size, parts] of sizes) {
    for (const queueSize of [1, 4]) {
      it(`${name} (${size} bytes), queue ${queueSize}: stored identical, ${parts === 1 ? 'one PutObject' : `${parts} parts`}, nothing left`, async () => {
        const data = randomBytes(size);
        const key = `b/${size}-${queueSize}.bin`;
        let progress = 0;
        const r = await store.putStream(key, unevenStream(data), { signal: new AbortController().signal, partSize: PART, queueSize, onProgress: (b) => (progress = b) });
        expect(r.size).toBe(size);
        expect(progress).toBe(size);
        const back = await readBack(key);
        expect(createHash('sha256').update(back).digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
        const head = await admin.send(new HeadObjectCommand({ Bucket: bucket, Key: `mp/${key}` }));
        expect(head.ContentLength).toBe(size);
        // A multipart object's ETag ends in "-<parts>"; a single PutObject's is a plain MD5.
        const etagParts = /-(\d+)"?$/.exec(head.ETag ?? '')?.[1];
        expect(etagParts === undefined ? 1 : Number(etagParts)).toBe(parts);
        if (parts === 1) expect(etagParts).toBeUndefined();
        expect(await listMultipartUploads(admin, bucket, `mp/${key}`)).toEqual([]);
      });
    }
  }

  it('a producer error mid-stream: the upload is aborted, nothing stored, the producer error is reported', async () => {
    const key = 'b/broken.bin';
    let sent = 0;
    const body = new Readable({
      read() {
        if (sent >= 3 * PART) return void this.destroy(new Error('producer failed'));
        sent += MiB;
        this.push(randomBytes(MiB));
      },
    });
    await expect(store.putStream(key, body, { signal: new AbortController().signal, partSize: PART, queueSize: 2 })).rejects.toThrow('producer failed');
    expect(await store.head(key)).toBeUndefined();
    expect(await listMultipartUploads(admin, bucket, `mp/${key}`)).toEqual([]);
  });

  it('aborted by the signal mid-stream: nothing stored, no upload left, "aborted"', async () => {
    const key = 'b/aborted.bin';
    const ac = new AbortController();
    let sent = 0;
    const body = new Readable({
      read() {
        sent += MiB;
        if (sent === 12 * MiB) ac.abort();
        this.push(sent > 40 * MiB ? null : randomBytes(MiB));
      },
    });
    await expect(store.putStream(key, body, { signal: ac.signal, partSize: PART, queueSize: 2 })).rejects.toThrow(/aborted/);
    expect(await store.head(key)).toBeUndefined();
    expect(await listMultipartUploads(admin, bucket, `mp/${key}`)).toEqual([]);
  });

  // The request that makes the object (CompleteMultipartUpload, or the one PutObject of a small
  // stream) reached the server, which stored the object, and its answer was withheld; then the
  // run was stopped. A failed put must still leave nothing: the object it made is removed.
  const cases: Array<{ name: string; op: S3Op; put: (s: S3Store, key: string, signal: AbortSignal) => Promise<unknown> }> = [
    { name: 'putStream', op: 'CompleteMultipartUpload', put: (s, key, signal) => s.putStream(key, unevenStream(randomBytes(3 * PART + 77)), { signal, partSize: PART, queueSize: 2 }) },
    { name: 'putStream', op: 'PutObject', put: (s, key, signal) => s.putStream(key, unevenStream(randomBytes(PART - 1)), { signal, partSize: PART, queueSize: 2 }) },
    { name: 'putComposed', op: 'CompleteMultipartUpload', put: (s, key, signal) => s.putComposed(key, randomBytes(PART), { signal, source: { key: 'b/compose-source.bin', start: 1000, end: 2 * PART } }) },
  ];
  for (const c of cases) {
    it(`${c.name}, aborted while its ${c.op} is in flight, after the server stored the object: nothing left`, async () => {
      const key = `b/commit-${c.name}-${c.op}.bin`;
      if (c.name === 'putComposed') await store.putBytes('b/compose-source.bin', randomBytes(2 * PART));
      const proxy = await startFaultProxy(rgw.endpoint);
      const viaProxy = new S3Store({ bucket, prefix: 'mp', endpoint: proxy.endpoint, region: rgw.region, credentials: rgw.admin });
      try {
        proxy.script([{ op: c.op, fault: { kind: 'lost-answer', how: 'stall' } }]);
        const ac = new AbortController();
        const put = c.put(viaProxy, key, ac.signal);
        put.catch(() => undefined);
        // The server has the object (its commit answered, the answer dropped by the proxy).
        for (let i = 0; i < 600 && !(proxy.fired(0) === 1 && (await store.head(key)) !== undefined); i++) await new Promise((r) => setTimeout(r, 50));
        expect(await store.head(key)).toMatchObject({ size: expect.any(Number) });
        ac.abort();
        await expect(put).rejects.toThrow(/aborted/);
        expect(await store.head(key)).toBeUndefined();
        expect(await listMultipartUploads(admin, bucket, `mp/${key}`)).toEqual([]);
      } finally {
        viaProxy.close();
        await proxy.stop();
      }
    });
  }
});
