/**
 * The files coffer ships for least privilege and local testing: the IAM policies in minio/, their
 * copies in docs/iam.md, minio/setup.sh and docker-compose.yml. No Docker engine runs in CI, so
 * the compose file is parsed with the yaml package and checked against the essentials of the
 * Compose specification (known keys, pinned images, healthchecks, depends_on conditions, volumes).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse, parseDocument } from 'yaml';
import { describe, expect, it } from 'vitest';

const ROOT = new URL('../../', import.meta.url);
const read = (p: string): string => readFileSync(new URL(p, ROOT), 'utf8');

interface Statement {
  Sid?: string;
  Effect: 'Allow' | 'Deny';
  Action: string[];
  Resource: string[];
  Condition?: Record<string, Record<string, string[]>>;
  Principal?: unknown;
}
interface Policy {
  Version: string;
  Statement: Statement[];
}

const ROLES = {
  writer: ['s3:AbortMultipartUpload', 's3:ListBucket', 's3:ListMultipartUploadParts', 's3:PutObject', 's3:PutObjectRetention', 's3:PutObjectTagging'],
  reader: ['s3:GetObject', 's3:ListBucket'],
  admin: [
    's3:CreateBucket',
    's3:GetBucketObjectLockConfiguration',
    's3:GetLifecycleConfiguration',
    's3:ListBucket',
    's3:PutBucketObjectLockConfiguration',
    's3:PutLifecycleConfiguration',
  ],
} as const;
type Role = keyof typeof ROLES;
const BUCKET_ARN = 'arn:aws:s3:::coffer';
const OBJECT_ARN = 'arn:aws:s3:::coffer/backups/*';
const BUCKET_LEVEL = new Set(['s3:ListBucket', 's3:CreateBucket', 's3:GetBucketObjectLockConfiguration', 's3:PutBucketObjectLockConfiguration', 's3:GetLifecycleConfiguration', 's3:PutLifecycleConfiguration']);

function policy(role: Role): Policy {
  return JSON.parse(read(`minio/coffer-${role}.json`)) as Policy;
}

describe('IAM policies (minio/*.json)', () => {
  for (const role of Object.keys(ROLES) as Role[]) {
    it(`coffer-${role} grants exactly its role's actions, on the repository only`, () => {
      const p = policy(role);
      expect(p.Version).toBe('2012-10-17');
      const allows = p.Statement.filter((s) => s.Effect === 'Allow');
      expect([...new Set(allows.flatMap((s) => s.Action))].sort()).toEqual([...ROLES[role]]);
      for (const s of p.Statement) {
        expect(['Allow', 'Deny']).toContain(s.Effect);
        expect(s.Principal, 'identity policies carry no Principal').toBeUndefined();
        for (const a of s.Action) expect(a, 'no wildcard actions').toMatch(/^s3:[A-Za-z]+$/);
      }
      for (const s of allows) {
        for (const a of s.Action) {
          // Bucket-level actions on the bucket, object actions only under the repository prefix.
          expect(s.Resource, `${a}`).toEqual([BUCKET_LEVEL.has(a) ? BUCKET_ARN : OBJECT_ARN]);
        }
        if (s.Action.includes('s3:ListBucket') && role !== 'admin') {
          expect(s.Condition).toEqual({ StringLike: { 's3:prefix': ['backups/*'] } });
        }
      }
    });
  }

  it('the writer can neither read, delete, unlock nor reconfigure (explicit denies)', () => {
    const p = policy('writer');
    const allowed = p.Statement.filter((s) => s.Effect === 'Allow').flatMap((s) => s.Action);
    expect(allowed.filter((a) => /Get|Delete|Bypass|Lifecycle|Policy|Acl/.test(a))).toEqual([]);
    const denied = p.Statement.filter((s) => s.Effect === 'Deny').flatMap((s) => s.Action);
    expect(denied).toEqual(expect.arrayContaining(['s3:GetObject', 's3:DeleteObject', 's3:DeleteObjectVersion', 's3:BypassGovernanceRetention', 's3:PutLifecycleConfiguration', 's3:PutBucketPolicy']));
    for (const s of p.Statement.filter((x) => x.Effect === 'Deny')) {
      for (const r of s.Resource) expect([BUCKET_ARN, `${BUCKET_ARN}/*`]).toContain(r);
    }
  });

  it('the reader and the admin cannot write or delete objects', () => {
    for (const role of ['reader', 'admin'] as const) {
      const allowed = policy(role).Statement.filter((s) => s.Effect === 'Allow').flatMap((s) => s.Action);
      expect(allowed.filter((a) => /PutObject|DeleteObject|Bypass/.test(a))).toEqual([]);
    }
  });

  it('docs/iam.md shows the same policies', () => {
    const blocks = [...read('docs/iam.md').matchAll(/## (Writer|Reader|Admin) \(`coffer-(\w+)`\)\s+```json\n([\s\S]*?)```/g)];
    expect(blocks.map((b) => b[2])).toEqual(['writer', 'reader', 'admin']);
    for (const b of blocks) expect(JSON.parse(b[3]!)).toEqual(policy(b[2] as Role));
  });

  it('minio/setup.sh is valid sh and installs each policy', () => {
    execFileSync('sh', ['-n', fileURLToPath(new URL('minio/setup.sh', ROOT))]);
    const script = read('minio/setup.sh');
    expect(script).toContain('mc mb --ignore-existing --with-lock');
    expect(script).toMatch(/for role in writer reader admin/);
    expect(script).toContain('"$HERE/coffer-$role.json"');
  });
});

// The Compose specification's top-level and service keys (compose-spec, 2024); anything else is a typo.
const TOP_KEYS = new Set(['version', 'name', 'services', 'networks', 'volumes', 'configs', 'secrets', 'include']);
const SERVICE_KEYS = new Set([
  'image', 'build', 'command', 'entrypoint', 'environment', 'env_file', 'ports', 'expose', 'volumes', 'healthcheck', 'depends_on',
  'restart', 'networks', 'user', 'working_dir', 'labels', 'container_name', 'hostname', 'profiles', 'secrets', 'configs',
  'stop_signal', 'stop_grace_period', 'tmpfs', 'ulimits', 'cap_add', 'cap_drop', 'read_only', 'shm_size', 'logging', 'init',
  'platform', 'pull_policy', 'deploy', 'extra_hosts', 'network_mode', 'security_opt', 'sysctls', 'mem_limit', 'cpus',
]);
const CONDITIONS = new Set(['service_started', 'service_healthy', 'service_completed_successfully']);
const DURATION = /^(\d+(\.\d+)?(us|ms|s|m|h))+$/;

interface Service {
  image?: string;
  healthcheck?: { test?: unknown; interval?: string; timeout?: string; retries?: number; disable?: boolean };
  depends_on?: Record<string, { condition?: string }> | string[];
  restart?: string;
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  entrypoint?: string[];
}

describe('docker-compose.yml', () => {
  const text = read('docker-compose.yml');
  const doc = parseDocument(text);
  const compose = parse(text) as { services: Record<string, Service>; volumes?: Record<string, unknown> };

  it('is well-formed YAML with only Compose keys', () => {
    expect(doc.errors).toEqual([]);
    expect(doc.warnings).toEqual([]);
    for (const k of Object.keys(compose)) expect(TOP_KEYS.has(k) || k.startsWith('x-'), k).toBe(true);
    expect(Object.keys(compose.services).sort()).toEqual(['db', 'minio', 'minio-init']);
    for (const [name, svc] of Object.entries(compose.services)) {
      for (const k of Object.keys(svc)) expect(SERVICE_KEYS.has(k) || k.startsWith('x-'), `${name}.${k}`).toBe(true);
    }
  });

  it('pins every image to a version (no :latest, no untagged image)', () => {
    for (const [name, svc] of Object.entries(compose.services)) {
      expect(svc.image, name).toMatch(/^[a-z0-9./-]+:(?!latest$)[A-Za-z0-9._-]*\d[A-Za-z0-9._-]*$/);
    }
  });

  it('has healthchecks on the long-running services and waits for them', () => {
    for (const [name, svc] of Object.entries(compose.services)) {
      if (svc.restart === 'no') continue; // one-shot
      const hc = svc.healthcheck;
      expect(hc, name).toBeDefined();
      expect(Array.isArray(hc!.test) && ['CMD', 'CMD-SHELL'].includes((hc!.test as string[])[0]!), name).toBe(true);
      for (const d of [hc!.interval, hc!.timeout]) expect(d, name).toMatch(DURATION);
      expect(hc!.retries).toBeGreaterThan(0);
    }
    for (const [name, svc] of Object.entries(compose.services)) {
      if (!svc.depends_on) continue;
      expect(Array.isArray(svc.depends_on), `${name}: long depends_on syntax`).toBe(false);
      for (const [dep, cond] of Object.entries(svc.depends_on as Record<string, { condition?: string }>)) {
        expect(compose.services[dep], `${name} depends on unknown ${dep}`).toBeDefined();
        expect(CONDITIONS.has(cond.condition ?? ''), `${name} → ${dep}`).toBe(true);
        if (cond.condition === 'service_healthy') expect(compose.services[dep]!.healthcheck, dep).toBeDefined();
      }
    }
    expect(compose.services['minio-init']!.depends_on).toEqual({ minio: { condition: 'service_healthy' } });
  });

  it('runs PostgreSQL with database vault and user vault, and the setup script from minio/', () => {
    const db = compose.services.db!;
    expect(db.environment).toMatchObject({ POSTGRES_DB: 'vault', POSTGRES_USER: 'vault' });
    expect(db.image).toMatch(/^postgres:15\./);
    const init = compose.services['minio-init']!;
    expect(init.entrypoint).toEqual(['/bin/sh', '/coffer/minio/setup.sh']);
    expect(init.volumes).toEqual(['./minio:/coffer/minio:ro']);
  });

  it('declares its named volumes, bind-mounts paths that exist, and publishes ports on localhost only', () => {
    for (const [name, svc] of Object.entries(compose.services)) {
      for (const v of svc.volumes ?? []) {
        const source = v.split(':')[0]!;
        if (source.startsWith('.') || source.startsWith('/')) expect(existsSync(new URL(source, ROOT)), `${name}: ${source}`).toBe(true);
        else expect(compose.volumes && source in compose.volumes, `${name}: volume ${source} declared`).toBe(true);
      }
      for (const p of svc.ports ?? []) expect(p, name).toMatch(/^127\.0\.0\.1:\d+:\d+$/);
    }
  });
});
