import { UsageError } from '../errors.js';
import type { Compression } from '../catalog/manifest.js';
import type { RepositoryRef, S3Settings } from '../store/open.js';
import type { LogFormat } from '../observe/log.js';
import type { Duration } from './parsers.js';

/**
 * The configuration layer: flags > environment (`COFFER_…`) > configuration file > defaults.
 * Precedence itself is applied once, generically, by `layers.ts`: commands receive their
 * option values already resolved and parsed (options.ts, parsers.ts). This module holds the
 * value parsers those build on and the resolution of the standard libpq/AWS variables.
 * src/config/ is the only reader of the environment; everything below it receives plain values.
 */

export type Env = NodeJS.ProcessEnv;

export function resolveLogFormat(flag: string | undefined, env: Env, isTty: boolean): LogFormat {
  const v = flag ?? env.COFFER_LOG_FORMAT;
  if (v === undefined || v === 'auto') return isTty ? 'text' : 'json';
  if (v === 'text' || v === 'json') return v;
  throw new UsageError(`--log-format must be text, json or auto (got ${JSON.stringify(v)})`);
}

/** The repository of a command that has no default one (`init`, `retention check`, `prune`). */
export function requireRepository(ref: RepositoryRef | undefined): RepositoryRef {
  if (ref === undefined) throw new UsageError('no repository given', { hint: 'use --from s3://bucket/prefix or a directory, `repository:` in coffer.yaml, or COFFER_REPOSITORY' });
  return ref;
}

/**
 * S3 settings: endpoint from the flag (or COFFER_S3_ENDPOINT / the file, via the config layer)
 * or the SDK's standard variables; region likewise. Credentials only when the configuration
 * names them (`s3AccessKeyId` + `s3SecretAccessKey`, attached by the config layer); otherwise
 * the AWS SDK's own chain (AWS_ACCESS_KEY_ID…, profile, instance role) is used.
 */
export function resolveS3Settings(
  flags: { s3Endpoint?: string | undefined; s3Region?: string | undefined; s3Timeout?: Duration | undefined; s3AccessKeyId?: string | undefined; s3SecretAccessKey?: string | undefined; maxRate?: number | undefined },
  env: Env,
): S3Settings {
  const endpoint = flags.s3Endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
  if (endpoint !== undefined) {
    let u: URL;
    try {
      u = new URL(endpoint);
    } catch {
      throw new UsageError(`invalid S3 endpoint URL ${JSON.stringify(endpoint)}`, { hint: 'expected e.g. http://127.0.0.1:9000' });
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new UsageError(`S3 endpoint must be http:// or https:// (got ${JSON.stringify(endpoint)})`);
    if (u.username || u.password) throw new UsageError('the S3 endpoint URL must not contain credentials', { hint: 'use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY' });
  }
  const region = flags.s3Region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? 'us-east-1';
  // Idle timeout of every S3 request (a silent socket fails the attempt; the SDK retries it).
  const requestTimeoutMs = flags.s3Timeout?.ms;
  const credentials =
    flags.s3AccessKeyId !== undefined && flags.s3SecretAccessKey !== undefined ? { credentials: { accessKeyId: flags.s3AccessKeyId, secretAccessKey: flags.s3SecretAccessKey } } : {};
  return { ...(endpoint ? { endpoint } : {}), region, ...(requestTimeoutMs ? { requestTimeoutMs } : {}), ...credentials, ...(flags.maxRate !== undefined ? { maxRate: flags.maxRate } : {}) };
}

/** `zstd:1` (default), `zstd`, `gzip:6` (pg_dump's own), `none`. */
export function parseCompression(s: string | undefined): Compression {
  const v = (s ?? 'zstd:1').trim().toLowerCase();
  const m = /^(zstd|gzip|none)(?::(\d+))?$/.exec(v);
  if (!m) throw new UsageError(`--compress must be zstd[:1-19], gzip[:1-9] or none (got ${JSON.stringify(s)})`);
  const level = m[2] === undefined ? undefined : Number(m[2]);
  if (m[1] === 'none') {
    if (level !== undefined) throw new UsageError('--compress none takes no level');
    return { kind: 'none' };
  }
  if (m[1] === 'zstd') {
    const l = level ?? 1;
    if (l < 1 || l > 19) throw new UsageError(`zstd level must be 1-19 (got ${l})`);
    return { kind: 'zstd', level: l };
  }
  const l = level ?? 6;
  if (l < 1 || l > 9) throw new UsageError(`gzip level must be 1-9 (got ${l})`);
  return { kind: 'pgdump-gzip', level: l };
}

/** `90s`, `15m`, `26h`, `7d`, `1h30m` → milliseconds. */
export function parseDuration(s: string, what: string): number {
  const t = s.trim();
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/gy;
  let total = 0;
  let matched = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(t)) !== null) {
    const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[m[2] as 'ms'];
    total += Number(m[1]) * unit;
    matched = re.lastIndex;
  }
  if (t === '' || matched !== t.length || total <= 0) {
    throw new UsageError(`${what}: invalid duration ${JSON.stringify(s)}`, { hint: 'use e.g. 90s, 15m, 26h, 7d' });
  }
  return Math.round(total);
}

/** A whole number from 1 to `max`. */
export function parsePositiveInt(s: string, what: string, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new UsageError(`${what} must be a whole number from 1 to ${max} (got ${JSON.stringify(s)})`);
  return n;
}

/** Database names: any non-empty string without NUL, at most 63 bytes (PostgreSQL's limit). */
export function checkDatabaseName(name: string, what = '--db'): string {
  if (name === '' || name.includes('\0')) throw new UsageError(`${what}: invalid database name ${JSON.stringify(name)}`);
  if (Buffer.byteLength(name, 'utf8') > 63) throw new UsageError(`${what}: database name longer than 63 bytes: ${JSON.stringify(name)}`);
  return name;
}
