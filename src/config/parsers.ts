import { UsageError } from '../errors.js';
import type { Compression } from '../catalog/manifest.js';
import { isTier, type Tier } from '../catalog/layout.js';
import { parseClusterName } from '../catalog/cluster-layout.js';
import { parseRecipient } from '../crypto/keys.js';
import { parseByteSize } from '../pipeline/part-size.js';
import { parseRate } from '../store/rate-limit.js';
import { parseHook } from '../ops/hooks.js';
import { parseRetentionPeriod, parseObjectLockMode, type ObjectLockMode } from '../retention/policy.js';
import { parseRepository, type RepositoryRef } from '../store/open.js';
import { checkDatabaseName, parseCompression, parseDuration, parsePositiveInt } from './settings.js';
import type { Parser } from './options.js';

/**
 * The parsers options are declared with (src/config/options.ts). Each names the value by the
 * flag in `parse` and by its origin in `check` (values from the environment or the file).
 */

/** Free text, unchecked: paths, connection strings, labels, command prefixes. */
export const text: Parser<string> = { parse: (s) => s };

/** SQL or other free text: in the environment, a list of these is one item per line. */
export const sql: Parser<string> = { parse: (s) => s, lines: true };

/** A duration and the text it was given as (messages repeat the text: "timed out after 2h"). */
export interface Duration {
  ms: number;
  text: string;
}

/** `90s`, `15m`, `26h`, `7d`, `1h30m`. */
export const duration: Parser<Duration> = {
  check: (s, label) => void parseDuration(s, label),
  parse: (s, flag) => ({ ms: parseDuration(s, flag), text: s }),
};

/** An http:// or https:// URL (endpoints, pings, webhooks), checked in full where it is used. */
export const url: Parser<string> = { check: (s, label) => void checkHttpUrl(s, label), parse: (s) => s, url: true };

/** `s3://bucket/prefix`, `file:///path` or a directory. */
export const repository: Parser<RepositoryRef> = {
  check: (s, label) => prefixed(label, () => parseRepository(s)),
  parse: (s) => parseRepository(s),
};

/** An age recipient (`age1…`). */
export const recipient: Parser<string> = {
  check: (s, label) => prefixed(label, () => parseRecipient(s)),
  parse: (s) => parseRecipient(s),
};

/** A whole number from 1 to `max`. */
export function count(max = Number.MAX_SAFE_INTEGER): Parser<number> {
  return {
    check: (s, label) => {
      if (!/^\d+$/.test(s.trim()) || Number(s) < 1) throw new UsageError(`${label}: must be a whole number of at least 1 (got ${JSON.stringify(s)})`);
    },
    parse: (s, flag) => parsePositiveInt(s, flag, max),
  };
}

/** A retention period (`14d`, `8w`, `12mo`, `1y`) → whole days, rounded up. */
export const period: Parser<number> = {
  check: (s, label) => void parseRetentionPeriod(s, label),
  parse: (s, flag) => parseRetentionPeriod(s, flag),
};

/** A byte size (`16MiB`, `1GiB`, a number of bytes). */
export const size: Parser<number> = {
  check: (s, label) => void parseByteSize(s, label),
  parse: (s, flag) => parseByteSize(s, flag),
};

/** A transfer rate (`5MB/s`, `512KiB/s`, `40Mbit/s`): bytes per second. */
export const rate: Parser<number> = {
  check: (s, label) => void parseRate(s, label),
  parse: (s, flag) => parseRate(s, flag),
};

/** A hook's command line (`--before`, `--after`): argv, split without a shell. */
export const hook: Parser<string[]> = {
  check: (s, label) => void parseHook(s, label),
  parse: (s, flag) => parseHook(s, flag),
};

/** One of the option's declared choices (checked by commander and the resolution). */
export const choice: Parser<string> = { parse: (s) => s };

/** `zstd[:level]` (default zstd:1), `gzip[:level]` or `none`. */
export const compression: Parser<Compression> = { parse: (s) => parseCompression(s) };

/** `daily`, `weekly`, `monthly` or `manual`. */
export const tier: Parser<Tier> = {
  parse: (s) => {
    if (!isTier(s)) throw new UsageError(`--tier must be daily, weekly, monthly or manual (got ${JSON.stringify(s)})`);
    return s;
  },
};

/** `governance` or `compliance`, in any case. */
export const objectLockMode: Parser<ObjectLockMode> = { parse: (s, flag) => parseObjectLockMode(s, flag)! };

/** A PostgreSQL database name. */
export const database: Parser<string> = { parse: (s, flag) => checkDatabaseName(s, flag) };

/** A cluster name (`--cluster`): what names a cluster's physical backups in the repository. */
export const cluster: Parser<string> = {
  check: (s, label) => {
    try {
      parseClusterName(s);
    } catch (err) {
      throw new UsageError(`${label}: ${(err as Error).message}`);
    }
  },
  parse: (s) => parseClusterName(s),
};

/** An http:// or https:// URL (S3 endpoints, notification and webhook endpoints). */
function checkHttpUrl(value: string, label: string): URL {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw new UsageError(`${label}: invalid URL ${JSON.stringify(value)}`, { hint: 'expected http:// or https://…' });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new UsageError(`${label}: URL must be http:// or https:// (got ${JSON.stringify(`${u.protocol}//…`)})`);
  }
  return u;
}

function prefixed(label: string, fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    if (err instanceof UsageError) throw new UsageError(`${label}: ${err.message}`, { hint: err.hint });
    throw err;
  }
}
