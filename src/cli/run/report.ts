import * as path from 'node:path';
import { writeFileAtomic } from '../../atomic-write.js';
import { listBackupKeys, loadEntry, loadManifests, newestFirst, type BackupKeyEntry } from '../../catalog/catalog.js';
import { decodeDrillRecord, measuredRestoreSeconds, predictRestore, type DrillRecord } from '../../catalog/drill-record.js';
import type { BackupManifest } from '../../catalog/manifest.js';
import { resolveS3Settings } from '../../config/settings.js';
import type { Values } from '../../config/options.js';
import { formatErrorLine, IntegrityError, InterruptedError, StorageError } from '../../errors.js';
import { renderReportHtml } from '../../observe/report-html.js';
import { withFields } from '../../observe/log.js';
import { openBucketAdmin, openStore } from '../../store/open.js';
import { retentionPolicy } from '../option-groups.js';
import { retentionDrift } from './retention.js';
import type { ObjectStore } from '../../store/object-store.js';
import { COFFER_VERSION } from '../../version.js';
import type { CliContext } from '../context.js';
import type { LoadedConfig } from '../command.js';
import { chooseSources } from '../sources.js';
import type { reportOptions } from '../commands/report.js';
import { addDrill, judge, statusOf, type StatusRow } from './status.js';

/** How many drill records per database the report reads (newest first). */
const DRILLS_SHOWN = 20;

export interface ReportData {
  format: 'coffer-report';
  formatVersion: 1;
  generatedAt: string;
  repository: string;
  coffer: string;
  objectives: { maxAge: string; rtoTarget?: string; rpoTarget?: string; maxDrillAge?: string };
  /** About the report itself (what it could not check). */
  notes: string[];
  /** Per repository: its lifecycle and object lock against the policy (as `retention check`), or why it was not checked. */
  retention: Array<{ repository: string; source?: string; checked: boolean; drift: string[]; note?: string }>;
  databases: ReportDatabase[];
}

export interface ReportDatabase {
  /** With --source/--all-sources: the source of the file's sources: it belongs to. */
  source?: string;
  database: string;
  /** The same row as `coffer status --json`, judged against the same objectives. */
  status: StatusRow;
  /** Newest first, at most --limit. */
  backups: Array<{ id: string; tier: string; kind: BackupManifest['kind']; startedAt: string; finishedAt: string; durationSeconds: number; storedBytes: number; dumpBytes: number; warnings: string[] }>;
  /**
   * Newest first: each drill's measured restore (its phases, the drop left out) and what the
   * drill before it (the newest successful one older than it) predicted for its size.
   */
  drills: Array<{ id: string; startedAt: string; ok: boolean; backupId: string | null; storedBytes: number; jobs: number; measuredSeconds: number | null; predictedSeconds: number | null; failure: DrillRecord['failure'] }>;
}

/**
 * `coffer report`: the repository's state as one JSON document or one self-contained HTML page
 * (src/observe/report-html.ts): per database, the status row (the objectives of `status`), its
 * backups over time and its drills. Reads manifests and drill records (read access). Exit 0
 * whatever the state: `status` is the check that fails; the report is what people look at.
 */
export async function runReportCommand(flags: Values<typeof reportOptions>, ctx: CliContext, now: () => Date = () => new Date(), config?: Pick<LoadedConfig, 'sources' | 'forSource'>): Promise<ReportData> {
  const sources = chooseSources<Values<typeof reportOptions>>(flags, config);
  const notes: string[] = [];
  const retention: ReportData['retention'] = [];
  const databases: ReportDatabase[] = [];
  const locations: string[] = [];
  for (const s of sources ?? [{ name: undefined, flags }]) {
    try {
      const got = await gather(s.flags, { ...ctx, ...(s.name !== undefined ? { log: withFields(ctx.log, { source: s.name }) } : {}) }, now);
      locations.push(got.location);
      retention.push({ repository: got.location, ...(s.name !== undefined ? { source: s.name } : {}), ...(await retentionOf(s.flags, ctx)) });
      databases.push(...got.databases.map((d) => (s.name !== undefined ? { source: s.name, ...d } : d)));
      if (got.databases.length === 0) notes.push(`No backup in ${got.location}.`);
    } catch (err) {
      // One source that cannot be read is a note of the report (its page still says everything else).
      if (s.name === undefined || err instanceof InterruptedError || ctx.signal.aborted) throw err;
      notes.push(`Source ${s.name}: ${formatErrorLine(err)}`);
      ctx.log.error(`source ${JSON.stringify(s.name)} failed: ${formatErrorLine(err)}`, { source: s.name });
    }
  }
  const data: ReportData = {
    format: 'coffer-report',
    formatVersion: 1,
    generatedAt: now().toISOString(),
    repository: locations.join(', ') || (sources ?? []).map((x) => x.name).join(', '),
    coffer: COFFER_VERSION,
    objectives: {
      maxAge: flags.maxAge.text,
      ...(flags.rtoTarget ? { rtoTarget: flags.rtoTarget.text } : {}),
      ...(flags.rpoTarget ? { rpoTarget: flags.rpoTarget.text } : {}),
      ...(flags.maxDrillAge ? { maxDrillAge: flags.maxDrillAge.text } : {}),
    },
    notes,
    retention,
    databases,
  };
  if (flags.html !== undefined) {
    const file = path.resolve(ctx.cwd, flags.html);
    await writeFileAtomic(file, renderReportHtml(data), { mode: 0o644 });
    ctx.log.info('report written', { file, databases: data.databases.length });
  }
  if (flags.json || flags.html === undefined) ctx.stdout(`${JSON.stringify(data, null, 2)}\n`);
  return data;
}

/**
 * The repository's retention against the policy, as `retention check` sees it, when the
 * report's credentials may read the bucket's configuration (readers may not: then a note says
 * so); a local directory has no lifecycle (`coffer prune` applies the policy there).
 */
async function retentionOf(flags: Values<typeof reportOptions>, ctx: CliContext): Promise<{ checked: boolean; drift: string[]; note?: string }> {
  if (flags.from.kind !== 's3') return { checked: false, drift: [], note: 'a local directory has no lifecycle rules: coffer prune applies the policy there' };
  const admin = await openBucketAdmin(flags.from, resolveS3Settings(flags, ctx.env));
  try {
    const { drift } = await retentionDrift(admin, retentionPolicy(flags), flags.objectLockMode, ctx.signal);
    return { checked: true, drift };
  } catch (err) {
    if (err instanceof StorageError && err.code === 'AccessDenied') {
      return { checked: false, drift: [], note: "not checked: these credentials may not read the bucket's configuration (coffer retention check with the admin's)" };
    }
    throw err;
  } finally {
    admin.close();
  }
}

/** One repository's databases for the report. */
async function gather(flags: Values<typeof reportOptions>, ctx: CliContext, now: () => Date): Promise<{ location: string; databases: ReportDatabase[] }> {
  const store = await openStore(flags.from, resolveS3Settings(flags, ctx.env));
  try {
    // A local repository that is not there (a typo, a volume not mounted) is no empty one: exit 4.
    await store.assertPresent?.({ signal: ctx.signal });
    const drillKeys = new Map<string, string[]>();
    const keys = await listBackupKeys(store, { signal: ctx.signal, drills: drillKeys, ...(flags.db.length === 1 ? { database: flags.db[0] } : {}) });
    const byDb = new Map<string, BackupKeyEntry[]>();
    for (const k of keys) byDb.set(k.database, [...(byDb.get(k.database) ?? []), k]);
    const dbs = flags.db.length > 0 ? flags.db : [...new Set([...byDb.keys(), ...drillKeys.keys()])].sort();
    const databases: ReportDatabase[] = [];
    for (const database of dbs) {
      const all = (byDb.get(database) ?? []).sort(newestFirst);
      const entries = await loadManifests(all.slice(0, flags.limit), (k) => loadEntry(store, k, ctx.signal), (key, err) =>
        ctx.log.warn(`${err.message}: left out of the report`, { key }),
      );
      // The status row: the newest full backup, as status chooses it.
      const newestFull = all.find((k) => k.content !== 'partial');
      const status = await statusOf(store, database, newestFull, flags.maxAge.ms, now(), ctx.signal);
      await addDrill(store, status, drillKeys.get(database) ?? [], now(), ctx);
      judge(status, flags, flags.maxAge.text);
      databases.push({
        database,
        status,
        backups: entries.map(({ tier, manifest: m }) => ({
          id: m.id,
          tier,
          kind: m.kind,
          startedAt: m.startedAt,
          finishedAt: m.finishedAt,
          durationSeconds: m.durationMs / 1000,
          storedBytes: m.dump.size,
          dumpBytes: m.dump.dumpBytes,
          warnings: m.warnings ?? [],
        })),
        drills: await drillHistory(store, drillKeys.get(database) ?? [], ctx),
      });
    }
    return { location: store.location, databases };
  } finally {
    store.close();
  }
}

/** The newest drills of a database, each with the prediction the successful drill before it gave for its size. */
async function drillHistory(store: ObjectStore, keys: string[], ctx: CliContext): Promise<ReportDatabase['drills']> {
  const records: DrillRecord[] = [];
  for (const key of [...keys].sort().reverse().slice(0, DRILLS_SHOWN + 10)) {
    try {
      records.push(decodeDrillRecord(await store.getBytes(key, { signal: ctx.signal }), key));
    } catch (err) {
      if (!(err instanceof IntegrityError)) throw err;
      ctx.log.warn(`${err.message}: left out of the report`, { key });
    }
  }
  return records.slice(0, DRILLS_SHOWN).map((d, i) => {
    const before = records.slice(i + 1).find((x) => x.ok);
    return {
      id: d.id,
      startedAt: d.startedAt,
      ok: d.ok,
      backupId: d.backupId,
      storedBytes: d.storedBytes,
      jobs: d.jobs,
      measuredSeconds: measuredRestoreSeconds(d),
      predictedSeconds: before ? (predictRestore(before, d.storedBytes)?.seconds ?? null) : null,
      failure: d.failure,
    };
  });
}
