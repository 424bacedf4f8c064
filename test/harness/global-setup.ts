import type { TestProject } from 'vitest/node';

export interface RgwInfo {
  endpoint: string;
  region: string;
  admin: { accessKeyId: string; secretAccessKey: string };
  users: Record<string, { accessKeyId: string; secretAccessKey: string }>;
  /** The cluster's directory (ceph.conf), for radosgw-admin (see processLifecycle in rgw.ts). */
  dir: string;
}
export interface PgInfo {
  host: string;
  port: number;
  user: string;
  binDir: string;
  dataDir: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    rgw: RgwInfo | null;
    pg: PgInfo | null;
  }
}

type Stopper = { stop(): Promise<void> };
const running: Stopper[] = [];

/**
 * Starts the real components once per test run: a throwaway Ceph RGW (S3) and a throwaway
 * PostgreSQL 15 cluster. COFFER_TEST_SERVICES=none skips both (for pure unit tests while
 * developing); tests that need them then fail loudly in their own setup.
 */
export async function setup(project: TestProject): Promise<void> {
  if (process.env.COFFER_TEST_SERVICES === 'none') {
    project.provide('rgw', null);
    project.provide('pg', null);
    return;
  }
  const { startRgw } = await import('./rgw.js');
  const { startThrowawayCluster } = await import('../../src/demo/throwaway-cluster.js');
  const [r, p] = await Promise.allSettled([startRgw({ users: ['writer', 'reader', 'other'] }), startThrowawayCluster({})]);
  if (r.status === 'fulfilled') running.push(r.value);
  if (p.status === 'fulfilled') running.push(p.value);
  if (r.status === 'rejected' || p.status === 'rejected') {
    await teardown();
    throw r.status === 'rejected' ? r.reason : (p as PromiseRejectedResult).reason;
  }
  const rgw = r.value;
  const pg = p.value;
  project.provide('rgw', { endpoint: rgw.endpoint, region: rgw.region, admin: rgw.admin, users: rgw.users, dir: rgw.dir });
  project.provide('pg', { host: pg.host, port: pg.port, user: pg.superuser, binDir: pg.binDir, dataDir: pg.dataDir });
}

export async function teardown(): Promise<void> {
  await Promise.allSettled(running.splice(0).map((s) => s.stop()));
}
