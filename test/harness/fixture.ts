/**
 * The one setup of the tests that run coffer: a temporary directory, an age identity file and its
 * recipient, optionally an S3 client and a fresh bucket on the run's RGW and a source database on
 * the run's PostgreSQL cluster, the environment for the CLI, and the teardown of all of it.
 *
 *   const f = useFixture({ name: 'restore', s3: true, db: 'varied' });
 *   ...
 *   const m = await f.backup(f.repo('r'), f.db);
 *
 * useFixture registers the beforeAll/afterAll hooks of the file (or of the describe it is called
 * in); the values (tmp, recipient, bucket, db, …) are set once its beforeAll has run, `pg` and
 * `rgw` at once.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, expect, inject } from 'vitest';
import type { BackupManifest } from '../../src/catalog/manifest.js';
import { startFaultProxy, type FaultProxy } from './fault-proxy.js';
import { baseEnv, pgEnv, runCoffer, s3Env, writeIdentityFile, type CofferRun } from './cli.js';
import type { RgwInfo } from './global-setup.js';
import { createDatabase, dropDatabase, fillLargeTable, pgFromInject, quoteIdent, uniqueDbName, type Fixture as DbFixture, type PgHandle } from './pg.js';
import { createTestBucket, s3ClientFor } from './rgw.js';

/** A database made from a fixture: its name is `<prefix>_<hex>`, `fillMB` MB of incompressible rows added. */
export interface DatabaseSpec {
  fixture?: DbFixture;
  prefix?: string;
  fillMB?: number;
}

export interface FixtureOptions {
  /** Names the temporary directory: `coffer-<name>-…`. */
  name: string;
  /** An S3 client (RGW's admin user) and its variables in env(); a fresh bucket unless `bucket: false`. */
  s3?: boolean;
  bucket?: boolean;
  /** The source database, dropped at teardown. */
  db?: DbFixture | DatabaseSpec;
}

export class TestFixture {
  /** The run's PostgreSQL cluster (from the global setup). */
  readonly pg: PgHandle;
  /** The run's RGW (from the global setup); null when the run has none. */
  readonly rgw: RgwInfo | null;
  // Set by setup() (beforeAll): read them in tests and later hooks. s3 and bucket with `s3`, db with `db`.
  tmp!: string;
  identityFile!: string;
  recipient!: string;
  s3!: S3Client;
  bucket!: string;
  /** The source database. */
  db!: string;
  readonly #drop: string[] = [];
  readonly #dropRoles: string[] = [];
  readonly #proxies: FaultProxy[] = [];

  constructor(readonly options: FixtureOptions) {
    this.pg = pgFromInject(inject('pg'));
    this.rgw = inject('rgw');
  }

  async setup(): Promise<void> {
    const o = this.options;
    this.tmp = await fsp.mkdtemp(path.join(os.tmpdir(), `coffer-${o.name}-`));
    ({ identityFile: this.identityFile, recipient: this.recipient } = await writeIdentityFile(this.tmp));
    if (o.s3) {
      this.s3 = s3ClientFor(this.#rgw(), this.#rgw().admin);
      if (o.bucket !== false) this.bucket = await createTestBucket(this.s3);
    }
    if (o.db) this.db = await this.database(typeof o.db === 'string' ? { fixture: o.db } : o.db);
  }

  async teardown(): Promise<void> {
    const errors: unknown[] = [];
    await Promise.all(this.#proxies.splice(0).map((p) => p.stop()));
    for (const db of this.#drop.splice(0)) await dropDatabase(this.pg, db).catch((err: unknown) => errors.push(err));
    // After the databases (a role that owns one cannot be dropped); best effort, as a role may still own objects elsewhere.
    for (const role of this.#dropRoles.splice(0)) await this.pg.psql(`DROP ROLE IF EXISTS ${quoteIdent(role)};`).catch(() => undefined);
    this.s3?.destroy();
    if (this.tmp) await fsp.rm(this.tmp, { recursive: true, force: true });
    if (errors.length) throw errors[0];
  }

  #rgw(): RgwInfo {
    if (!this.rgw) throw new Error('test fixture: no RGW in this run (unset COFFER_TEST_SERVICES=none)');
    return this.rgw;
  }

  /** A path in the temporary directory. */
  path(...names: string[]): string {
    return path.join(this.tmp, ...names);
  }

  /** `s3://<bucket>/<prefix>`. */
  repo(prefix: string): string {
    return `s3://${this.bucket}/${prefix}`;
  }

  /**
   * Environment for coffer: nothing inherited, the test cluster's libpq variables, RGW's when the
   * fixture has S3 (`endpoint` instead of RGW's, e.g. a fault proxy), then `extra`.
   */
  env(extra: Record<string, string> = {}, endpoint?: string): Record<string, string> {
    const s3 = this.options.s3 ? { ...s3Env(this.#rgw()), ...(endpoint ? { AWS_ENDPOINT_URL_S3: endpoint } : {}) } : {};
    return baseEnv({ ...pgEnv(this.pg), ...s3, ...extra });
  }

  /** Runs coffer to completion in env() (plus `extra`). */
  run(args: string[], extra: Record<string, string> = {}): Promise<CofferRun> {
    return runCoffer(args, { env: this.env(extra) });
  }

  /** `coffer backup --json` of `db` into `repo` (with the fixture's recipient), required to succeed: its manifest. */
  async backup(repo: string, db: string, args: string[] = [], env = this.env()): Promise<BackupManifest> {
    const r = await runCoffer(['backup', '--to', repo, '--db', db, '--recipient', this.recipient, '--json', ...args], { env });
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout) as BackupManifest[])[0]!;
  }

  /** A fault proxy in front of RGW (pass its endpoint to env()), stopped at teardown. */
  async faultProxy(): Promise<FaultProxy> {
    const p = await startFaultProxy(this.#rgw().endpoint);
    this.#proxies.push(p);
    return p;
  }

  /** A database from a fixture (unique name), dropped at teardown. */
  async database(spec: DatabaseSpec = {}): Promise<string> {
    const db = this.dropAtEnd(await createDatabase(this.pg, uniqueDbName(spec.prefix), spec.fixture ?? 'empty'));
    if (spec.fillMB) await fillLargeTable(this.pg, db, spec.fillMB);
    return db;
  }

  /** Drops `db` at teardown (if it exists then); returns it. */
  dropAtEnd(db: string): string {
    this.#drop.push(db);
    return db;
  }

  /** Drops the roles at teardown, after the databases. */
  dropRolesAtEnd(...roles: string[]): void {
    this.#dropRoles.push(...roles);
  }
}

/** A fixture set up in beforeAll and torn down in afterAll of the current file or describe. */
export function useFixture(options: FixtureOptions): TestFixture {
  const f = new TestFixture(options);
  beforeAll(() => f.setup());
  afterAll(() => f.teardown());
  return f;
}
