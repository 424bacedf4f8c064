import { Writable } from 'node:stream';
import { IntegrityError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { spawnChild, type PgTools } from '../pg/tools.js';
import { FanOut, drainInto, type FanOutTarget } from './fanout.js';
import { openSource, tocTables, type RestoreSource } from './restore.js';

export interface VerifyResult {
  storedBytes: number;
  archiveBytes: number;
  format: 'custom' | 'sql';
  tocEntries: number;
  tables: number;
}

/**
 * Proves a backup is readable without a database: downloads it, checks sha256 and size against
 * the manifest, decrypts and authenticates it to the last byte, decompresses it, and has
 * `pg_restore --list` read its table of contents.
 */
export async function runVerify(req: {
  source: RestoreSource;
  identities: string[];
  tools: PgTools;
  zstdCommand?: string[];
  signal: AbortSignal;
  log: Logger;
  onProgress?: (n: number) => void;
}): Promise<VerifyResult> {
  const opened = await openSource(req, req.signal);
  const targets: FanOutTarget[] = [
    {
      name: 'discard',
      kind: 'file',
      stream: new Writable({
        highWaterMark: 1024 * 1024,
        write(_c, _e, cb) {
          cb();
        },
      }),
    },
  ];
  const out: Buffer[] = [];
  const children = [...opened.children];
  if (opened.format === 'custom') {
    const list = spawnChild([...req.tools.pgRestore, '--list'], { stdin: 'pipe', signal: req.signal, what: 'pg_restore --list' });
    list.child.stdout!.on('data', (b: Buffer) => out.push(b));
    children.push(list);
    targets.push({ name: 'toc', kind: 'child', stream: list.child.stdin! });
  }
  const fan = new FanOut(targets);
  try {
    await drainInto(opened.archive, fan);
  } catch (err) {
    for (const c of children) c.kill();
    await Promise.allSettled(children.map((c) => c.done));
    throw err;
  }
  await Promise.all(children.map((c) => c.done));
  const toc = Buffer.concat(out).toString('utf8');
  const tocEntries = toc.split('\n').filter((l) => /^\d+;/.test(l)).length;
  if (opened.format === 'custom' && tocEntries === 0) throw new IntegrityError('pg_restore --list found no entries in the archive');
  const s = opened.stats();
  return { storedBytes: s.storedBytes, archiveBytes: s.archiveBytes, format: opened.format, tocEntries, tables: tocTables(toc).length };
}
