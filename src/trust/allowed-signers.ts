/**
 * OpenSSH's allowed_signers file (ssh-keygen(1), "ALLOWED SIGNERS"): who may sign manifests.
 *
 *   principals [options] keytype base64-key [comment]
 *
 * Principals are comma-separated patterns; options `namespaces="p1,p2"`, `valid-after=`,
 * `valid-before=`; `#` comments and blank lines are ignored. `cert-authority` lines are refused
 * (coffer checks plain keys, not certificates). Lines of other key types (RSA, ECDSA: a file
 * shared with git commit signing) are read but never match: coffer signs with Ed25519 only.
 */
import { readFile, stat } from 'node:fs/promises';
import { errnoWords, UsageError } from '../errors.js';
import { ED25519, fingerprint } from './signing-key.js';
import { SshReader } from './ssh-wire.js';

/** One trusted key. */
export interface AllowedSigner {
  /** The principals field as written (`backup@db1,backup@db2`). */
  principals: string;
  /** Raw 32-byte Ed25519 public key. */
  publicKey: Buffer;
  /** Namespace patterns from `namespaces="…"`; undefined = any namespace. */
  namespaces?: string[];
  validAfter?: Date;
  validBefore?: Date;
  /** `<file> line N`, for messages. */
  where: string;
}

/** The signers of a file: what `--trusted-signers` resolves to. */
export interface TrustedSigners {
  file: string;
  signers: AllowedSigner[];
}

const KEY_TYPE = /^(ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com|rsa-sha2-\d+|[a-z0-9-]+-cert-v01@openssh\.com)$/;

/** Splits on spaces outside double quotes. */
function tokens(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (const c of line) {
    if (c === '"') quoted = !quoted;
    if (!quoted && (c === ' ' || c === '\t')) {
      if (cur !== '') out.push(cur);
      cur = '';
    } else cur += c;
  }
  if (cur !== '') out.push(cur);
  return out;
}

/** Splits an options field on commas outside double quotes. */
function splitOptions(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (const c of s) {
    if (c === '"') quoted = !quoted;
    if (!quoted && c === ',') {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out;
}

function unquote(s: string): string {
  return s.length >= 2 && s.startsWith('"') && s.endsWith('"') ? s.slice(1, -1) : s;
}

/** ssh-keygen's timestamps: YYYYMMDD[HHMM[SS]], local time unless followed by Z. */
function parseTime(v: string): Date | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(\d{2})?)?(Z)?$/.exec(v);
  if (!m) return undefined;
  const [y, mo, d, h = '0', mi = '0', s = '0'] = m.slice(1, 7).map((x) => x ?? undefined) as string[];
  const parts = [Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s)] as const;
  return m[7] ? new Date(Date.UTC(...parts)) : new Date(...parts);
}

/** `*` and `?` patterns; a pattern list matches when a positive pattern does and no `!pattern` does. */
export function matchPatternList(value: string, patterns: readonly string[]): boolean {
  const re = (p: string) => new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
  let ok = false;
  for (const p of patterns) {
    if (p.startsWith('!')) {
      if (re(p.slice(1)).test(value)) return false;
    } else if (re(p).test(value)) ok = true;
  }
  return ok;
}

/** Parses the text of an allowed_signers file; `file` names it in messages. */
export function parseAllowedSigners(text: string, file: string): TrustedSigners {
  const signers: AllowedSigner[] = [];
  const lines = text.split('\n');
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const where = `${file} line ${i + 1}`;
    const bad = (what: string, hint?: string): never => {
      throw new UsageError(`trusted signers file ${where}: ${what}`, hint ? { hint } : undefined);
    };
    const t = tokens(line);
    if (t.length < 3) bad('expected "principals [options] key-type base64-key"', 'paste the allowed_signers line printed by coffer keygen --signing');
    const principals = unquote(t[0]!);
    let k = 1;
    const s: Partial<AllowedSigner> = {};
    if (!KEY_TYPE.test(t[1]!)) {
      for (const opt of splitOptions(t[1]!)) {
        const eq = opt.indexOf('=');
        const name = (eq < 0 ? opt : opt.slice(0, eq)).toLowerCase();
        const value = eq < 0 ? undefined : unquote(opt.slice(eq + 1));
        if (name === 'cert-authority') bad('cert-authority is not supported: coffer checks plain signing keys, not certificates', 'list each signing key itself (its ssh-ed25519 line)');
        else if (name === 'namespaces' && value !== undefined) s.namespaces = value.split(',').filter(Boolean);
        else if ((name === 'valid-after' || name === 'valid-before') && value !== undefined) {
          const d = parseTime(value);
          if (!d) bad(`${name}: invalid time ${JSON.stringify(value)} (expected YYYYMMDD[HHMM[SS]][Z])`);
          if (name === 'valid-after') s.validAfter = d;
          else s.validBefore = d;
        } else bad(`unknown option ${JSON.stringify(name)}`, 'the options coffer reads are namespaces="…", valid-after=…, valid-before=…');
      }
      k = 2;
    }
    const type = t[k];
    const b64 = t[k + 1];
    if (type === undefined || b64 === undefined || !KEY_TYPE.test(type)) bad('missing or unknown key type', 'expected e.g. ssh-ed25519 AAAA…');
    if (type!.endsWith('-cert-v01@openssh.com')) bad('certificates are not supported: list the signing key itself');
    if (type !== ED25519) continue; // another type: it can never have signed a coffer manifest
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64!)) bad('the key is not base64');
    let publicKey: Buffer;
    try {
      const r = new SshReader(Buffer.from(b64!, 'base64'));
      if (r.text() !== ED25519) throw new Error('type');
      publicKey = Buffer.from(r.bytes());
      if (publicKey.length !== 32 || r.remaining !== 0) throw new Error('length');
    } catch {
      return bad('the ssh-ed25519 key is corrupt or truncated');
    }
    signers.push({ principals, publicKey, ...s, where } as AllowedSigner);
  }
  if (signers.length === 0) {
    throw new UsageError(`trusted signers file ${file} holds no ssh-ed25519 key`, { hint: 'add the allowed_signers line printed by coffer keygen --signing' });
  }
  return { file, signers };
}

/**
 * Reads `--trusted-signers FILE`. Public keys only, so group/other-readable is fine; it must
 * not be writable by others (whoever can write it decides what is trusted).
 *
 * @throws {UsageError} when the file is missing, unreadable, writable by others, or malformed.
 */
export async function readTrustedSigners(path: string): Promise<TrustedSigners> {
  let text: string;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new UsageError(`trusted signers file ${path} is not a regular file`);
    if ((st.mode & 0o022) !== 0) {
      throw new UsageError(`trusted signers file ${path} is writable by other users (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); run chmod go-w ${path}`);
    }
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`cannot read trusted signers file ${path}: ${errnoWords(err)}`);
  }
  return parseAllowedSigners(text, path);
}

/** Outcome of matching a signature's key against the trusted signers. */
export type SignerMatch = { ok: true; signer: AllowedSigner } | { ok: false; why: string };

/** The trusted signer that may sign in `namespace` with `publicKey` at `now`. */
export function findSigner(trusted: TrustedSigners, publicKey: Uint8Array, namespace: string, now: Date = new Date()): SignerMatch {
  const same = trusted.signers.filter((s) => s.publicKey.equals(publicKey));
  if (same.length === 0) return { ok: false, why: `signed by an unknown key ${fingerprint(publicKey)}` };
  for (const s of same) {
    if (s.namespaces && !matchPatternList(namespace, s.namespaces)) continue;
    if (s.validAfter && now < s.validAfter) continue;
    if (s.validBefore && now > s.validBefore) continue;
    return { ok: true, signer: s };
  }
  return { ok: false, why: `signed by key ${fingerprint(publicKey)}, which ${same[0]!.where} does not allow for namespace ${namespace} at this time` };
}
