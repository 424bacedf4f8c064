import { listBackups, replacedIds, type BackupEntry } from '../../catalog/catalog.js';
import { listPhysicalBackups, type PhysicalEntry } from '../../catalog/physical-catalog.js';
import { listWal, reachFrom, summarizeWal, type WalObject, type WalSummary } from '../../physical/wal-catalog.js';
import type { ObjectStore } from '../../store/object-store.js';
import { openStore, type RepositoryRef, type S3Settings } from '../../store/open.js';
import { formatBytes } from '../../observe/log.js';
import type { CliContext } from '../context.js';
import * as path from 'node:path';
import { IntegrityError, UsageError } from '../../errors.js';
import { readTrustedSigners } from '../../trust/allowed-signers.js';
import { RepositoryTrust, type CheckedManifest } from '../../trust/manifest-trust.js';

/** One row of `coffer list --json`. */
export interface ListRow {
  id: string;
  database: string;
  tier: string;
  label: string | null;
  kind: string;
  startedAt: string;
  finishedAt: string;
  size: number;
  sha256: string;
  key: string;
  serverVersion: string;
  /**
   * With `--verify-signatures`: the manifest's signature against the trusted signers, and the
   * chain (`chain-broken` when the manifest names a predecessor that is missing out of turn or
   * changed). `problem` is the one-line reason when the state is not `ok`.
   */
  signature?: { state: 'ok' | 'unsigned' | 'unknown-signer' | 'bad-signature' | 'chain-broken'; signer?: string; fingerprint?: string; problem?: string };
  /** The backup this one replaced (`coffer rekey`: same data, new recipients); `null` for a backup as taken. */
  replaces: string | null;
}

export function toRow(e: BackupEntry): ListRow {
  const m = e.manifest;
  return {
    id: m.id,
    database: m.database,
    tier: m.tier,
    label: m.label,
    kind: m.kind,
    startedAt: m.startedAt,
    finishedAt: m.finishedAt,
    size: m.dump.size,
    sha256: m.dump.sha256,
    key: m.dump.key,
    serverVersion: m.postgres.serverVersion,
    replaces: m.replaces?.id ?? null,
  };
}

/**
 * One physical backup in `coffer list --json`: a cluster instead of a database, kind `physical`
 * (an online base backup) or `volume` (a stopped cluster's directory), and the WAL it spans.
 */
export interface PhysicalListRow {
  id: string;
  cluster: string;
  tier: string;
  label: string | null;
  kind: 'physical' | 'volume';
  startedAt: string;
  finishedAt: string;
  size: number;
  sha256: string;
  key: string;
  serverVersion: string | null;
  majorVersion: number;
  /** Start and end of the WAL inside a base backup (`null` for a volume archive). */
  wal: { timeline: number; startLsn: string; stopLsn: string } | null;
  /**
   * How far point-in-time recovery reaches from it: the last archived segment of the unbroken
   * run that continues the backup's WAL, and when it was stored (`null` for a volume archive).
   */
  reach: { segment: string; storedAt: string | null } | null;
  attachments: string[];
  /** With `--verify-signatures`: the manifest's signature (physical backups are not chained). */
  signature?: ListRow['signature'];
}

export function toPhysicalRow(e: PhysicalEntry, reach: PhysicalListRow['reach'] = null): PhysicalListRow {
  const m = e.manifest;
  return {
    id: m.id,
    cluster: m.cluster,
    tier: m.tier,
    label: m.label,
    kind: m.kind === 'basebackup' ? 'physical' : 'volume',
    startedAt: m.startedAt,
    finishedAt: m.finishedAt,
    size: m.archive.size,
    sha256: m.archive.sha256,
    key: m.archive.key,
    serverVersion: m.postgres.serverVersion ?? null,
    majorVersion: m.postgres.majorVersion,
    wal: m.wal ? { timeline: m.wal.timeline, startLsn: m.wal.startLsn, stopLsn: m.wal.stopLsn } : null,
    reach,
    attachments: m.attachments.map((a) => a.name),
  };
}

/** Each base backup's reach, from one WAL listing per cluster. */
async function reaches(store: ObjectStore, entries: PhysicalEntry[], signal: AbortSignal): Promise<Array<PhysicalListRow['reach']>> {
  const byCluster = new Map<string, Promise<{ objects: WalObject[]; summary: WalSummary | undefined }>>();
  const of = (cluster: string): Promise<{ objects: WalObject[]; summary: WalSummary | undefined }> => {
    let p = byCluster.get(cluster);
    if (!p) {
      p = listWal(store, cluster, signal).then((objects) => {
        try {
          return { objects, summary: summarizeWal(cluster, objects, new Date()) };
        } catch {
          return { objects, summary: undefined }; // another segment size: no reach shown
        }
      });
      byCluster.set(cluster, p);
    }
    return p;
  };
  return Promise.all(
    entries.map(async (e) => {
      const w = e.manifest.wal;
      if (!w) return null;
      const { objects, summary } = await of(e.cluster);
      return summary ? reachFrom(summary, objects, w.stopSegment) : { segment: w.stopSegment, storedAt: null };
    }),
  );
}

/**
 * `coffer list`: completed backups (those with a manifest), newest first: the logical backups
 * of databases, then the physical backups of clusters. `--db` shows only that database's,
 * `--cluster` only that cluster's.
 */
export async function listRepository(
  repo: RepositoryRef,
  s3: S3Settings,
  flags: { database?: string | undefined; cluster?: string | undefined; json?: boolean; verifySignatures?: boolean; trustedSigners?: string | undefined },
  ctx: CliContext,
): Promise<Array<ListRow | PhysicalListRow>> {
  const { database, cluster } = flags;
  if (flags.verifySignatures && flags.trustedSigners === undefined) {
    throw new UsageError('--verify-signatures needs --trusted-signers FILE (an OpenSSH allowed_signers file), or COFFER_TRUSTED_SIGNERS_FILE');
  }
  const trusted = flags.verifySignatures ? await readTrustedSigners(path.resolve(ctx.cwd, flags.trustedSigners!)) : undefined;
  const store = await openStore(repo, s3);
  const problems: string[] = [];
  // A manifest that cannot be read, or describes another backup (moved, swapped, replayed), is a
  // problem of the kind --verify-signatures exists to find (restore and verify refuse it).
  const onInvalid = (key: string, err: Error): void => {
    if (trusted) problems.push(`unreadable manifest ${key}: ${err.message}`);
    else ctx.log.warn(`skipping an unreadable manifest: ${err.message}`, { key });
  };
  let entries: BackupEntry[] = [];
  let physical: PhysicalEntry[] = [];
  let reach: Array<PhysicalListRow['reach']> = [];
  let signatures: Array<NonNullable<ListRow['signature']>> | undefined;
  let physicalSignatures: Array<NonNullable<ListRow['signature']>> | undefined;
  try {
    // A local repository that is not there (a typo, a volume not mounted) is no empty one: exit 4.
    await store.assertPresent?.({ signal: ctx.signal });
    if (cluster === undefined) entries = await listBackups(store, { database, signal: ctx.signal, onInvalid });
    if (database === undefined) physical = await listPhysicalBackups(store, { cluster, signal: ctx.signal, onInvalid });
    reach = await reaches(store, physical, ctx.signal);
    if (trusted) {
      const trust = new RepositoryTrust(store, trusted, ctx.signal);
      signatures = await signatureStates(trust, entries, problems);
      physicalSignatures = [];
      for (const e of physical) {
        const st = await trust.physicalSignature(store, e, ctx.signal);
        if (st.state !== 'signed') problems.push(st.problem);
        physicalSignatures.push(st.state === 'signed' ? { state: 'ok', signer: st.principals, fingerprint: st.fingerprint } : { state: st.state, problem: st.problem, ...(st.fingerprint ? { fingerprint: st.fingerprint } : {}) });
      }
    }
  } finally {
    store.close();
  }
  // A backup replaced by `coffer rekey` is the same data as its replacement: listed once, as the
  // replacement; with --verify-signatures only a replacement the trusted signers vouch for hides it.
  const replacers = signatures ? entries.filter((_, i) => signatures[i]!.state === 'ok') : entries;
  const replaced = new Set(replacers.flatMap((e) => replacedIds(e.manifest).map((id) => `${e.database}\0${id}`)));
  const shownIdx = entries.map((_, i) => i).filter((i) => !replaced.has(`${entries[i]!.database}\0${entries[i]!.id}`));
  const hidden = entries.length - shownIdx.length;
  const rows = shownIdx.map((i) => (signatures ? { ...toRow(entries[i]!), signature: signatures[i]! } : toRow(entries[i]!)));
  // Every problem on stderr (one line each), the listing on stdout, then exit 5.
  for (const p of problems) ctx.log.error(p);
  const failed = (): IntegrityError =>
    new IntegrityError(`${problems.length} signature, chain or manifest problem(s); the first: ${problems[0]}`, { hint: 'do not restore the backups marked in the SIGNATURE column; find out who wrote or removed them' });
  const physicalRows = physical.map((e, i) => (physicalSignatures ? { ...toPhysicalRow(e, reach[i] ?? null), signature: physicalSignatures[i]! } : toPhysicalRow(e, reach[i] ?? null)));
  if (flags.json) {
    const all = [...rows, ...physicalRows];
    ctx.stdout(`${JSON.stringify(all, null, 2)}\n`);
    if (problems.length > 0) throw failed();
    return all;
  }
  if (rows.length === 0 && physicalRows.length === 0) {
    const of = database !== undefined ? ` for database ${database}` : cluster !== undefined ? ` for cluster ${cluster}` : '';
    ctx.stdout(`no backups in ${store.location}${of}\n`);
    return [];
  }
  const time = (t: string): string => t.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  if (rows.length > 0) {
    const sig = (r: ListRow): string[] => (r.signature ? [r.signature.state === 'ok' ? `ok (${r.signature.signer})` : r.signature.state] : []);
    printTable(ctx, [['ID', 'TIME (UTC)', 'DATABASE', 'KIND', 'TIER', 'SIZE', ...(signatures ? ['SIGNATURE'] : []), 'LABEL']].concat(
      rows.map((r) => [r.id, time(r.startedAt), r.database, r.kind === 'custom' ? 'full' : r.kind, r.tier, formatBytes(r.size), ...sig(r), [r.label ?? '', r.replaces ? `(rekeyed: replaces ${r.replaces})` : ''].filter((x) => x !== '').join(' ')]),
    ));
    if (hidden > 0) ctx.stdout(`(${hidden} backup${hidden === 1 ? '' : 's'} replaced by coffer rekey not shown: the same data under their old recipients, kept until they expire)\n`);
  }
  if (physicalRows.length > 0) {
    if (rows.length > 0) ctx.stdout('\n');
    const sig = (r: PhysicalListRow): string[] => (r.signature ? [r.signature.state === 'ok' ? `ok (${r.signature.signer})` : r.signature.state] : []);
    printTable(ctx, [['ID', 'TIME (UTC)', 'CLUSTER', 'KIND', 'TIER', 'SIZE', 'PG', 'WAL (START-END)', 'RECOVERS UP TO', ...(physicalSignatures ? ['SIGNATURE'] : []), 'LABEL']].concat(
      physicalRows.map((r) => [
        r.id,
        time(r.startedAt),
        r.cluster,
        r.kind,
        r.tier,
        formatBytes(r.size),
        String(r.majorVersion),
        r.wal ? `${r.wal.startLsn}-${r.wal.stopLsn}` : '',
        r.reach ? `${r.reach.segment}${r.reach.storedAt ? ` (${time(r.reach.storedAt)})` : ' (backup only)'}` : '',
        ...sig(r),
        r.label ?? '',
      ]),
    ));
  }
  if (problems.length > 0) throw failed();
  return [...rows, ...physicalRows];
}

/**
 * The signature state of each entry (in order), and every problem as one line into `problems`:
 * each untrusted manifest, each break of a database's chain.
 */
async function signatureStates(trust: RepositoryTrust, entries: BackupEntry[], problems: string[]): Promise<Array<NonNullable<ListRow['signature']>>> {
  const dbs = [...new Set(entries.map((e) => e.database))];
  const checked = new Map<string, CheckedManifest>();
  for (const db of dbs) {
    const t = await trust.database(db);
    for (const m of t.manifests) {
      checked.set(m.key, m);
      if (m.signature.state !== 'signed') problems.push(m.signature.problem);
    }
    problems.push(...t.chainBreaks);
  }
  return entries.map((e) => {
    const m = checked.get(e.manifestKey);
    if (!m) return { state: 'unsigned', problem: `backup ${e.database}/${e.id}: its manifest disappeared while it was being checked` };
    const s = m.signature;
    if (s.state !== 'signed') return { state: s.state, problem: s.problem, ...(s.fingerprint ? { fingerprint: s.fingerprint } : {}) };
    if (m.chain !== undefined) return { state: 'chain-broken', signer: s.principals, fingerprint: s.fingerprint, problem: m.chain };
    return { state: 'ok', signer: s.principals, fingerprint: s.fingerprint };
  });
}

function printTable(ctx: CliContext, table: string[][]): void {
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  for (const row of table) ctx.stdout(`${row.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()}\n`);
}
