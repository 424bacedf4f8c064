import * as path from 'node:path';
import { readIdentityFile, readRecipientsFile } from '../../crypto/age.js';
import { parseBackupSelector } from '../../catalog/layout.js';
import { resolveS3Settings } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import { UsageError } from '../../errors.js';
import { formatBytes } from '../../observe/log.js';
import { runRekey, type RekeyResult } from '../../pipeline/rekey.js';
import { retainUntil } from '../../retention/policy.js';
import { openStore } from '../../store/open.js';
import { acquireBackupLock, defaultLockDir } from '../../ops/lock.js';
import type { CliContext } from '../context.js';
import { retentionPolicy } from '../option-groups.js';
import type { rekeyOptions } from '../commands/rekey.js';
import { readSigningKeyFile } from '../../trust/signing-key.js';
import { manifestSigner } from '../../trust/manifest-trust.js';

/**
 * `coffer rekey`: add or remove recipients of existing backups (src/pipeline/rekey.ts). Prints
 * one line per backup (what changes; with --dry-run what would), or the result as JSON.
 */
export async function runRekeyCommand(flags: Values<typeof rekeyOptions>, ctx: CliContext): Promise<RekeyResult> {
  const add = [...flags.addRecipient];
  for (const f of flags.addRecipientsFile) add.push(...(await readRecipientsFile(f)));
  const files = [...flags.identity, ...flags.identityFile];
  if (files.length === 0) {
    throw new UsageError('no identity: rekey unwraps each backup\'s file key with the identity of a current recipient', { hint: 'pass -i FILE (--identity), the private key of one of the backup\'s recipients' });
  }
  const identities: string[] = [];
  for (const f of files) identities.push(...(await readIdentityFile(f)));
  const selectorText = (flags.backup ?? 'latest').trim();
  const selector = selectorText === 'all' ? 'all' : parseBackupSelector(selectorText);
  const policy = retentionPolicy(flags);
  const lockMode = flags.objectLockMode;
  const signer = flags.signingKey !== undefined ? manifestSigner(await readSigningKeyFile(path.resolve(ctx.cwd, flags.signingKey))) : undefined;
  const lockDir = path.resolve(ctx.cwd, flags.lockDir ?? defaultLockDir(ctx.env));
  const store = await openStore(flags.from, resolveS3Settings(flags, ctx.env));
  let result: RekeyResult;
  try {
    result = await runRekey({
      store,
      database: flags.db,
      selector,
      add,
      remove: [...flags.removeRecipient],
      identities,
      dryRun: flags.dryRun,
      deleteOld: flags.deleteOld,
      signer,
      lock: (database) => acquireBackupLock({ repository: store.location, database, command: 'rekey', lockDir, runId: ctx.log.runId, env: ctx.env, waitMs: flags.wait?.ms ?? 0, signal: ctx.signal, log: ctx.log }),
      retentionFor: lockMode ? (tier, startedAt) => ({ mode: lockMode, retainUntil: retainUntil(policy, tier, startedAt) }) : undefined,
      log: ctx.log,
      signal: ctx.signal,
    });
  } finally {
    store.close();
  }
  if (flags.json) {
    ctx.stdout(`${JSON.stringify(result, null, 2)}\n`);
    return result;
  }
  const short = (r: string): string => (r.length > 24 ? `${r.slice(0, 12)}…${r.slice(-8)}` : r);
  for (const i of result.items) {
    const change = `recipients ${i.before.map(short).join(', ')} -> ${i.after.map(short).join(', ')}`;
    if (i.action === 'unchanged') ctx.stdout(`unchanged ${i.id}: its recipients are already ${i.after.map(short).join(', ')}\n`);
    else if (result.dryRun) ctx.stdout(`would rekey ${i.id} (${i.database}, ${i.tier}): ${change}\n`);
    else {
      const copied = i.objects.reduce((n, o) => n + o.copiedBytes, 0);
      const sent = i.objects.reduce((n, o) => n + (o.method === 'server-copy' ? o.headerBytes : o.size), 0);
      ctx.stdout(`rekeyed ${i.id} -> ${i.newId} (${i.database}, ${i.tier}): ${change}; ${formatBytes(copied)} copied by the store, ${formatBytes(sent)} written through coffer${i.oldDeleted ? '; the old backup was deleted' : ''}\n`);
    }
  }
  if (result.dryRun) ctx.stdout('dry run: nothing was written\n');
  return result;
}
