/**
 * Restore-side version checks: an archive that the local pg_restore cannot read, or a dump of a
 * newer server than the target, is refused before anything is created, with both versions named
 * and the fix. From the manifest before the download (repository backups), then from the
 * archive's own header (every custom archive, a `--file` too).
 */
import { UsageError } from '../errors.js';
import type { BackupManifest } from '../catalog/manifest.js';
import { archiveMinorOf, pgMajorReading, type ArchiveHeader } from './archive-toc.js';
import { clientVersion, serverMajor } from './server.js';
import type { PgAdmin } from './admin.js';
import type { PgTools } from './tools.js';

/**
 * A version refusal (exit 2, like any usage error). It is decided on authenticated bytes (the
 * manifest, the archive's first age chunk), so it stands even when the rest of a stream that
 * this pg_restore cannot read would fail the archive check meanwhile (a newer format is not
 * damage).
 */
export class VersionError extends UsageError {}

export interface LocalVersions {
  /** `pg_restore --version`'s first line and its major version (custom archives only). */
  pgRestore?: { text: string; major: number };
  /** The target server. */
  server: { num: number; text: string };
}

/** The major version in a version string ("16.2 (Debian …)" → 16, "9.6.24" → 9.6); NaN if none. */
export function majorOf(version: string): number {
  const m = /^(\d+)(?:\.(\d+))?/.exec(version.trim());
  if (!m) return Number.NaN;
  const major = Number(m[1]);
  return major >= 10 ? major : Number(`${major}.${m[2] ?? 0}`);
}

/** The local pg_restore's version (when the archive is a custom one) and the target server's. */
export async function localVersions(tools: PgTools, admin: PgAdmin, withPgRestore: boolean, env: NodeJS.ProcessEnv, signal?: AbortSignal): Promise<LocalVersions> {
  const row = (await admin.query("SELECT current_setting('server_version_num') || ' ' || current_setting('server_version');", 'read the server version')).trim();
  const at = row.indexOf(' ');
  const server = { num: Number(row.slice(0, at)), text: row.slice(at + 1) };
  return withPgRestore ? { server, pgRestore: await clientVersion(tools.pgRestore, 'pg_restore', { env, signal }) } : { server };
}

function pgRestoreTooOld(what: string, minor: number, local: NonNullable<LocalVersions['pgRestore']>): UsageError {
  const need = pgMajorReading(minor);
  return new VersionError(`${what} is archive format 1.${minor}, which the local pg_restore ${local.major} cannot read (it reads up to 1.${archiveMinorOf(local.major)}) [${local.text}]`, {
    hint: `use pg_restore ${need} or newer: install postgresql-client-${need} and pass --pg-bin /usr/lib/postgresql/${need}/bin (or --pg-restore-command)`,
  });
}

function serverTooOld(what: string, sourceVersion: string, sourceMajor: number, local: LocalVersions['server']): UsageError {
  return new VersionError(`${what} comes from PostgreSQL ${sourceVersion}; the target server runs PostgreSQL ${local.text}, which is older (a dump does not restore into an older major version)`, {
    hint: `restore into a PostgreSQL ${sourceMajor} or newer server (--dbname), or upgrade the target server`,
  });
}

/** Before the download: the manifest's server and pg_dump versions against the local ones. */
export function checkManifestVersions(m: BackupManifest, local: LocalVersions): void {
  const what = `backup ${m.id}`;
  const sourceMajor = serverMajor(m.postgres.serverVersionNum);
  if (sourceMajor > serverMajor(local.server.num)) throw serverTooOld(what, m.postgres.serverVersion, sourceMajor, local.server);
  const dumpMajor = majorOf(m.postgres.pgDumpVersion.replace(/^\D*/, ''));
  if (m.kind === 'custom' && local.pgRestore && Number.isFinite(dumpMajor)) {
    const minor = archiveMinorOf(dumpMajor);
    if (minor > archiveMinorOf(local.pgRestore.major)) throw pgRestoreTooOld(`${what} (pg_dump ${m.postgres.pgDumpVersion.replace(/^pg_dump \(PostgreSQL\)\s*/, '')})`, minor, local.pgRestore);
  }
}

/** At the head of the stream: the archive header's format version and source server version. */
export function checkArchiveHeader(h: ArchiveHeader, local: LocalVersions, what: string): void {
  if (local.pgRestore && (h.version[0] > 1 || h.version[1] > archiveMinorOf(local.pgRestore.major))) {
    if (h.version[0] > 1) throw new VersionError(`${what} is archive format ${h.versionText}, which no known pg_restore reads`, { hint: 'use the pg_restore of the PostgreSQL version that wrote it' });
    throw pgRestoreTooOld(`${what}${h.pgDumpVersion ? ` (pg_dump ${h.pgDumpVersion})` : ''}`, h.version[1], local.pgRestore);
  }
  const sourceMajor = h.serverVersion ? majorOf(h.serverVersion) : Number.NaN;
  if (Number.isFinite(sourceMajor) && sourceMajor > serverMajor(local.server.num)) throw serverTooOld(what, h.serverVersion!, sourceMajor, local.server);
}
