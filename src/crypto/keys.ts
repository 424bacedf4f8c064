/**
 * age keys: recipients (public, `age1…`), identities (secret, `AGE-SECRET-KEY-1…`), their files,
 * and key generation. Parsing and X25519/ML-KEM math are delegated to the `age-encryption`
 * library; this module adds strict validation and user-facing error messages.
 *
 * Secret key material never appears in an error message or an error's `cause`: the library's
 * own errors can quote the key (bech32 "Invalid checksum in AGE-SECRET-KEY-1…"), so they are
 * dropped, not wrapped.
 */
import { open } from 'node:fs/promises';
import { bech32Decode } from './bech32.js';
import { pluginIdentityName, pluginRecipientName } from './plugin.js';
import { errnoWords, UsageError } from '../errors.js';

/** The `age-encryption` library, loaded when first needed (it costs about 0.15 s of CPU to load). */
export function library(): Promise<typeof import('age-encryption')> {
  return import('age-encryption');
}

/** Files larger than this are not key files (same limit as the age CLI). */
const KEY_FILE_LIMIT = 16 * 1024 * 1024;

const X25519_IDENTITY_PREFIX = 'AGE-SECRET-KEY-1';
const HYBRID_IDENTITY_PREFIX = 'AGE-SECRET-KEY-PQ-1';
const ENCRYPTED_PREFIXES = ['age-encryption.org/v1', '-----BEGIN AGE ENCRYPTED FILE-----'];

/** A recipient is public: show it, but keep messages one readable line. */
function shown(value: string): string {
  const oneLine = value.replace(/[^\x20-\x7e]/g, '?');
  return oneLine.length > 24 ? `"${oneLine.slice(0, 20)}…"` : `"${oneLine}"`;
}

/** Why `s` is not a usable recipient, or `undefined` if it is one. */
function recipientProblem(s: string): string | undefined {
  if (s.length === 0) return 'empty recipient';
  if (/^(ssh-(ed25519|rsa)|ecdsa-sha2-|sk-ssh-|sk-ecdsa-)/.test(s)) {
    return `ssh public keys are not supported as recipients (${shown(s)}); use an age recipient (age1…) from age-keygen or coffer keygen`;
  }
  if (/^age-(secret-key|plugin)-/i.test(s)) {
    return 'this is a secret key (identity), not a recipient; never hand out identities, use its public key (age1…) instead';
  }
  // X25519 is hrp "age" + "1" + data (the bech32 alphabet has no "1"); anything else with a
  // further "1" is another type: plugin (age1yubikey1…), tag (age1tag1…) or hybrid (age1pq1…).
  if (s.startsWith('age1') && !s.startsWith('age1pq1') && s.slice(4).includes('1')) {
    // age plugin recipients (age1yubikey1…): wrapped by the plugin (src/crypto/plugin.ts, recipient-v1).
    if (pluginRecipientName(s) !== undefined) return undefined;
    return `unsupported recipient type ${shown(s)}; only X25519 (age1…), hybrid post-quantum (age1pq1…) and age plugin (age1<name>1…) recipients are supported`;
  }
  if (!s.startsWith('age1')) return `${shown(s)} is not an age recipient (they start with age1)`;
  // What the library's X25519Recipient and HybridRecipient accept (bech32, 32 bytes; the hybrid
  // kind ML-KEM-768 + X25519, 1216 bytes, beyond bech32's usual 90 characters).
  const hybrid = s.startsWith('age1pq1');
  const decoded = bech32Decode(s, hybrid ? Number.MAX_SAFE_INTEGER : 90);
  if (decoded === undefined || decoded.prefix !== (hybrid ? 'age1pq' : 'age') || decoded.bytes.length !== (hybrid ? 1216 : 32)) {
    return `${shown(s)} is not a valid age recipient (bad checksum, truncated or mistyped)`;
  }
  return undefined;
}

/**
 * Validate one recipient string: an X25519 recipient (`age1…`) or a hybrid post-quantum one
 * (`age1pq1…`, which the age 1.1 CLI cannot decrypt). Surrounding whitespace is ignored.
 *
 * @returns the recipient, trimmed.
 * @throws {UsageError} if it is not a valid supported recipient; the message shows the value
 *   (recipients are public) shortened to a safe length, unless it looks like a secret key.
 */
export function parseRecipient(s: string): string {
  const value = s.trim();
  const problem = recipientProblem(value);
  if (problem !== undefined) throw new UsageError(problem);
  return value;
}

/** Whether `recipient` is post-quantum (hybrid ML-KEM-768 + X25519, `age1pq1…`). */
export function isPostQuantumRecipient(recipient: string): boolean {
  return recipient.trim().startsWith('age1pq1');
}

/**
 * age's rule for one file's recipients (c2sp.org/age-plugin, labels; age 1.3 refuses the mix):
 * post-quantum and classic recipients are not mixed, because the classic stanza would let a
 * future quantum attacker recover the file key and the post-quantum one would protect nothing.
 * Call it where the recipients are gathered (backup, wal-push start-up), before any work.
 *
 * @throws {UsageError} one line naming a recipient of each kind and the fix.
 */
export function checkRecipientMix(recipients: readonly string[]): void {
  // A plugin recipient's kind is known once it wraps (its labels: src/crypto/plugin.ts checkLabelSets).
  const pq = recipients.find((r) => isPostQuantumRecipient(r));
  const classic = recipients.find((r) => !isPostQuantumRecipient(r) && pluginRecipientName(r.trim()) === undefined);
  if (pq === undefined || classic === undefined) return;
  throw new UsageError(
    `post-quantum (${shown(pq)}) and classic (${shown(classic)}) recipients cannot be mixed: a backup encrypted to both is only as strong as the classic key against a quantum attacker`,
    { hint: 'use only age1pq1… recipients (coffer keygen --pq) or only classic age1… recipients; age 1.3 refuses the same mix' },
  );
}

/** Read a small text file, with user-facing errors. */
async function readKeyFile(path: string, what: string): Promise<{ text: string; mode: number; binary: boolean }> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    throw new UsageError(`cannot read ${what} ${path}: ${errnoWords(err)}`);
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new UsageError(`${what} ${path} is not a regular file`);
    if (st.size > KEY_FILE_LIMIT) throw new UsageError(`${what} ${path} is too large to be a key file`);
    const bytes = await handle.readFile();
    // Keys are ASCII; latin1 keeps any other byte visible as one character. A UTF-8 BOM is skipped.
    const bom = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
    return { text: bytes.toString('latin1', bom), mode: st.mode, binary: bytes.includes(0) };
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`cannot read ${what} ${path}: ${errnoWords(err)}`);
  } finally {
    await handle.close();
  }
}

/** Lines with CR/whitespace trimmed, numbered from 1, without blanks and `#` comments. */
function contentLines(text: string): Array<{ n: number; line: string }> {
  const out: Array<{ n: number; line: string }> = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    out.push({ n: i + 1, line });
  });
  return out;
}

/**
 * Read an age recipients file: one recipient per line, `#` comments and blank lines ignored,
 * CRLF line ends tolerated (the format `age -R` reads).
 *
 * @returns the recipients in file order, duplicates removed.
 * @throws {UsageError} if the file is missing or unreadable, a line is not a supported
 *   recipient ("recipients file <path> line N: …"), or the file holds no recipient.
 */
export async function readRecipientsFile(path: string): Promise<string[]> {
  const { text, binary } = await readKeyFile(path, 'recipients file');
  if (binary) throw new UsageError(`recipients file ${path} is not a text file`);
  const recipients: string[] = [];
  for (const { n, line } of contentLines(text)) {
    const problem = recipientProblem(line);
    if (problem !== undefined) throw new UsageError(`recipients file ${path} line ${n}: ${problem}`);
    if (!recipients.includes(line)) recipients.push(line);
  }
  if (recipients.length === 0) {
    throw new UsageError(`recipients file ${path} contains no recipients; add one age1… public key per line`);
  }
  return recipients;
}

/** Why `line` is not a usable identity, or `undefined` if it is one. Never quotes `line`. */
async function identityProblem(line: string): Promise<string | undefined> {
  if (line.startsWith(HYBRID_IDENTITY_PREFIX) || line.startsWith(X25519_IDENTITY_PREFIX)) {
    // What the library accepts (bech32, upper case, 32 bytes: an X25519 scalar or the hybrid
    // key's seed, any value valid), checked here without loading it: a restore's start-up then
    // loads the library while it waits for the server (a test holds the two to agreeing).
    const hybrid = line.startsWith(HYBRID_IDENTITY_PREFIX);
    const decoded = line === line.toUpperCase() ? bech32Decode(line, hybrid ? 200 : 90) : undefined;
    if (decoded === undefined || decoded.prefix !== (hybrid ? 'age-secret-key-pq-' : 'age-secret-key-') || decoded.bytes.length !== 32) {
      return 'invalid age secret key (bad checksum, truncated or mistyped)';
    }
    return undefined;
  }
  if (/^age-secret-key-/i.test(line)) {
    return 'invalid age secret key (must be upper case and start with AGE-SECRET-KEY-1)';
  }
  if (/^age-plugin-/i.test(line)) {
    return pluginIdentityName(line) !== undefined ? undefined : 'invalid age plugin identity (must be upper case AGE-PLUGIN-<NAME>-1… with a valid checksum)';
  }
  if (line.startsWith('age1')) {
    return 'this is a public key (recipient), not a secret key; pass the identity file made by coffer keygen or age-keygen';
  }
  if (/^-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(line) || /^(ssh-(ed25519|rsa)|ecdsa-sha2-|sk-)/.test(line)) {
    return 'ssh keys are not supported; use an age identity made by coffer keygen or age-keygen';
  }
  return 'not an age identity (expected AGE-SECRET-KEY-1…)';
}

/**
 * Read an age identity file in age-keygen format: `#` comments, blank lines, one
 * `AGE-SECRET-KEY-1…` (or hybrid `AGE-SECRET-KEY-PQ-1…`, or a plugin's `AGE-PLUGIN-<NAME>-1…`)
 * per line; CRLF tolerated.
 *
 * @returns the identities in file order.
 * @throws {UsageError} if the file is missing or unreadable; empty; encrypted with a passphrase
 *   (binary or armored age file: decrypt it first with `age -d`); holds a recipient (public key),
 *   an SSH key, garbage or a corrupt/truncated key ("… line N: …"); or holds
 *   valid identities but is readable or writable by group or others (`chmod 600 <path>`).
 *   Messages never contain key material.
 */
export async function readIdentityFile(path: string): Promise<string[]> {
  const { text, mode, binary } = await readKeyFile(path, 'identity file');
  const head = text.trimStart();
  if (ENCRYPTED_PREFIXES.some((p) => head.startsWith(p))) {
    throw new UsageError(
      `identity file ${path} is itself encrypted with age; decrypt it first (age -d -o <new file> ${path}) and pass the decrypted file`,
    );
  }
  if (binary) throw new UsageError(`identity file ${path} is not a text file`);
  if (/^-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(head)) {
    throw new UsageError(`identity file ${path} is an ssh or pem private key; ssh keys are not supported, use an age identity made by coffer keygen or age-keygen`);
  }
  const identities: string[] = [];
  for (const { n, line } of contentLines(text)) {
    const problem = await identityProblem(line);
    if (problem !== undefined) throw new UsageError(`identity file ${path} line ${n}: ${problem}`);
    if (!identities.includes(line)) identities.push(line);
  }
  if (identities.length === 0) {
    throw new UsageError(`identity file ${path} contains no identities; pass the file made by coffer keygen or age-keygen`);
  }
  if ((mode & 0o077) !== 0) {
    throw new UsageError(
      `identity file ${path} is accessible by other users (mode ${(mode & 0o777).toString(8).padStart(4, '0')}); run chmod 600 ${path}`,
    );
  }
  return identities;
}

/**
 * Check one identity string.
 *
 * @returns the identity, trimmed.
 * @throws {UsageError} if it is not a valid X25519, hybrid or plugin age identity (message without key material).
 */
export async function parseIdentity(identity: string): Promise<string> {
  const value = identity.trim();
  const problem = await identityProblem(value);
  if (problem !== undefined) throw new UsageError(problem);
  return value;
}

/**
 * The public key (recipient) of an identity: `age1…` for X25519, `age1pq1…` for hybrid.
 *
 * @throws {UsageError} if `identity` is not a valid identity (message without key material).
 */
export async function recipientOf(identity: string): Promise<string> {
  const value = await parseIdentity(identity);
  return (await library()).identityToRecipient(value);
}

/** RFC 3339 local time with numeric offset, `Z` for UTC: Go's `time.RFC3339`, as age-keygen prints. */
function rfc3339Local(d: Date): string {
  const pad = (n: number) => String(n).padStart(2, '0');
  const offsetMin = -d.getTimezoneOffset();
  const zone =
    offsetMin === 0 ? 'Z' : `${offsetMin > 0 ? '+' : '-'}${pad(Math.floor(Math.abs(offsetMin) / 60))}:${pad(Math.abs(offsetMin) % 60)}`;
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}` +
    `T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}${zone}`
  );
}

/**
 * Generate a new X25519 identity, or with `pq` a hybrid post-quantum one (ML-KEM-768 + X25519,
 * `AGE-SECRET-KEY-PQ-1…` / `age1pq1…`, as `age-keygen -pq` of age 1.3 makes).
 *
 * @param now - creation time written to the file's comment (default: now).
 * @returns the identity, its recipient, and `fileText` in exactly age-keygen's format:
 *   `# created: <RFC 3339 local time>\n# public key: age1…\nAGE-SECRET-KEY-1…\n`.
 */
export async function generateIdentity(now: Date = new Date(), opts: { pq?: boolean } = {}): Promise<{ identity: string; recipient: string; fileText: string }> {
  const age = await library();
  const identity = opts.pq === true ? await age.generateHybridIdentity() : await age.generateX25519Identity();
  const recipient = await age.identityToRecipient(identity);
  const fileText = `# created: ${rfc3339Local(now)}\n# public key: ${recipient}\n${identity}\n`;
  return { identity, recipient, fileText };
}
