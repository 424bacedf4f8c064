import { checkRecipientMix, readIdentityFile, readRecipientsFile } from '../../crypto/age.js';
import { UsageError } from '../../errors.js';
import { resolveS3Settings } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import { formatBytes } from '../../observe/log.js';
import { walFetch } from '../../physical/wal-fetch.js';
import { walPush } from '../../physical/wal-push.js';
import { pushThroughWorker, runWorker } from '../../physical/wal-async.js';
import { createHash } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { openStore } from '../../store/open.js';
import type { CliContext } from '../context.js';
import type { pushOptions, fetchOptions } from '../commands/wal.js';

export async function runWalPush(flags: Values<typeof pushOptions>, ctx: CliContext, _config: unknown, operands: string[]): Promise<void> {
  const cluster = requireCluster(flags.cluster);
  if (flags.to === undefined) throw new UsageError('wal-push needs --to REPOSITORY (or repository: in coffer.yaml)');
  if (flags.compress.kind !== 'zstd') throw new UsageError('wal-push compresses with zstd only: --compress zstd[:level]');
  const recipients = [...flags.recipient];
  for (const f of flags.recipientsFile) recipients.push(...(await readRecipientsFile(f)));
  checkRecipientMix(recipients);
  if (recipients.length === 0) throw new UsageError('no recipients: archived WAL is always encrypted', { hint: 'pass --recipient age1… or --recipients-file FILE' });
  const spool = path.resolve(ctx.cwd, flags.spoolDir ?? path.join(os.tmpdir(), `coffer-wal-spool-${encodeURIComponent(cluster)}`));
  if (flags.async && !flags.asyncWorker) {
    const t0 = Date.now();
    const argv1 = process.argv[1]!;
    const s3 = resolveS3Settings(flags, ctx.env);
    const where = flags.to.kind === 'file' ? `file://${flags.to.root}` : `s3://${flags.to.bucket}/${flags.to.prefix}${s3.endpoint ? ` at ${s3.endpoint}` : ''}`;
    await pushThroughWorker({
      spool,
      worker: {
        cluster,
        config: `cluster ${JSON.stringify(cluster)} to ${where} zstd:${flags.compress.level} recipients ${createHash('sha256').update([...new Set(recipients)].sort().join('\n')).digest('hex').slice(0, 16)}`,
        frontArgs: ctx.env.COFFER_FRONT_ARGS,
      },
      file: operands[0]!,
      ...(operands[1] !== undefined ? { name: operands[1] } : {}),
      cwd: ctx.cwd,
      waitMs: flags.asyncWait.ms,
      workerArgv: [process.execPath, argv1, ...process.argv.slice(2), '--async-worker'],
      workerEnv: process.env,
      signal: ctx.signal,
    });
    ctx.log.info(`archived ${operands[0]} (async worker)`, { ms: Date.now() - t0 });
    return;
  }
  const store = await openStore(flags.to, resolveS3Settings(flags, ctx.env));
  if (flags.asyncWorker) {
    try {
      await runWorker({
        spool,
        walDir: path.dirname(path.resolve(ctx.cwd, operands[0]!)),
        parallel: flags.asyncParallel,
        store,
        push: { cluster, recipients, level: flags.compress.level, cwd: ctx.cwd, env: ctx.env, signal: ctx.signal },
        log: (msg, fields) => ctx.log.info(msg, fields),
      });
    } finally {
      store.close();
    }
    return;
  }
  try {
    const t0 = Date.now();
    const r = await walPush({
      store,
      cluster,
      file: operands[0]!,
      ...(operands[1] !== undefined ? { name: operands[1] } : {}),
      recipients,
      level: flags.compress.level,
      cwd: ctx.cwd,
      env: ctx.env,
      signal: ctx.signal,
    });
    const ms = Date.now() - t0;
    if (r.outcome === 'already') ctx.log.info(`${r.file} is already archived (same sha256); nothing written`, { key: r.key, ms });
    else ctx.log.info(`archived ${r.file}: ${formatBytes(r.size)} → ${formatBytes(r.stored)}`, { key: r.key, ms });
  } finally {
    store.close();
  }
}

export async function runWalFetch(flags: Values<typeof fetchOptions>, ctx: CliContext, _config: unknown, operands: string[]): Promise<void> {
  const cluster = requireCluster(flags.cluster);
  if (flags.from === undefined) throw new UsageError('wal-fetch needs --from REPOSITORY (or repository: in coffer.yaml)');
  if (flags.identity.length === 0) throw new UsageError('no identity: wal-fetch needs the age identity (private key) file', { hint: 'pass --identity FILE' });
  const identities: string[] = [];
  for (const f of flags.identity) identities.push(...(await readIdentityFile(f)));
  const store = await openStore(flags.from, resolveS3Settings(flags, ctx.env));
  try {
    const t0 = Date.now();
    const r = await walFetch({ store, cluster, name: operands[0]!, target: operands[1]!, identities, cwd: ctx.cwd, env: ctx.env, signal: ctx.signal });
    ctx.log.info(`restored ${r.name} (${formatBytes(r.size)})`, { key: r.key, ms: Date.now() - t0 });
  } finally {
    store.close();
  }
}

function requireCluster(c: string | undefined): string {
  if (c === undefined) throw new UsageError('--cluster NAME is required: the name this cluster is archived under');
  return c;
}
