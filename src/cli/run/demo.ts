import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { generateIdentity, readIdentityFile, recipientOf, writeSecretFileExclusive } from '../../crypto/age.js';
import { runRestore } from '../../pipeline/restore.js';
import { runVerify } from '../../pipeline/verify.js';
import { VAULT_SAMPLE_SQL } from '../../demo/vault-sample.js';
import { runBackup } from '../../pipeline/backup.js';
import { resolvePgTools } from '../../pg/tools.js';
import { FsStore } from '../../store/fs.js';
import { formatBytes } from '../../observe/log.js';
import type { Values } from '../../config/options.js';
import { resolveS3Settings } from '../../config/settings.js';
import type { CliContext } from '../context.js';
import { listRepository } from './list.js';
import type { options } from '../commands/demo.js';
import { makeDirs } from '../../mkdirs.js';

/**
 * `coffer demo`: the whole job on an embedded default. Starts a throwaway PostgreSQL cluster,
 * loads the sample `vault` database, creates an age identity (`<dir>/demo-identity.txt`, 0600),
 * backs `vault` up into the local repository `<dir>`, lists it, verifies it, restores it into a
 * new database `vault_restored` and runs the team's smoke query there. The cluster is removed
 * at the end; the repository and the key stay so you can look at them (a real deployment keeps
 * the identity off the database host: see the README).
 */
export async function runDemoCommand(flags: Values<typeof options>, ctx: CliContext): Promise<void> {
  const repo = path.resolve(ctx.cwd, flags.dir);
  const say = (s: string): void => ctx.stdout(`${s}\n`);
  await makeDirs(repo, 0o700);
  const keyFile = path.join(repo, 'demo-identity.txt');
  let recipient: string;
  let identity: string;
  try {
    [identity] = (await readIdentityFile(keyFile)) as [string];
    recipient = await recipientOf(identity);
    say(`using the existing demo key ${keyFile}`);
  } catch {
    const id = await generateIdentity();
    await fsp.rm(keyFile, { force: true });
    await writeSecretFileExclusive(keyFile, id.fileText);
    recipient = id.recipient;
    identity = id.identity;
    say(`created an age identity: ${keyFile} (mode 0600); recipient ${recipient}`);
  }

  say('starting a throwaway PostgreSQL cluster…');
  // Loaded here: the cluster's process library is not needed by any other command's start.
  const { startThrowawayCluster } = await import('../../demo/throwaway-cluster.js');
  const cluster = await startThrowawayCluster({ binDir: flags.pgBin });
  try {
    await cluster.psql('CREATE DATABASE vault');
    await cluster.psql(VAULT_SAMPLE_SQL, 'vault');
    const count = (await cluster.psql('SELECT COUNT(*) FROM vault_status;', 'vault')).trim();
    say(`sample database "vault" loaded: SELECT COUNT(*) FROM vault_status; → ${count}`);

    const env = { ...ctx.env, ...cluster.env() };
    const store = new FsStore(repo);
    const tools = resolvePgTools({ binDir: cluster.binDir });
    const { manifest } = await runBackup({
      store,
      tools,
      conn: { params: {} },
      database: 'vault',
      recipients: [recipient],
      compression: { kind: 'zstd', level: 1 },
      kind: 'custom',
      maxParts: 10_000,
      env,
      signal: ctx.signal,
      log: ctx.log,
    });
    say(`backup ${manifest.id} stored: ${manifest.dump.key} (${formatBytes(manifest.dump.size)}, sha256 ${manifest.dump.sha256.slice(0, 16)}…)`);
    say('');
    say(`$ coffer list --from ${flags.dir}`);
    await listRepository({ kind: 'file', root: repo }, resolveS3Settings({}, ctx.env), {}, ctx);
    say('');
    say(`$ coffer verify --from ${flags.dir} --identity ${path.relative(ctx.cwd, keyFile)}`);
    const source = { kind: 'repository' as const, store, entry: { id: manifest.id, database: 'vault', tier: manifest.tier, manifestKey: '', manifest } };
    const v = await runVerify({ source, identities: [identity], tools, env, signal: ctx.signal, log: ctx.log });
    say(`ok: sha256 matches, decrypted and authenticated ${formatBytes(v.storedBytes)}, archive of ${formatBytes(v.archiveBytes)} with ${v.tocEntries} TOC entries`);
    say('');
    const smokeSql = 'SELECT COUNT(*) FROM vault_status;';
    say(`$ coffer restore --from ${flags.dir} --identity ${path.relative(ctx.cwd, keyFile)} --target-db vault_restored --smoke '${smokeSql}'`);
    const summary = await runRestore({
      source,
      identities: [identity],
      tools,
      conn: { params: {} },
      maintenanceDb: 'postgres',
      target: 'vault_restored',
      replace: false,
      smoke: [smokeSql],
      noOwner: false,
      noPrivileges: false,
      jobs: 1,
      env,
      signal: ctx.signal,
      log: ctx.log,
    });
    say(`restored into "vault_restored" in ${(summary.durationMs / 1000).toFixed(1)}s: ${summary.tables} tables, all ${summary.checks.tocTables} tables of the archive present`);
    for (const t of summary.largestTables) say(`  ${t.table}: ${t.rows} rows`);
    say(`smoke: ${smokeSql} → ${summary.checks.smoke[0]?.output ?? ''} (source had ${count})`);
    say('');
    say(`decrypt by hand: ${manifest.manualRestore.replace('IDENTITY_FILE', keyFile).replace(/ [^ ]+\.age/, ` ${path.join(repo, manifest.dump.key)}`)}`);
  } finally {
    await cluster.stop();
  }
}
