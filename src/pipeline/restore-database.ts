/**
 * The database side of a restore: scratch databases an earlier restore left behind, the
 * scratch database itself (created with the backup's encoding and locale, given its owner,
 * ACL, settings and comment after the data, dropped on failure), and the backup's roles.
 */
import pRetry, { AbortError } from 'p-retry';
import { DatabaseError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { PgAdmin, derivedName, quoteIdent, quoteLiteral } from '../pg/admin.js';
import { archiveText, createStatement, isUtf8, definitionFromArchive, definitionFromManifest, describeLocale, propertiesScript, TARGET_DB_VAR, type DatabaseDefinition } from '../pg/database-props.js';
import type { RestoreFlags } from '../pg/pg-restore.js';
import { globalsScript } from '../pg/globals.js';
import { spawnPsqlScript } from '../pg/psql.js';
import type { Supervisor } from '../run/supervisor.js';
import type { OpenedArchive } from './archive.js';
import type { RestoreSource } from './restore-source.js';

/**
 * What the backup says of the database itself: a custom archive's DATABASE entries (read from
 * its table of contents, before any database exists), else the manifest's encoding and locale.
 * `creation`: only what CREATE DATABASE needs (the archive is read up to its DATABASE entry,
 * not to the end of its table of contents), and no warning (the whole definition follows).
 */
export async function databaseDefinition(source: RestoreSource, opened: OpenedArchive, log: Logger, creation = false): Promise<DatabaseDefinition | undefined> {
  const entries = creation && opened.creationEntries ? await opened.creationEntries() : await opened.databaseEntries();
  const name = source.kind === 'repository' ? source.entry.manifest.database : '';
  const fromArchive = entries ? definitionFromArchive(entries) : undefined;
  if (fromArchive) return fromArchive;
  const locale = source.kind === 'repository' ? source.entry.manifest.postgres.locale : undefined;
  if (locale) return definitionFromManifest(name, locale);
  if (creation) return undefined;
  log.warn("the backup does not say how its database was created (encoding, locale): the restored database gets the server's defaults");
  return undefined;
}

/** Creates the scratch database with the backup's encoding and locale, or says why the server cannot. */
export async function createScratch(admin: PgAdmin, scratch: string, def: DatabaseDefinition | undefined, log: Logger): Promise<void> {
  const { sql, dropped } = createStatement(scratch, def);
  for (const d of dropped) log.warn(`the backup's database had ${d}; the restored one uses the server's default tablespace`);
  try {
    await admin.create(scratch, sql);
  } catch (err) {
    const msg = (err as Error).message;
    if (def && /locale|encoding|collation|LC_COLLATE|LC_CTYPE|ICU/i.test(msg)) {
      throw new DatabaseError(`this server cannot create the backup's database as it was (${describeLocale(def)}): ${msg.replace(/^create database "[^"]*": /, '')}`, {
        cause: err,
        hint: 'install that locale on the database server (locale-gen or localedef, then restart PostgreSQL) and run the restore again',
      });
    }
    throw err;
  }
}

/**
 * The SQL that gives the scratch database the backup's owner, ACL, settings, role-in-database
 * settings, connection limit and comment, to run connected to the scratch database itself after
 * the data and the checks (a setting such as default_transaction_read_only must not apply to
 * the restore itself; ALTER DATABASE … SET applies to later sessions only). Settings of roles
 * this server lacks are left out, with a warning: nobody can use them. `undefined`: nothing to apply.
 *
 * The statements are in the archive's own bytes and client encoding: text in shared catalogs
 * (the comment) is stored as the database's encoding has it, and a SQL_ASCII or LATIN1 comment
 * comes back byte for byte. psql names the database.
 */
export async function databasePropertiesSql(admin: PgAdmin, def: DatabaseDefinition, flags: RestoreFlags, log: Logger): Promise<Buffer | undefined> {
  let script = propertiesScript(def, { noOwner: flags.noOwner, noPrivileges: flags.noPrivileges });
  if (script === '') return undefined;
  const roleLines = script.split('\n').filter((l) => /^ALTER ROLE /.test(l));
  if (roleLines.length > 0) {
    const [roles, settable] = await Promise.all([admin.roles(), admin.settableRoles()]);
    // Names in the archive's encoding; a non-ASCII name of a non-UTF8 archive is left to the server.
    const known = (raw: string): string | undefined => ((/^[\x00-\x7f]*$/.test(raw) || isUtf8(def.clientEncoding)) ? archiveText(raw, def.clientEncoding) : undefined);
    const left: string[] = [];
    for (const l of roleLines) {
      const raw = roleOfAlterRole(l);
      const name = raw === undefined ? undefined : known(raw);
      if (name === undefined) continue;
      if (!roles.has(name)) log.warn('a setting of a role this server does not have was not applied', { role: name });
      // A restore by a role that may not change it (CREATEDB only, say) is not failed for it.
      else if (!settable.has(name)) log.warn('a setting of a role was not applied: the restoring user may not change that role\'s settings (a superuser may apply it later)', { role: name });
      else continue;
      left.push(l);
    }
    if (left.length > 0) script = script.split('\n').filter((l) => !left.includes(l)).join('\n');
  }
  const sql = [`SET client_encoding = ${quoteLiteral(def.clientEncoding)};`, `SELECT quote_ident(current_database()) AS ${TARGET_DB_VAR} \\gset`, 'BEGIN;', script, 'COMMIT;', ''].join('\n');
  return Buffer.from(sql, 'latin1');
}

/** What applying the properties is called in messages. */
export const APPLY_PROPERTIES = "apply the backup's database properties (owner, privileges, settings, comment)";

/** Logs what {@link databasePropertiesSql} gave the database. */
export function logPropertiesApplied(def: DatabaseDefinition, flags: RestoreFlags, log: Logger): void {
  log.info("the backup's database properties applied", { owner: flags.noOwner ? null : def.owner, privileges: !flags.noPrivileges && def.acl !== null, settings: def.properties !== null, comment: def.comment !== null });
}

/** The role of pg_dump's `ALTER ROLE <role> IN DATABASE … SET …;` line (quoted or bare). */
export function roleOfAlterRole(line: string): string | undefined {
  const q = /^ALTER ROLE "((?:[^"]|"")*)" IN DATABASE /.exec(line);
  if (q) return q[1]!.replace(/""/g, '"');
  const b = /^ALTER ROLE ([a-z_][a-z0-9_$]*) IN DATABASE /.exec(line);
  return b?.[1];
}

/** What a restore learns of the server and its target before it starts, in one query. */
export interface TargetSurvey {
  /** The target database exists. */
  exists: boolean;
  /** The server's version (server_version_num and server_version). */
  server: { num: number; text: string };
}

/**
 * Asks the server, in one round trip, whether the target exists, its version, and which scratch
 * databases of earlier restores of the same target are still there. A restore killed with
 * SIGKILL (or whose server went away for longer than the cleanup waits) cannot drop its own:
 * they are named, not dropped (another restore of the same target may be running).
 */
/** The name a drill restores into (src/cli/run/restore.ts). */
const DRILL_TARGET = /^coffer_drill_[0-9a-f]{8}$/;

export async function surveyTarget(admin: PgAdmin, target: string, log: Logger, signal?: AbortSignal): Promise<TargetSurvey> {
  const prefix = derivedName(target, `__restoring_${'0'.repeat(8)}`).slice(0, -8);
  const out = await admin.query(
    [
      `SELECT 'e' || E'\\t' || count(*) FROM pg_database WHERE datname = ${quoteLiteral(target)};`,
      "SELECT 'v' || E'\\t' || current_setting('server_version_num') || ' ' || current_setting('server_version');",
      `SELECT 's' || E'\\t' || datname FROM pg_database WHERE left(datname, ${[...prefix].length}) = ${quoteLiteral(prefix)} AND datname ~ '__restoring_[0-9a-f]{8}$';`,
      // A drill restores into a name of its own each time: what killed drills left has other names.
      ...(DRILL_TARGET.test(target) ? [`SELECT 'd' || E'\\t' || datname FROM pg_database WHERE datname ~ '^coffer_drill_[0-9a-f]{8}(__restoring_[0-9a-f]{8})?$' AND datname <> ${quoteLiteral(target)};`] : []),
    ].join('\n'),
    'look up the target database and the server version',
    undefined,
    signal,
  );
  let exists = false;
  let version = '';
  for (const line of out.split('\n')) {
    const [kind, value] = [line.slice(0, 1), line.slice(2)];
    if (kind === 'e') exists = value === '1';
    else if (kind === 'v') version = value;
    else if (kind === 's' && value === `${prefix}${value.slice(-8)}`) {
      log.warn(`a scratch database of an earlier restore of ${JSON.stringify(target)} is still there (that restore was killed before it could drop it); once no restore of it runs, drop it: DROP DATABASE ${quoteIdent(value)} WITH (FORCE);`, { database: value });
    } else if (kind === 'd') {
      log.warn(`a database of an earlier drill is still there (that drill was killed before it could drop it); once no drill runs, drop it: DROP DATABASE ${quoteIdent(value)} WITH (FORCE);`, { database: value });
    }
  }
  const at = version.indexOf(' ');
  return { exists, server: { num: Number(version.slice(0, at)), text: version.slice(at + 1) } };
}

/** How long cleanup keeps trying to reach a server that went away (a restart mid-restore). */
const DROP_RETRY_MS = 30_000;
const DROP_RETRY_EVERY_MS = 500;
/** What libpq and the server say while the server is down, starting or stopping. */
const UNREACHABLE = /could not connect|connection refused|No such file or directory|server closed the connection|the database system is (starting up|shutting down|in recovery)|terminating connection/i;

/**
 * Drops the scratch database, retrying while the server cannot be reached (it may be
 * restarting: the restore failed because it went away). Logs what it could not do.
 */
export async function dropScratch(admin: PgAdmin, scratch: string, log: Logger): Promise<void> {
  try {
    await pRetry(
      async () => {
        try {
          await admin.drop(scratch);
        } catch (e) {
          // Anything but an unreachable server will not change by waiting.
          throw UNREACHABLE.test((e as Error).message) ? e : new AbortError(e as Error);
        }
      },
      {
        retries: Math.ceil(DROP_RETRY_MS / DROP_RETRY_EVERY_MS),
        maxRetryTime: DROP_RETRY_MS,
        factor: 1,
        minTimeout: DROP_RETRY_EVERY_MS,
        maxTimeout: DROP_RETRY_EVERY_MS,
        randomize: false,
        onFailedAttempt: ({ error, attemptNumber }) => {
          if (attemptNumber === 1) log.warn('the server cannot be reached to drop the scratch database; retrying', { scratch, error: error.message });
        },
      },
    );
    log.info('scratch database dropped', { scratch });
  } catch (e) {
    log.error(`could not drop the scratch database ${JSON.stringify(scratch)}; drop it by hand: DROP DATABASE ${JSON.stringify(scratch)} WITH (FORCE);`, { error: (e as Error).message });
  }
}

/**
 * Applies the backup's globals (roles, as SQL) to the server. A role the server already has (the
 * superuser, at least) is left exactly as it is: the backup's CREATE, ALTER (attributes, password,
 * settings), COMMENT and privileges of it are left out, and one warning names these roles. Roles
 * the server lacks are created with all of it, and their memberships ({@link globalsScript}).
 * Each statement runs on its own, the rest go on, and what failed is reported.
 */
export async function applyGlobals(admin: PgAdmin, sql: string, sup: Supervisor, log: Logger): Promise<{ created: string[] }> {
  const plan = globalsScript(sql, await admin.roles());
  if (plan.kept.length > 0 || plan.membershipsLeftOut.length > 0) {
    log.warn("globals: roles this server already has are kept as they are (the backup's attributes, password, settings and comment are not applied to them), and memberships between two of them are not added", {
      roles: names(plan.kept),
      ...(plan.membershipsLeftOut.length > 0 ? { membershipsLeftOut: names(plan.membershipsLeftOut) } : {}),
    });
  }
  if (plan.leftOut.length > 0) log.warn('globals: statements left out', { statements: names(plan.leftOut) });
  const out = spawnPsqlScript(sup, admin.tools, { conn: admin.conn, database: admin.maintenanceDb, env: admin.env }, { what: 'psql (globals)', continueOnError: true });
  out.stdin!.end(plan.script);
  await out.done;
  const errors = out.stderr.text().split('\n').filter((l) => /ERROR:/.test(l));
  for (const e of errors) log.warn('globals: statement failed', { error: e.replace(/^.*ERROR:\s*/, '') });
  log.info('globals applied', { created: plan.created.length, kept: plan.kept.length, failed: errors.length });
  return { created: plan.created };
}

/** Names (or other text of the backup) for a log field: each JSON-quoted, so quotes, commas and newlines in them stay readable. */
function names(list: string[]): string {
  return list.map((n) => JSON.stringify(n)).join(', ');
}
