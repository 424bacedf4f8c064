import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { generateIdentity, writeSecretFileExclusive } from '../../crypto/age.js';
import { startThrowawayCluster } from '../../pg/throwaway-cluster.js';
import { VAULT_SAMPLE_SQL } from '../../demo/vault-sample.js';
import { runBackup } from '../../pipeline/backup.js';
import { resolvePgTools } from '../../pg/tools.js';
import { FsStore } from '../../store/fs.js';
import { formatBytes } from '../../observe/log.js';
import type { CliContext } from '../context.js';
import { runListCommand } from './list.js';

export interface DemoFlags {
  dir: string;
  pgBin?: string;
}

/**
 * `coffer demo`: the whole job on an embedded default. Starts a throwaway PostgreSQL cluster,
 * loads the sample `vault` database, creates an age identity (`<dir>/demo-identity.txt`, 0600),
 * backs `vault` up into the local repository `<dir>`, and lists it. The cluster is removed at
 * the end; the repository and the key stay so you can look at them.
 */
export async function runDemoCommand(flags: DemoFlags, ctx: CliContext): Promise<void> {
  const repo = path.resolve(ctx.cwd, flags.dir);
  const say = (s: string): void => ctx.stdout(`${s}\n`);
  await fsp.mkdir(repo, { recursive: true, mode: 0o700 });
  const keyFile = path.join(repo, 'demo-identity.txt');
  let recipient: string;
  try {
    const { readIdentityFile, recipientOf } = await import('../../crypto/age.js');
    const [identity] = await readIdentityFile(keyFile);
    recipient = await recipientOf(identity!);
    say(`using the existing demo key ${keyFile}`);
  } catch {
    const id = await generateIdentity();
    await fsp.rm(keyFile, { force: true });
    await writeSecretFileExclusive(keyFile, id.fileText);
    recipient = id.recipient;
    say(`created an age identity: ${keyFile} (mode 0600); recipient ${recipient}`);
  }

  say('starting a throwaway PostgreSQL cluster…');
  const cluster = await startThrowawayCluster({ binDir: flags.pgBin });
  try {
    await cluster.psql('CREATE DATABASE vault');
    await cluster.psql(VAULT_SAMPLE_SQL, 'vault');
    const count = (await cluster.psql('SELECT COUNT(*) FROM vault_status;', 'vault')).trim();
    say(`sample database "vault" loaded: SELECT COUNT(*) FROM vault_status; → ${count}`);

    const env = { ...ctx.env, ...cluster.env() };
    const store = new FsStore(repo);
    const { manifest } = await runBackup({
      store,
      tools: resolvePgTools({ binDir: cluster.binDir }),
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
    await runListCommand({ from: repo }, ctx);
    say('');
    say(`decrypt by hand: ${manifest.manualRestore.replace('IDENTITY_FILE', keyFile).replace(/ [^ ]+\.age/, ` ${path.join(repo, manifest.dump.key)}`)}`);
  } finally {
    await cluster.stop();
  }
}
