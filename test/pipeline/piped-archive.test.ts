/**
 * A whole restore pipes the archive to pg_restore from the moment the backup is open, and asks
 * for the archive's table of contents meanwhile (the scratch database's encoding and locale,
 * then the checks' tables). Reading ahead of a piped stream would hand its consumer the bytes
 * read twice (a read emits them to it, then they are put back): whenever the table of contents
 * is asked for, the consumer must get the archive exactly, once.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { beforeAll, describe, expect, it } from 'vitest';
import { openArchive, type OpenedArchive } from '../../src/pipeline/archive.js';
import { Supervisor } from '../../src/run/supervisor.js';
import { useFixture } from '../harness/fixture.js';
import { childEnv } from '../harness/pg.js';

const f = useFixture({ name: 'piped-archive', db: { fixture: 'empty', prefix: 'piped' } });
const TABLES = 400;
let dump: Buffer;
let encrypted: string;
let identities: string[];

beforeAll(async () => {
  // A table of contents of ~1,200 entries (~250 KB): longer than every buffer between the check and the consumer.
  const sql: string[] = [];
  for (let i = 0; i < TABLES; i++) sql.push(`CREATE TABLE t${i} (id int PRIMARY KEY, v text); INSERT INTO t${i} VALUES (1, 'x${i}');`);
  await f.pg.psql(sql.join('\n'), f.db);
  const r = await execa(path.join(f.pg.binDir, 'pg_dump'), ['-Fc', '-Z0', '-d', f.db], { env: childEnv(f.pg), encoding: 'buffer' });
  dump = Buffer.from(r.stdout);
  const plain = f.path('archive.dump');
  await fsp.writeFile(plain, dump);
  encrypted = f.path('archive.dump.age');
  await execa('age', ['-r', f.recipient, '-o', encrypted, plain]);
  identities = (await fsp.readFile(f.identityFile, 'utf8')).split('\n').filter((l) => l.startsWith('AGE-SECRET-KEY-'));
});

/** Pipes the opened archive to a consumer that takes one chunk per turn of the event loop; `ask` runs once it has taken `after` chunks. */
async function pipeAndAsk(after: number, ask: (opened: OpenedArchive) => Promise<unknown>): Promise<{ got: Buffer; asked: unknown }> {
  const sup = new Supervisor();
  const opened = await openArchive({ ciphertext: createReadStream(encrypted), identities, sup, env: process.env });
  const chunks: Buffer[] = [];
  let asked: Promise<unknown> | undefined;
  const consumer = new Writable({
    highWaterMark: 16 * 1024,
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      if (chunks.length === after) asked = ask(opened);
      setImmediate(cb);
    },
  });
  const piped = pipeline(opened.archive, consumer);
  if (after === 0) asked = ask(opened);
  await piped;
  await sup.teardown();
  if (!asked) throw new Error(`the archive passed in ${chunks.length} chunks, not ${after}`);
  return { got: Buffer.concat(chunks), asked: await asked };
}

describe('the table of contents asked for while the archive is piped', () => {
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

  for (const after of [0, 1, 2, 3]) {
    it(`after ${after} chunks taken: the consumer gets the archive exactly, and the entries are all there`, async () => {
      const whole = await pipeAndAsk(after, (o) => o.tocEntries());
      expect(whole.got.length).toBe(dump.length);
      expect(sha(whole.got)).toBe(sha(dump));
      const entries = whole.asked as Awaited<ReturnType<OpenedArchive['tocEntries']>>;
      expect(entries!.filter((e) => e.desc === 'TABLE')).toHaveLength(TABLES);

      const head = await pipeAndAsk(after, (o) => Promise.all([o.creationEntries!(), o.databaseEntries()]));
      expect(sha(head.got)).toBe(sha(dump));
      const [creation, database] = head.asked as [Array<{ desc: string }>, Array<{ desc: string }>];
      expect(creation.some((e) => e.desc === 'DATABASE')).toBe(true);
      expect(database.some((e) => e.desc === 'ENCODING')).toBe(true);
    });
  }
});
