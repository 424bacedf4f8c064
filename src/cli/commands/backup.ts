import { readFileSync } from 'node:fs';
import { UsageError } from '../../errors.js';
import { parseRecipient, readRecipientsFile } from '../../crypto/age.js';
import { runBackup, type BackupResult, type DumpKind } from '../../pipeline/backup.js';
import { parseConnectionString, databaseOf } from '../../pg/connection.js';
import { resolvePgTools } from '../../pg/tools.js';
import { openStore } from '../../store/open.js';
import { Progress } from '../../observe/progress.js';
import { formatBytes } from '../../observe/log.js';
import {
  checkDatabaseName,
  envValue,
  parseCompression,
  parseOptionalSize,
  parsePositiveInt,
  parseTier,
  recipientsFromEnv,
  resolveRepository,
  resolveS3Settings,
} from '../../config/settings.js';
import type { CliContext } from '../context.js';

export interface BackupFlags {
  to?: string;
  db?: string[];
  dbname?: string;
  recipient?: string[];
  recipientsFile?: string[];
  label?: string;
  tier?: string;
  compress?: string;
  partSize?: string;
  maxParts?: string;
  s3Endpoint?: string;
  s3Region?: string;
  schemaOnly?: boolean;
  dataOnly?: boolean;
  excludeTableData?: string[];
  globals?: boolean;
  pgBin?: string;
  pgDumpCommand?: string;
  pgDumpallCommand?: string;
  psqlCommand?: string;
  json?: boolean;
}

/** `coffer backup`: one backup per database named; stops at the first failure. */
export async function runBackupCommand(flags: BackupFlags, ctx: CliContext): Promise<BackupResult[]> {
  const env = ctx.env;
  // Validate everything before touching the database or the repository.
  const repo = resolveRepository(flags.to, env, './backups');
  const s3 = resolveS3Settings(flags, env);
  const recipients = [...(flags.recipient ?? []), ...recipientsFromEnv(env)].map(parseRecipient);
  for (const f of [...(flags.recipientsFile ?? []), ...(env.COFFER_RECIPIENTS_FILE ? [env.COFFER_RECIPIENTS_FILE] : [])]) {
    recipients.push(...(await readRecipientsFile(f)));
  }
  if (recipients.length === 0) {
    throw new UsageError('no recipients: backups are always encrypted', { hint: 'pass --recipient age1… or --recipients-file FILE (create a key with `coffer keygen`)' });
  }
  if (flags.schemaOnly && flags.dataOnly) throw new UsageError('--schema-only and --data-only cannot be combined');
  const kind: DumpKind = flags.schemaOnly ? 'schema-only' : flags.dataOnly ? 'data-only' : 'custom';
  const compression = parseCompression(flags.compress ?? env.COFFER_COMPRESS);
  if (kind !== 'custom' && compression.kind === 'pgdump-gzip') {
    throw new UsageError('--compress gzip applies to custom-format dumps only; use zstd or none with --schema-only/--data-only');
  }
  const tier = parseTier(flags.tier ?? (flags.label !== undefined ? 'manual' : undefined));
  const partSize = parseOptionalSize(flags.partSize, '--part-size');
  const maxParts = parsePositiveInt(flags.maxParts, '--max-parts', 10_000, 10_000);
  const password = envValue(env, 'COFFER_PGPASSWORD', (p) => readFileSync(p, 'utf8'));
  const conn = parseConnectionString(flags.dbname ?? env.COFFER_DBNAME);
  if (password !== undefined && conn.password === undefined) conn.password = password;
  const dbs = flags.db && flags.db.length > 0 ? flags.db : [databaseOf(conn, undefined, env) ?? env.PGUSER ?? env.USER ?? ''];
  for (const d of dbs) checkDatabaseName(d);
  const tools = resolvePgTools({
    binDir: flags.pgBin ?? env.COFFER_PG_BIN,
    pgDumpCommand: flags.pgDumpCommand ?? env.COFFER_PG_DUMP_COMMAND,
    pgDumpallCommand: flags.pgDumpallCommand ?? env.COFFER_PG_DUMPALL_COMMAND,
    psqlCommand: flags.psqlCommand ?? env.COFFER_PSQL_COMMAND,
  });

  const store = await openStore(repo, s3);
  const results: BackupResult[] = [];
  try {
    for (const database of dbs) {
      const progress = new Progress(`backup ${database}`, ctx.stderrIsTty);
      try {
        const r = await runBackup({
          store,
          tools,
          conn,
          database,
          recipients,
          compression,
          kind,
          tier,
          label: flags.label,
          partSize,
          maxParts,
          excludeTableData: flags.excludeTableData,
          globals: flags.globals,
          env,
          signal: ctx.signal,
          log: ctx.log,
          onProgress: (b) => progress.update(b),
        });
        results.push(r);
      } finally {
        progress.stop();
      }
    }
  } finally {
    store.close();
  }
  if (flags.json) ctx.stdout(`${JSON.stringify(results.map((r) => r.manifest), null, 2)}\n`);
  else if (ctx.stdoutIsTty) {
    for (const r of results) ctx.stdout(`${r.manifest.id}  ${r.manifest.database}  ${r.manifest.tier}  ${formatBytes(r.manifest.dump.size)}\n`);
  }
  return results;
}
