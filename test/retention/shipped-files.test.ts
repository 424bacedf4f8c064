/**
 * The files coffer ships for least privilege and local testing: the IAM policies in minio/, their
 * copies in docs/iam.md, minio/setup.sh, seaweedfs/*.sh and docker-compose.yml. No Docker engine
 * runs in CI, so the compose file is validated against the official Compose Specification JSON
 * schema (vendored in test/fixtures/compose-spec/, see its README), plus the semantic checks the
 * schema cannot express (healthchecks, depends_on conditions, mounts, localhost-only ports,
 * profiles); and every image reference in the repository is checked against an allow-list.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { parse, parseAllDocuments, parseDocument } from 'yaml';
import { describe, expect, it } from 'vitest';
import { parseDockerfile, parseImageRef, type ImageRef } from '../harness/dockerfile.js';

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

describe('seaweedfs/*.sh (the SeaweedFS profile of docker-compose.yml)', () => {
  it('are valid sh', () => {
    for (const f of ['seaweedfs/start.sh', 'seaweedfs/setup.sh']) execFileSync('sh', ['-n', fileURLToPath(new URL(f, ROOT))]);
    expect(read('seaweedfs/setup.sh')).toContain('s3.bucket.create -name $BUCKET -withLock');
  });

  interface S3Config {
    identities: { name: string; credentials?: { accessKey: string; secretKey: string }[]; actions?: string[]; policyNames?: string[] }[];
    policies: { name: string; content: string }[];
  }
  const run = (env: Record<string, string>): { status: number; config?: S3Config; stderr: string } => {
    const dir = mkdtempSync(join(tmpdir(), 'coffer-seaweedfs-'));
    try {
      const config = join(dir, 's3.json');
      const base = {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        SEAWEEDFS_ROOT_USER: 'coffer-root',
        SEAWEEDFS_ROOT_PASSWORD: 'root/pw+1',
        COFFER_WRITER_SECRET: 'w-secret',
        COFFER_READER_SECRET: 'r-secret',
        COFFER_ADMIN_SECRET: 'a-secret',
        COFFER_POLICY_DIR: fileURLToPath(new URL('minio', ROOT)),
        COFFER_S3_CONFIG: config,
        SEAWEEDFS_ENTRYPOINT: 'true', // instead of the image's /entrypoint.sh (weed mini)
      };
      try {
        execFileSync('sh', [fileURLToPath(new URL('seaweedfs/start.sh', ROOT))], { env: { ...base, ...env }, stdio: 'pipe' });
      } catch (err) {
        return { status: (err as { status: number }).status, stderr: String((err as { stderr: Buffer }).stderr) };
      }
      return { status: 0, config: JSON.parse(readFileSync(config, 'utf8')) as S3Config, stderr: '' };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };

  it('start.sh gives each coffer user exactly its minio/coffer-<role>.json policy (bucket substituted)', () => {
    const { status, config } = run({ COFFER_BUCKET: 'vault-backups' });
    expect(status).toBe(0);
    expect(config!.identities.map((i) => i.name)).toEqual(['coffer-root', 'coffer-writer', 'coffer-reader', 'coffer-admin']);
    expect(config!.identities[0]).toMatchObject({ credentials: [{ accessKey: 'coffer-root', secretKey: 'root/pw+1' }], actions: ['Admin', 'Read', 'List', 'Tagging', 'Write'] });
    for (const role of Object.keys(ROLES) as Role[]) {
      const ident = config!.identities.find((i) => i.name === `coffer-${role}`)!;
      expect(ident.credentials).toEqual([{ accessKey: `coffer-${role}`, secretKey: `${role[0]}-secret` }]);
      expect(ident.policyNames).toEqual([`coffer-${role}`]);
      expect(ident.actions, 'policies only: SeaweedFS would route an identity with actions to its legacy checks').toBeUndefined();
      const content = config!.policies.find((p) => p.name === `coffer-${role}`)!.content;
      expect(JSON.parse(content)).toEqual(JSON.parse(read(`minio/coffer-${role}.json`).replaceAll('arn:aws:s3:::coffer', 'arn:aws:s3:::vault-backups')));
    }
  });

  it('start.sh refuses values it would have to escape, and bucket names that are not S3 names', () => {
    const bad: Record<string, string>[] = [{ COFFER_WRITER_SECRET: 'a"b' }, { SEAWEEDFS_ROOT_PASSWORD: 'a\\b' }, { COFFER_BUCKET: 'x/y' }];
    for (const env of bad) {
      const r = run(env);
      expect(r.status, JSON.stringify(env)).toBe(2);
      expect(r.stderr).toMatch(/seaweedfs\/start\.sh: (COFFER|SEAWEEDFS)_\w+ must/);
    }
  });
});

// ---- docker-compose.yml ----------------------------------------------------------------------

const require = createRequire(import.meta.url);
const COMPOSE_SCHEMA = JSON.parse(read('test/fixtures/compose-spec/compose-spec.json')) as { $schema: string };

/**
 * The official Compose Specification schema (draft-07), compiled by ajv. The schema names its
 * meta-schema as "https://json-schema.org/draft-07/schema", ajv's copy is registered under
 * "http://json-schema.org/draft-07/schema#": the same document is added under the schema's name,
 * so the schema itself is checked against it too. Unknown keywords stay errors (strictSchema);
 * the type-strictness lints are off because the upstream schema is not written for them.
 */
function composeValidator(): ValidateFunction {
  const draft7 = require('ajv/dist/refs/json-schema-draft-07.json') as Record<string, unknown>;
  const ajv = new Ajv({ allErrors: true, strictSchema: true, strictTypes: false, strictTuples: false, strictRequired: false, allowUnionTypes: true });
  ajv.addMetaSchema({ ...draft7, $id: COMPOSE_SCHEMA.$schema });
  return ajv.compile(COMPOSE_SCHEMA);
}
const errorsOf = (v: ValidateFunction): string[] => (v.errors ?? []).map((e: ErrorObject) => `${e.instancePath || '/'} ${e.message ?? ''}`);

const CONDITIONS = new Set(['service_started', 'service_healthy', 'service_completed_successfully']);
const DURATION = /^(\d+(\.\d+)?(us|ms|s|m|h))+$/;

interface Service {
  image?: string;
  profiles?: string[];
  healthcheck?: { test?: unknown; interval?: string; timeout?: string; retries?: number; disable?: boolean };
  depends_on?: Record<string, { condition?: string }> | string[];
  restart?: string;
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  entrypoint?: string[];
  network_mode?: string;
}
interface Compose {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
}

describe('docker-compose.yml', () => {
  const text = read('docker-compose.yml');
  const doc = parseDocument(text);
  const compose = parse(text) as Compose;
  const validate = composeValidator();

  it('is well-formed YAML and valid against the official Compose Specification schema', () => {
    expect(doc.errors).toEqual([]);
    expect(doc.warnings).toEqual([]);
    const ok = validate(compose);
    expect(errorsOf(validate)).toEqual([]);
    expect(ok).toBe(true);
  });

  it('the schema check fails on broken copies (unknown keys, wrong types, bad values)', () => {
    const broken: [string, (c: Record<string, any>) => void][] = [
      ['unknown top-level key', (c) => { c.service = c.services; }],
      ['ports as a string', (c) => { c.services.db.ports = '127.0.0.1:5432:5432'; }],
      ['misspelt service key', (c) => { c.services.minio.healtcheck = c.services.minio.healthcheck; }],
      ['healthcheck interval as a number', (c) => { c.services.db.healthcheck.interval = 5; }],
      ['unknown depends_on condition key', (c) => { c.services['minio-init'].depends_on.minio.state = 'healthy'; }],
      ['volumes as a map', (c) => { c.services.db.volumes = { data: '/var/lib/postgresql/data' }; }],
      ['profiles as a string', (c) => { c.services.seaweedfs.profiles = 'seaweedfs'; }],
    ];
    for (const [what, mutate] of broken) {
      const copy = structuredClone(compose) as Record<string, any>;
      mutate(copy);
      expect(validate(copy), what).toBe(false);
      expect(errorsOf(validate).length, what).toBeGreaterThan(0);
    }
    // …and the same text, re-parsed, still passes (the copies above are not broken by cloning).
    expect(validate(structuredClone(compose))).toBe(true);
  });

  it('starts db, minio and minio-init by default; SeaweedFS only with --profile seaweedfs', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['db', 'minio', 'minio-init', 'seaweedfs', 'seaweedfs-init']);
    const byDefault = Object.entries(compose.services).filter(([, s]) => !s.profiles).map(([n]) => n);
    expect(byDefault.sort()).toEqual(['db', 'minio', 'minio-init']);
    expect(compose.services.seaweedfs!.profiles).toEqual(['seaweedfs']);
    expect(compose.services['seaweedfs-init']!.profiles).toEqual(['seaweedfs']);
  });

  it('pins every image to a version, with a digest where one is known (no :latest, no untagged image)', () => {
    for (const [name, svc] of Object.entries(compose.services)) {
      expect(svc.image, name).toMatch(/^[a-z0-9./-]+:(?!latest[@]|latest$)[A-Za-z0-9._-]*\d[A-Za-z0-9._-]*(@sha256:[0-9a-f]{64})?$/);
      if (name !== 'db') expect(svc.image, `${name}: tag and digest`).toMatch(/@sha256:[0-9a-f]{64}$/);
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
        // A profiled service may depend only on services that start with it.
        for (const p of svc.profiles ?? []) expect(!compose.services[dep]!.profiles || compose.services[dep]!.profiles!.includes(p), `${name} → ${dep}`).toBe(true);
      }
    }
    expect(compose.services['minio-init']!.depends_on).toEqual({ minio: { condition: 'service_healthy' } });
    expect(compose.services['seaweedfs-init']!.depends_on).toEqual({ seaweedfs: { condition: 'service_healthy' } });
    expect(compose.services['seaweedfs-init']!.network_mode).toBe('service:seaweedfs');
  });

  it('runs PostgreSQL with database vault and user vault, and the setup scripts from minio/ and seaweedfs/', () => {
    const db = compose.services.db!;
    expect(db.environment).toMatchObject({ POSTGRES_DB: 'vault', POSTGRES_USER: 'vault' });
    expect(db.image).toMatch(/^postgres:15\./);
    const init = compose.services['minio-init']!;
    expect(init.entrypoint).toEqual(['/bin/sh', '/coffer/minio/setup.sh']);
    expect(init.volumes).toEqual(['./minio:/coffer/minio:ro']);
    const sw = compose.services.seaweedfs!;
    expect(sw.entrypoint).toEqual(['/bin/sh', '/coffer/seaweedfs/start.sh']);
    expect(sw.volumes).toEqual(expect.arrayContaining(['./seaweedfs:/coffer/seaweedfs:ro', './minio:/coffer/minio:ro']));
    expect(compose.services['seaweedfs-init']!.entrypoint).toEqual(['/bin/sh', '/coffer/seaweedfs/setup.sh']);
    // Both servers get the same bucket and the same users' secrets.
    for (const s of ['minio-init', 'seaweedfs', 'seaweedfs-init']) expect(compose.services[s]!.environment!.COFFER_BUCKET, s).toBe('coffer');
    for (const k of ['COFFER_WRITER_SECRET', 'COFFER_READER_SECRET', 'COFFER_ADMIN_SECRET']) {
      expect(sw.environment![k], k).toBe(init.environment![k]);
    }
  });

  it('declares its named volumes, bind-mounts paths that exist, and publishes distinct ports on localhost only', () => {
    const hostPorts: string[] = [];
    for (const [name, svc] of Object.entries(compose.services)) {
      for (const v of svc.volumes ?? []) {
        const source = v.split(':')[0]!;
        if (source.startsWith('.') || source.startsWith('/')) expect(existsSync(new URL(source, ROOT)), `${name}: ${source}`).toBe(true);
        else expect(compose.volumes && source in compose.volumes, `${name}: volume ${source} declared`).toBe(true);
      }
      for (const p of svc.ports ?? []) {
        expect(p, name).toMatch(/^127\.0\.0\.1:\d+:\d+$/);
        hostPorts.push(p.split(':')[1]!);
      }
    }
    // MinIO and SeaweedFS can run side by side (`--profile seaweedfs up` also starts the default services).
    expect(new Set(hostPorts).size, hostPorts.join(' ')).toBe(hostPorts.length);
  });
});

// ---- every image reference in the repository ---------------------------------------------------

/** `image:` values of every YAML document (any depth) and `FROM` images of every Dockerfile tracked by git. */
function imageReferences(): ImageRef[] {
  const files = execFileSync('git', ['ls-files', '-z'], { cwd: fileURLToPath(ROOT), encoding: 'utf8' }).split('\0').filter(Boolean);
  const out: ImageRef[] = [];
  const walk = (file: string, node: unknown): void => {
    if (Array.isArray(node)) for (const x of node) walk(file, x);
    else if (node && typeof node === 'object') {
      for (const [k, v] of Object.entries(node)) {
        if (k === 'image' && typeof v === 'string') out.push(parseImageRef(file, v));
        else walk(file, v);
      }
    }
  };
  for (const file of files) {
    const base = file.split('/').pop()!;
    if (/\.ya?ml$/.test(file)) {
      const textOf = read(file);
      for (const d of parseAllDocuments(textOf)) walk(file, d.toJS());
      // Cross-check: a line-based count catches images the walk above would miss (e.g. in a block scalar).
      const lines = textOf.split('\n').filter((l) => /^\s*(-\s+)?image:\s*\S/.test(l)).length;
      expect(out.filter((r) => r.file === file).length, `${file}: image: lines`).toBe(lines);
    } else if (/^Dockerfile(\..+)?$|\.Dockerfile$|^Containerfile$/.test(base)) {
      for (const stage of parseDockerfile(read(file)).stages) if (!stage.fromStage && stage.from !== 'scratch') out.push(parseImageRef(file, stage.from));
    }
  }
  return out;
}

/**
 * Where coffer's files may pull images from, and why. Anything else fails: add an entry with a
 * reason, after checking the repository is served and maintained (or knowingly frozen).
 */
const ALLOWED_IMAGES: { registry: string; repository: RegExp; digest: 'required' | 'optional'; reason: string }[] = [
  {
    registry: 'quay.io',
    repository: /^minio\/(minio|mc)$/,
    digest: 'required',
    reason: "MinIO's own frozen snapshots: its Docker Hub repositories were deleted in September 2026, the community edition is archived; tag and digest, as nothing new will be pushed",
  },
  {
    registry: 'docker.io',
    repository: /^library\/postgres$/,
    digest: 'optional',
    reason: 'Docker Official Image for PostgreSQL (maintained); pinned by tag, no digest established from public material',
  },
  {
    registry: 'docker.io',
    repository: /^chrislusf\/seaweedfs$/,
    digest: 'required',
    reason: "SeaweedFS's official image (Apache-2.0, maintained), the second S3 server of docker-compose.yml",
  },
  {
    registry: 'docker.io',
    repository: /^library\/node$/,
    digest: 'required',
    reason: "Docker Official Image for Node.js (maintained), the base of coffer's own Dockerfile; tag and digest",
  },
  {
    registry: 'registry.example.com',
    repository: /^coffer$/,
    digest: 'optional',
    reason: "placeholder in deploy/kubernetes/cronjob.yaml for the user's own build of coffer (the file says to replace it)",
  },
];

/** Repositories known to be gone: a pull fails with "pull access denied … repository does not exist". */
const GONE = [{ registry: 'docker.io', repository: /^minio\//, why: 'MinIO deleted its Docker Hub repositories in September 2026: use quay.io/minio/…' }];

describe('image references in the repository', () => {
  const refs = imageReferences();

  it('finds the images of docker-compose.yml and the Kubernetes example', () => {
    const files = new Set(refs.map((r) => r.file));
    expect(files).toContain('docker-compose.yml');
    expect(files).toContain('deploy/kubernetes/cronjob.yaml');
    expect(refs.filter((r) => r.file === 'Dockerfile').map((r) => r.repository)).toEqual(['library/node']);
    expect(refs.filter((r) => r.file === 'docker-compose.yml')).toHaveLength(5);
  });

  it('parses references as Docker does', () => {
    expect(parseImageRef('f', 'postgres:15.13-bookworm')).toEqual({ file: 'f', ref: 'postgres:15.13-bookworm', registry: 'docker.io', repository: 'library/postgres', tag: '15.13-bookworm' });
    expect(parseImageRef('f', 'minio/minio:RELEASE.x')).toMatchObject({ registry: 'docker.io', repository: 'minio/minio' });
    expect(parseImageRef('f', 'docker.io/minio/mc')).toMatchObject({ registry: 'docker.io', repository: 'minio/mc' });
    expect(parseImageRef('f', `quay.io/minio/mc:RELEASE.y@sha256:${'a'.repeat(64)}`)).toMatchObject({ registry: 'quay.io', repository: 'minio/mc', tag: 'RELEASE.y', digest: `sha256:${'a'.repeat(64)}` });
    expect(parseImageRef('f', 'localhost:5000/x/y:1')).toMatchObject({ registry: 'localhost:5000', repository: 'x/y', tag: '1' });
  });

  it('points only at allowed registries, never at a repository known to be gone, each pinned', () => {
    expect(refs.length).toBeGreaterThan(0);
    for (const r of refs) {
      const where = `${r.file}: ${r.ref}`;
      const gone = GONE.find((g) => g.registry === r.registry && g.repository.test(r.repository));
      expect(gone, `${where}: ${gone?.why ?? ''}`).toBeUndefined();
      const allowed = ALLOWED_IMAGES.find((a) => a.registry === r.registry && a.repository.test(r.repository));
      expect(allowed, `${where}: not in the allow-list (${r.registry}/${r.repository})`).toBeDefined();
      expect(allowed!.reason.length, where).toBeGreaterThan(20);
      expect(r.tag, `${where}: a version tag`).toMatch(/\d/);
      expect(r.tag, where).not.toBe('latest');
      if (allowed!.digest === 'required') expect(r.digest, `${where}: tag and digest`).toMatch(/^sha256:[0-9a-f]{64}$/);
    }
  });

  it('the checks reject the old Docker Hub MinIO references', () => {
    for (const old of ['minio/minio:RELEASE.2025-04-22T22-12-26Z', 'minio/mc:RELEASE.2025-04-16T18-13-26Z', 'docker.io/minio/minio:RELEASE.2025-09-07T16-13-09Z']) {
      const r = parseImageRef('x', old);
      expect(GONE.some((g) => g.registry === r.registry && g.repository.test(r.repository)), old).toBe(true);
      expect(ALLOWED_IMAGES.some((a) => a.registry === r.registry && a.repository.test(r.repository)), old).toBe(false);
    }
  });
});

describe('README "Local testing with docker compose"', () => {
  const readme = read('README.md');
  const section = readme.slice(readme.indexOf('### Local testing with docker compose'), readme.indexOf('### Faults, retries, timeouts and signals'));
  const compose = parse(read('docker-compose.yml')) as Compose;

  it('names every service, image (tag and digest prefix), host port, the bucket, the users and their default secrets', () => {
    expect(section.length).toBeGreaterThan(1000);
    for (const [name, svc] of Object.entries(compose.services)) {
      expect(section, name).toContain(`\`${name}\``);
      const [ref, digest] = svc.image!.split('@sha256:');
      expect(section, name).toContain(ref);
      if (digest) expect(section, name).toContain(`sha256:${digest.slice(0, 8)}`);
      for (const p of svc.ports ?? []) expect(section, `${name} ${p}`).toContain(p.split(':').slice(0, 2).join(':'));
    }
    const init = compose.services['minio-init']!.environment!;
    expect(section).toContain(`bucket \`${init.COFFER_BUCKET}\``);
    for (const role of ['writer', 'reader', 'admin']) {
      const secret = /:-([^}]+)\}/.exec(init[`COFFER_${role.toUpperCase()}_SECRET`]!)![1]!;
      expect(section, role).toContain(`AWS_ACCESS_KEY_ID=coffer-${role} AWS_SECRET_ACCESS_KEY=${secret}`);
    }
    expect(section).toContain(`PGPASSWORD=${/:-([^}]+)\}/.exec(compose.services.db!.environment!.POSTGRES_PASSWORD!)![1]}`);
    expect(section).toContain('docker compose --profile seaweedfs up -d db seaweedfs seaweedfs-init');
  });
});
