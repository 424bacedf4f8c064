/**
 * Streaming age v1 encryption and decryption (https://c2sp.org/age), interoperable with the
 * `age` CLI. The header (recipient stanzas, X25519/ML-KEM key wrapping, header MAC) is handled
 * by the `age-encryption` library; the payload by node:crypto ({@link PayloadEncrypter},
 * {@link PayloadDecrypter}), which is about ten times faster than the library's pure-JS STREAM.
 *
 * Only the binary format is read and written; ASCII-armored files are refused. Passphrase
 * (scrypt) files are not supported: coffer uses public-key encryption only.
 */
import { randomBytes, type KeyObject } from 'node:crypto';
import type { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream';
import type { Identity, Recipient, Stanza } from 'age-encryption';
import { IntegrityError, UsageError } from '../errors.js';
import { readHead } from '../stream-head.js';
import { checkRecipientMix, library, parseIdentity, parseRecipient, recipientOf } from './keys.js';
import { checkLabelSets, pluginIdentity, pluginRecipients, splitPluginIdentities, type PluginOutcome } from './plugin.js';
import { PAYLOAD_NONCE_SIZE, PayloadDecrypter, PayloadEncrypter, payloadKey, payloadSize } from './stream.js';
import { AgeMacError, isX25519Identity, isX25519Recipient, parseAgeHeader, unwrapX25519, x25519Header } from './x25519.js';

export { checkRecipientMix, generateIdentity, isPostQuantumRecipient, parseIdentity, parseRecipient, readIdentityFile, readRecipientsFile, recipientOf } from './keys.js';
export { writeSecretFileExclusive } from './key-files.js';
export { CHUNK_SIZE, ChunkRangeDecrypter, chunkSpan, payloadSize, SEALED_CHUNK_SIZE } from './stream.js';

const VERSION_LINE = Buffer.from('age-encryption.org/v1\n');
const ARMOR_BEGIN = '-----BEGIN AGE ENCRYPTED FILE-----';
/**
 * The longest header coffer reads; bounds memory on garbage input. A hybrid stanza is ~1.6 KB,
 * but a header written by `coffer rekey` for a server-side copy carries padding ("grease")
 * stanzas that make it at least 5 MiB (S3's smallest multipart part, see src/crypto/rekey.ts);
 * 16 MiB leaves room for that and for many recipients. The age 1.1.1 CLI reads such headers.
 */
export const MAX_HEADER_SIZE = 16 * 1024 * 1024;
/** File key bytes: age v1 uses 16. */
const FILE_KEY_SIZE = 16;
/** Size of the library's output for an empty plaintext after the header: nonce + one empty chunk's tag. */
const EMPTY_PAYLOAD_SIZE = PAYLOAD_NONCE_SIZE + 16;

/**
 * Size of a complete age file: header plus payload for `plaintextBytes` of plaintext.
 *
 * @param headerBytes - the header length, e.g. {@link EncryptStream.headerLength}.
 */
export function encryptedSize(plaintextBytes: number, headerBytes: number): number {
  return headerBytes + payloadSize(plaintextBytes);
}

/** The Transform returned by {@link createEncryptStream}: plaintext in, age file out. */
export type EncryptStream = Transform & {
  /** Length of the age header (through the MAC line), which is emitted first. */
  readonly headerLength: number;
};

/**
 * Create an encrypting Transform: plaintext in, a complete standard age v1 file out (header
 * first, then the payload). Accepts writes of any size; memory stays bounded (a few 64 KiB
 * chunks) and backpressure is respected.
 *
 * @param recipients - one or more `age1…` (X25519), `age1pq1…` (hybrid) or `age1<name>1…` (age
 *   plugin: its plugin runs now, src/crypto/plugin.ts) recipients.
 * @throws {UsageError} if `recipients` is empty, one of them is invalid, or post-quantum and
 *   classic recipients are mixed ({@link checkRecipientMix}, and by label sets once plugins wrapped).
 * @throws the errors of a plugin recipient's plugin (`wrapWithPlugin` in src/crypto/plugin.ts).
 */
export async function createEncryptStream(recipients: string[]): Promise<EncryptStream> {
  if (recipients.length === 0) {
    throw new UsageError('no recipients to encrypt to; configure at least one age1… public key');
  }
  checkRecipientMix(recipients);
  const parsed = recipients.map((r) => parseRecipient(r));
  if (parsed.every(isX25519Recipient)) {
    // X25519 only (the usual case): the header is written here, without loading the library.
    const fileKey = randomBytes(FILE_KEY_SIZE);
    const header = x25519Header(fileKey, parsed);
    return encryptStream(header, fileKey);
  }
  const lib = await library();
  const encrypter = new lib.Encrypter();
  // age plugin recipients (age1<name>1…) are wrapped by their plugin (src/crypto/plugin.ts).
  const { native, plugins, labels } = pluginRecipients(parsed, (args, body) => new lib.Stanza(args, body));
  for (const r of native) encrypter.addRecipient(r);
  for (const p of plugins) encrypter.addRecipient(p);
  // A recipient that writes no stanza, only captures the file key the library drew.
  let fileKey: Uint8Array | undefined;
  const capture: Recipient = {
    wrapFileKey(key: Uint8Array): Stanza[] {
      fileKey = Uint8Array.from(key);
      return [];
    },
  };
  encrypter.addRecipient(capture);
  // The library's complete age file of an empty plaintext: header, nonce, one empty sealed chunk.
  const file = await encrypter.encrypt(new Uint8Array(0));
  try {
    checkLabelSets(labels);
  } catch (err) {
    fileKey?.fill(0);
    throw err;
  }
  const header = Buffer.from(file.subarray(0, file.length - EMPTY_PAYLOAD_SIZE));
  const lastLine = header.subarray(header.lastIndexOf(0x0a, header.length - 2) + 1).toString('latin1');
  if (fileKey?.length !== FILE_KEY_SIZE || !lastLine.startsWith('--- ') || !lastLine.endsWith('\n')) {
    throw new Error('age-encryption produced an unexpected header layout');
  }
  return encryptStream(header, fileKey);
}

/** The stream after `header`: a fresh payload nonce, then the payload sealed with the file key's payload key (the file key is zeroed). */
function encryptStream(header: Buffer, fileKey: Uint8Array): EncryptStream {
  const nonce = randomBytes(PAYLOAD_NONCE_SIZE);
  const key = payloadKey(fileKey, nonce);
  fileKey.fill(0);
  const stream = new PayloadEncrypter(key, Buffer.concat([header, nonce]));
  return Object.assign(stream, { headerLength: header.length }) as EncryptStream;
}

/** What was read from the source before the payload. */
interface Prefix {
  header: Buffer;
  /** `null` if the input ended before 16 bytes of nonce. */
  nonce: Buffer | null;
  /** Bytes read past the nonce (or past the header if the nonce is incomplete). */
  rest: Buffer;
}

function corruptHeader(detail?: string): IntegrityError {
  return new IntegrityError(`not an age file, or its header was modified or corrupted${detail ? ` (${detail})` : ''}`, {
    hint: 'check that this is a coffer backup and that it was stored and fetched completely',
  });
}

/**
 * Find the end of the header in `buf` (bytes up to and including the MAC line's newline),
 * scanning from `from`. Returns -1 if more bytes are needed; throws on malformed input so that
 * binary garbage fails at once rather than after {@link MAX_HEADER_SIZE}.
 */
function scanHeader(buf: Buffer, from: number): number {
  const prefixLen = Math.min(buf.length, VERSION_LINE.length);
  if (!buf.subarray(0, prefixLen).equals(VERSION_LINE.subarray(0, prefixLen))) {
    const start = buf.subarray(0, 64).toString('latin1').trimStart();
    if (start.startsWith(ARMOR_BEGIN.slice(0, 14))) {
      throw new IntegrityError('this is an ascii-armored age file, which coffer does not read', {
        hint: 'decrypt it with age -d, or convert it to the binary format first',
      });
    }
    if (buf.length < 64 && ARMOR_BEGIN.startsWith(start)) return -1; // too short to tell yet
    throw corruptHeader();
  }
  let lineStart = from === 0 ? 0 : buf.lastIndexOf(0x0a, from - 1) + 1;
  for (;;) {
    const nl = buf.indexOf(0x0a, lineStart);
    const lineEnd = nl < 0 ? buf.length : nl;
    for (let i = Math.max(lineStart, from); i < lineEnd; i++) {
      const b = buf[i]!;
      if (b < 0x20 || b > 0x7e) throw corruptHeader();
    }
    if (nl < 0) {
      if (buf.length > MAX_HEADER_SIZE) throw corruptHeader('header too large');
      return -1;
    }
    // The MAC line is the first starting with "---": stanza lines start with "->", body lines are base64.
    if (buf[lineStart] === 0x2d && buf[lineStart + 1] === 0x2d && buf[lineStart + 2] === 0x2d) return nl + 1;
    lineStart = nl + 1;
  }
}

/**
 * Read the header and the payload nonce from `source` with `'data'` events, pausing it
 * afterwards. Rejects with the source's error, or IntegrityError for input that is no age file.
 */
function readPrefix(source: Readable): Promise<Prefix> {
  if (source.destroyed || source.readableEnded) {
    return Promise.reject(source.errored ?? new Error('openDecryptStream: the source stream was already ended or destroyed'));
  }
  let buf: Buffer = Buffer.alloc(0);
  let headerEnd = -1;
  const split = (): Prefix => {
    const header = buf.subarray(0, headerEnd);
    const after = buf.subarray(headerEnd);
    if (after.length < PAYLOAD_NONCE_SIZE) return { header, nonce: null, rest: after };
    return { header, nonce: after.subarray(0, PAYLOAD_NONCE_SIZE), rest: after.subarray(PAYLOAD_NONCE_SIZE) };
  };
  return readHead(source, {
    event: 'data',
    step: (chunk) => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk!;
      const scannedTo = buf.length;
      buf = buf.length === 0 ? bytes : Buffer.concat([buf, bytes]);
      if (headerEnd < 0) headerEnd = scanHeader(buf, scannedTo);
      return headerEnd >= 0 && buf.length >= headerEnd + PAYLOAD_NONCE_SIZE ? split() : undefined;
    },
    atEnd: () => {
      if (headerEnd >= 0) return split();
      throw buf.length === 0 ? corruptHeader('the file is empty') : corruptHeader('the header is incomplete');
    },
    closed: 'the encrypted input was closed before its header was read',
  });
}

function headerAuthFailed(): IntegrityError {
  return new IntegrityError('header authentication failed: the backup was modified or corrupted');
}

/** No identity opens the header: a wrong key, unless the recipients are known to include one (see {@link explainNoMatch}). */
export class NoIdentityMatchesError extends IntegrityError {}

function noIdentityMatches(n: number): IntegrityError {
  return new NoIdentityMatchesError("no identity matches this backup's recipients", {
    hint: `the ${n === 1 ? 'identity does' : `${n} identities do`} not belong to any recipient this backup was encrypted to; use the identity file whose public key (age-keygen -y <file>) was configured as a recipient when the backup was made`,
  });
}

/**
 * Decrypt the header's file key. X25519 identities only (the usual case): here
 * (./x25519.ts); otherwise with the library (hybrid keys, plugins), its errors mapped to
 * IntegrityError. Both give the same errors for the same header.
 */
async function unwrapFileKey(header: Buffer, identities: string[]): Promise<{ fileKey: Uint8Array; stanzaCount: number }> {
  if (identities.every(isX25519Identity)) {
    let parsed: ReturnType<typeof parseAgeHeader>;
    try {
      parsed = parseAgeHeader(header);
    } catch {
      throw corruptHeader();
    }
    // The spec requires a scrypt stanza to be alone.
    if (parsed.stanzas.length > 1 && parsed.stanzas.some((s) => s.args[0] === 'scrypt')) throw corruptHeader('scrypt stanza not alone');
    let fileKey: Buffer | null;
    try {
      fileKey = unwrapX25519(parsed, identities);
    } catch (err) {
      if (err instanceof AgeMacError) throw headerAuthFailed();
      throw corruptHeader();
    }
    if (fileKey === null) throw noIdentityMatches(identities.length);
    return { fileKey, stanzaCount: parsed.stanzas.length };
  }
  const decrypter = new (await library()).Decrypter();
  // Sentinels around the real identities: the library tries identities in order after parsing
  // the header, and stops at the first that returns a key.
  let stanzaCount = -1;
  let noMatch = false;
  const first: Identity = {
    unwrapFileKey(stanzas: Stanza[]) {
      stanzaCount = stanzas.length;
      // The spec requires a scrypt stanza to be alone; the library checks it only when trying a passphrase.
      if (stanzas.length > 1 && stanzas.some((s) => s.args[0] === 'scrypt')) throw corruptHeader('scrypt stanza not alone');
      return null;
    },
  };
  const last: Identity = {
    unwrapFileKey() {
      noMatch = true;
      return null;
    },
  };
  decrypter.addIdentity(first);
  // Native identities first, then one run of each plugin for its identities (src/crypto/plugin.ts).
  const { native, plugins } = splitPluginIdentities(identities);
  // Validated by the caller; the library's own errors could quote the key, so never surface them.
  for (const id of native) {
    try {
      decrypter.addIdentity(id);
    } catch {
      throw new UsageError('invalid age identity');
    }
  }
  const outcome: PluginOutcome = { failures: [] };
  for (const [name, ids] of plugins) decrypter.addIdentity(pluginIdentity(name, ids, outcome));
  decrypter.addIdentity(last);
  try {
    const fileKey = await decrypter.decryptHeader(header);
    return { fileKey, stanzaCount };
  } catch (err) {
    if (outcome.aborted !== undefined) throw outcome.aborted;
    // No identity matched, and a plugin failed: its failure is the cause (not installed, needs a PIN, …).
    if (noMatch && outcome.failures.length > 0) throw outcome.failures[0];
    if (noMatch) throw noIdentityMatches(identities.length);
    if (stanzaCount >= 0 && err instanceof Error && /HMAC/.test(err.message)) {
      throw headerAuthFailed();
    }
    throw corruptHeader();
  }
}

/** What {@link openPayloadKey} gives: the key that opens every chunk, and where chunk 0 starts. */
export interface PayloadAccess {
  key: KeyObject;
  /** File offset of the first sealed chunk: header length + the 16-byte nonce. */
  payloadOffset: number;
  headerLength: number;
}

/**
 * The payload key of an age file from its first bytes (header and nonce), for reading chunks
 * out of order (ranged reads). `'more'` when `head` does not hold the whole header and nonce yet
 * (and `complete` is false: more of the file exists). Same errors as {@link openDecryptStream}.
 */
export async function openPayloadKey(head: Buffer, identities: string[], complete: boolean): Promise<PayloadAccess | 'more'> {
  if (identities.length === 0) throw new UsageError('no identities to decrypt with; pass an identity file made by coffer keygen or age-keygen');
  const valid = await Promise.all(identities.map((id) => parseIdentity(id)));
  const headerEnd = head.length === 0 ? -1 : scanHeader(head, 0);
  if (headerEnd < 0 || head.length < headerEnd + PAYLOAD_NONCE_SIZE) {
    if (!complete) return 'more';
    if (headerEnd < 0) throw head.length === 0 ? corruptHeader('the file is empty') : corruptHeader('the header is incomplete');
  }
  const { fileKey } = await unwrapFileKey(head.subarray(0, headerEnd), valid);
  if (head.length < headerEnd + PAYLOAD_NONCE_SIZE) {
    throw new IntegrityError('backup is truncated: the encrypted data ends right after the header', { hint: 'the upload or download was probably interrupted; use another backup' });
  }
  const key = payloadKey(fileKey, head.subarray(headerEnd, headerEnd + PAYLOAD_NONCE_SIZE));
  fileKey.fill(0);
  return { key, payloadOffset: headerEnd + PAYLOAD_NONCE_SIZE, headerLength: headerEnd };
}

/** What {@link readHeaderFileKey} gives: the file key of a whole header, and its stanzas' first arguments (types). */
export interface HeaderKey {
  /** The 16-byte file key; the caller zeroes it when done. */
  fileKey: Uint8Array;
  /** Bytes of the header, through the MAC line. */
  headerLength: number;
  /** The type (first argument) of every stanza, in order. */
  stanzaTypes: string[];
}

/**
 * The file key of an age file from its first bytes (`head` holds at least the whole header),
 * authenticated by the header MAC. For `coffer rekey`, which writes a new header around the
 * same file key. Same errors as {@link openPayloadKey}; IntegrityError when `head` ends inside
 * the header.
 */
export async function readHeaderFileKey(head: Buffer, identities: string[]): Promise<HeaderKey> {
  if (identities.length === 0) throw new UsageError('no identities to decrypt with; pass an identity file made by coffer keygen or age-keygen');
  const valid = await Promise.all(identities.map((id) => parseIdentity(id)));
  const headerEnd = head.length === 0 ? -1 : scanHeader(head, 0);
  if (headerEnd < 0) throw head.length === 0 ? corruptHeader('the file is empty') : corruptHeader('the header is incomplete');
  const header = head.subarray(0, headerEnd);
  const stanzaTypes: string[] = [];
  for (const line of header.toString('latin1').split('\n')) if (line.startsWith('-> ')) stanzaTypes.push(line.slice(3).split(' ')[0] ?? '');
  const { fileKey } = await unwrapFileKey(header, valid);
  return { fileKey, headerLength: headerEnd, stanzaTypes };
}

/**
 * Open an age file for streaming decryption. Reads and authenticates the header from `source`
 * BEFORE resolving, so a wrong identity or a foreign file fails before any plaintext exists.
 * `source` is then consumed by the returned stream (pipeline semantics: destroying the
 * plaintext stream destroys `source`; a source error is forwarded to the plaintext stream).
 * Bytes already read from `source` past the header are kept. `source` must not be consumed by
 * anyone else; it is destroyed if opening fails.
 *
 * The plaintext of each 64 KiB chunk is emitted as soon as that chunk is authenticated, so a
 * truncated or modified file is detected only when the bad chunk is reached: the plaintext
 * stream then errors with {@link IntegrityError} ("backup is truncated…", "authentication
 * failed at byte offset N: …" — N is the offset of the bad chunk in the encrypted file), and
 * consumers must treat everything they received as failed.
 *
 * @param identities - `AGE-SECRET-KEY-1…` / `AGE-SECRET-KEY-PQ-1…` / `AGE-PLUGIN-<NAME>-1…`
 *   strings; all are tried, native ones first, then each plugin's (src/crypto/plugin.ts: its
 *   errors, UsageError or IntegrityError, are thrown when no identity matches).
 * @returns the plaintext and the number of recipient stanzas in the header.
 * @throws {UsageError} if `identities` is empty or one is invalid (message without key material).
 * @throws {IntegrityError} "no identity matches this backup's recipients"; "not an age file, or
 *   its header was modified or corrupted"; "header authentication failed…"; "backup is truncated…" when the input
 *   ends inside the payload nonce; ascii-armored input.
 * @throws the source's own error if it fails while the header is read.
 */
export async function openDecryptStream(
  source: Readable,
  identities: string[],
): Promise<{ plaintext: Readable; recipientsStanzaCount: number }> {
  // Listen to the source at once, so that none of its events (an error especially) is missed.
  const reading = readPrefix(source);
  reading.catch(() => undefined); // handled below; avoids an unhandled rejection if validation fails first
  try {
    if (identities.length === 0) {
      throw new UsageError('no identities to decrypt with; pass an identity file made by coffer keygen or age-keygen');
    }
    const valid = await Promise.all(identities.map((id) => parseIdentity(id)));
    const prefix = await reading;
    const { fileKey, stanzaCount } = await unwrapFileKey(prefix.header, valid);
    if (prefix.nonce === null) {
      throw new IntegrityError('backup is truncated: the encrypted data ends right after the header', {
        hint: 'the upload or download was probably interrupted; use another backup',
      });
    }
    const key = payloadKey(fileKey, prefix.nonce);
    fileKey.fill(0);
    const plaintext = new PayloadDecrypter(key, prefix.header.length + PAYLOAD_NONCE_SIZE);
    if (prefix.rest.length > 0) plaintext.write(prefix.rest);
    pipeline(source, plaintext, () => {
      /* errors reach the consumer through `plaintext` */
    });
    return { plaintext, recipientsStanzaCount: stanzaCount };
  } catch (err) {
    if (!source.destroyed) source.destroy();
    throw err;
  }
}

/**
 * `err` as it is, unless it is "no identity matches" while `recipients` (what the backup's
 * manifest says it was encrypted to) include the public key of one of `identities`: then the
 * header is not the one written to them, and the error says it was damaged or modified
 * (IntegrityError, exit 5) instead of blaming the key.
 */
export async function explainNoMatch(err: unknown, identities: readonly string[], recipients: readonly string[] | undefined): Promise<unknown> {
  if (!(err instanceof NoIdentityMatchesError) || !recipients || recipients.length === 0) return err;
  const listed = new Set(recipients.map((r) => r.trim().toLowerCase()));
  for (const identity of identities) {
    let recipient: string;
    try {
      recipient = await recipientOf(identity);
    } catch {
      continue; // a plugin identity: its recipient is not known here
    }
    if (listed.has(recipient.toLowerCase())) {
      return new IntegrityError(`the age header of this backup was damaged or modified: it does not open with the identity of ${recipient}, which its manifest lists among the recipients`, {
        cause: err,
        hint: 'do not trust this backup; restore another one with --backup ID (coffer list shows them)',
      });
    }
  }
  return err;
}
