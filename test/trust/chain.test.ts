import { createHash } from 'node:crypto';
/**
 * The chain rules of src/trust/manifest-trust.ts on synthetic repositories (file store, no
 * PostgreSQL): what the writer chains to (listing only), and when a missing predecessor is a break
 * (an older trusted backup of ITS tier remains) or an expiry (none does), across tiers.
 */
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupKeys, type Tier } from '../../src/catalog/layout.js';
import { encodeManifest, type BackupManifest } from '../../src/catalog/manifest.js';
import { FsStore } from '../../src/store/fs.js';
import { parseAllowedSigners } from '../../src/trust/allowed-signers.js';
import { manifestSigner, previousSignedManifest, RepositoryTrust, sha256Hex } from '../../src/trust/manifest-trust.js';
import { generateSigningKey, publicKeyLine } from '../../src/trust/signing-key.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'coffer-chain-'));
});
afterAll(async () => rm(root, { recursive: true, force: true }));

const key = generateSigningKey('k').key;
const trusted = parseAllowedSigners(`k ${publicKeyLine(key.publicKey, '')}`, 'signers');
const signer = manifestSigner(key);
const DB = 'app';

/** Writes a backup the way `backup` does: signature, then manifest, chained to the newest signed one. */
async function write(store: FsStore, id: string, tier: Tier, sign = true): Promise<string> {
  const keys = backupKeys(DB, tier, id, 'custom+zstd');
  const previousManifest = sign ? await previousSignedManifest(store, DB) : undefined;
  const m: BackupManifest = {
    format: 'coffer-backup-manifest',
    formatVersion: 1,
    id,
    database: DB,
    tier,
    label: null,
    kind: 'custom',
    cofferVersion: 'test',
    host: 'h',
    postgres: { serverVersion: '15', serverVersionNum: 150000, pgDumpVersion: '15', pgDumpCommand: ['pg_dump'], databaseSizeBytes: 1 },
    compression: { kind: 'zstd', level: 1 },
    encryption: { format: 'age-v1', recipients: [] },
    dump: { key: keys.dump, size: 1, sha256: '0'.repeat(64), dumpBytes: 1 },
    globals: null,
    ...(previousManifest ? { previousManifest } : {}),
    startedAt: 'x',
    finishedAt: 'x',
    durationMs: 1,
    manualRestore: 'x',
  };
  const bytes = encodeManifest(m);
  if (sign) {
    const s = signer.sign(keys.manifest, bytes);
    await store.putBytes(s.key, Buffer.from(s.text));
  }
  await store.putBytes(keys.dump, Buffer.from('x'));
  await store.putBytes(keys.manifest, bytes);
  return keys.manifest;
}

let n = 0;
async function repo(layout: Array<[Tier, boolean?]>): Promise<{ store: FsStore; keys: string[]; ids: string[] }> {
  const store = new FsStore(join(root, `r${n++}`));
  const keys: string[] = [];
  const ids: string[] = [];
  for (const [i, [tier, sign]] of layout.entries()) {
    const id = `20261101T0000${String(i).padStart(2, '0')}Z-0000000${i}`;
    ids.push(id);
    keys.push(await write(store, id, tier, sign ?? true));
  }
  return { store, keys, ids };
}

async function breaks(store: FsStore): Promise<string[]> {
  return (await new RepositoryTrust(store, trusted).database(DB)).chainBreaks;
}

describe('the chain', () => {
  it('the writer chains to the newest signed manifest of any tier, skipping unsigned ones, by listing only', async () => {
    const { store, keys } = await repo([['monthly'], ['weekly'], ['daily', false]]);
    const prev = await previousSignedManifest(store, DB);
    expect(prev?.key).toBe(keys[1]);
    expect(prev?.sha256).toBe(sha256Hex(await store.getBytes(keys[1]!)));
    expect(await breaks(store)).toEqual([]);
  });

  it('a missing predecessor is a break only while an older trusted backup of its tier remains', async () => {
    // monthly, weekly, daily, daily, daily, weekly, daily
    const layout: Array<[Tier]> = [['monthly'], ['weekly'], ['daily'], ['daily'], ['daily'], ['weekly'], ['daily']];
    for (let pos = 0; pos < layout.length; pos++) {
      const { store, keys, ids } = await repo(layout);
      await store.delete(keys[pos]!);
      const tier = layout[pos]![0];
      const olderSameTier = layout.slice(0, pos).some(([t]) => t === tier);
      const named = pos + 1 < layout.length;
      const expected = olderSameTier && named ? [`chain broken: ${DB}/${ids[pos + 1]} names previous manifest ${DB}/${ids[pos]} which is missing`] : [];
      expect(await breaks(store), `position ${pos} (${tier})`).toEqual(expected);
    }
  });

  it('daily backups expired while a monthly one remains are not a break (lifecycle rules, tiers)', async () => {
    const { store, keys } = await repo([['monthly'], ['daily'], ['daily'], ['daily']]);
    await store.delete(keys[1]!);
    await store.delete(keys[2]!);
    expect(await breaks(store)).toEqual([]);
  });

  it('a manifest planted with a junk signature, which the next genuine backup chains to, is a break', async () => {
    // The writer chains by the signature's name only: whoever can write plants F with a .sig
    // named by F's sha256; the next genuine backup then names F, and F's predecessor could go.
    const { store, ids } = await repo([['daily'], ['daily']]);
    const forgedId = '20261101T000010Z-000000aa';
    const fk = backupKeys(DB, 'daily', forgedId, 'custom+zstd');
    const text = (await store.getBytes(backupKeys(DB, 'daily', ids[1]!, 'custom+zstd').manifest)).toString().replaceAll(ids[1]!, forgedId);
    const bytes = Buffer.from(text);
    await store.putBytes(`${fk.manifest}.${createHash('sha256').update(bytes).digest('hex')}.sig`, Buffer.from('junk'));
    await store.putBytes(fk.manifest, bytes);
    const genuine = '20261101T000020Z-000000bb';
    await write(store, genuine, 'daily');
    const t = await new RepositoryTrust(store, trusted).database(DB);
    expect(t.manifests.find((m) => m.id === forgedId)?.signature.state).toBe('bad-signature');
    expect(t.chainBreaks).toEqual([`chain broken: ${DB}/${genuine} names previous manifest ${DB}/${forgedId} which is not signed by a trusted key (bad-signature)`]);
  });

  it('a rekeyed replacement (made later than its id says) does not make an expired newer backup of its tier a break', async () => {
    // daily 1 rekeyed into 1' (same time in its id, objects made at rekey time); dailies 2 and 3
    // expire by creation time while 1' remains: 4 names 3, which is gone; no break.
    const { store, keys, ids } = await repo([['monthly'], ['daily'], ['daily'], ['daily'], ['daily']]);
    const replacementId = `${ids[1]!.slice(0, 17)}ffffffff`;
    const rk = backupKeys(DB, 'daily', replacementId, 'custom+zstd');
    const old = await store.getBytes(keys[1]!);
    const m = JSON.parse(old.toString()) as BackupManifest;
    const prev = await previousSignedManifest(store, DB);
    const replacement: BackupManifest = { ...m, id: replacementId, dump: { ...m.dump, key: rk.dump }, replaces: { id: ids[1]!, manifestKey: keys[1]!, sha256: createHash('sha256').update(old).digest('hex'), rekeyedAt: 'x' }, ...(prev ? { previousManifest: prev } : {}) };
    const bytes = encodeManifest(replacement);
    const sig = signer.sign(rk.manifest, bytes);
    await store.putBytes(sig.key, Buffer.from(sig.text));
    await store.putBytes(rk.dump, Buffer.from('x'));
    await store.putBytes(rk.manifest, bytes);
    await store.delete(keys[1]!); // --delete-old
    await store.delete(keys[2]!); // expired
    await store.delete(keys[3]!); // expired
    const t = await new RepositoryTrust(store, trusted).database(DB);
    expect(t.manifests.find((x) => x.id === replacementId)?.signature.state).toBe('signed');
    expect(t.chainBreaks).toEqual([]);
  });

  it('a predecessor whose bytes changed is a break, and its own signature is bad', async () => {
    const { store, keys, ids } = await repo([['daily'], ['daily']]);
    const text = (await store.getBytes(keys[0]!)).toString().replace('"host": "h"', '"host": "H"');
    await store.delete(keys[0]!);
    await store.putBytes(keys[0]!, Buffer.from(text));
    const t = await new RepositoryTrust(store, trusted).database(DB);
    expect(t.chainBreaks).toEqual([`chain broken: ${DB}/${ids[1]} names previous manifest ${DB}/${ids[0]} whose bytes no longer match the sha256 it recorded`]);
    expect(t.manifests.find((m) => m.key === keys[0])?.signature).toMatchObject({ state: 'bad-signature' });
  });

  describe('a signed backup copied in from another repository (same key, same database name)', () => {
    /** prod: signed backups of `prodTiers` at 00:00:0i; staging (another directory): `staging` signed backups at 00:01:0i, then copied into prod. */
    async function replay(prodTiers: Tier[], staging: Tier[]): Promise<{ store: FsStore; prodIds: string[]; stagingIds: string[] }> {
      const { store, ids } = await repo(prodTiers.map((t) => [t]));
      const dir = join(root, `staging${n++}`);
      const other = new FsStore(dir);
      const stagingIds: string[] = [];
      for (const [i, t] of staging.entries()) {
        const id = `20261101T0001${String(i).padStart(2, '0')}Z-0000001${i}`;
        stagingIds.push(id);
        await write(other, id, t);
      }
      await cp(dir, join(root, `r${n - 2}`), { recursive: true });
      return { store, prodIds: ids, stagingIds };
    }

    it('one copied backup (it names no predecessor) is a break while older signed backups are there, in any tier', async () => {
      for (const [prod, staged] of [[['daily', 'daily'], ['daily']], [['monthly'], ['daily']], [['daily', 'weekly'], ['manual']]] as Array<[Tier[], Tier[]]>) {
        const { store, prodIds, stagingIds } = await replay(prod, staged);
        const b = await breaks(store);
        expect(b, `${prod} + ${staged}`).toEqual([`chain broken: ${DB}/${stagingIds[0]} names no previous manifest, but the older signed backup ${DB}/${prodIds.at(-1)} is in this repository (only the first signed backup of a database has none: was it copied in from another repository?)`]);
      }
    });

    it('a copied chain of two (its root names no predecessor) is a break', async () => {
      const { store, stagingIds } = await replay(['weekly', 'daily', 'daily'], ['daily', 'daily']);
      const b = await breaks(store);
      expect(b).toHaveLength(1);
      expect(b[0]).toMatch(new RegExp(`^chain broken: ${DB}/${stagingIds[0]} names no previous manifest, but the older signed backup `));
      // A later genuine backup of prod chains to the copied one, and the break stays.
      await write(store, '20261101T000200Z-00000099', 'daily');
      expect(await breaks(store)).toHaveLength(1);
    });

    it('the first signed backup after unsigned ones, and a root whose older backups expired, are no break', async () => {
      const { store } = await repo([['daily', false], ['daily', false], ['daily'], ['daily']]);
      expect(await breaks(store)).toEqual([]);
      // The chain's root expired: the next one names a missing predecessor (the oldest of its tier).
      const r = await repo([['daily'], ['daily'], ['daily']]);
      await r.store.delete(r.keys[0]!);
      expect(await breaks(r.store)).toEqual([]);
      // A root alone after its older backups expired (the chain started anew): none is older.
      const lone = await repo([['daily']]);
      await lone.store.delete(lone.keys[0]!);
      await write(lone.store, '20261101T000100Z-00000077', 'daily');
      expect(await breaks(lone.store)).toEqual([]);
    });
  });
});
