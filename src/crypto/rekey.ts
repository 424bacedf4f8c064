/**
 * A new age header around an existing file key (`coffer rekey`).
 *
 * An age v1 file (https://c2sp.org/age) is a header — the version line, one stanza per
 * recipient wrapping the 16-byte file key, and a MAC line — followed by the payload: a 16-byte
 * nonce and the STREAM chunks, sealed under HKDF-SHA256(file key, nonce, "payload"). The payload
 * depends on the file key and the nonce only, so a new header that wraps the SAME file key for
 * other recipients keeps every payload byte valid: rekeying an object is writing a new header
 * and copying the old object's bytes from the end of its header onwards.
 *
 * The MAC is HMAC-SHA256 keyed by HKDF-SHA256(file key, salt empty, "header") over the header
 * up to and including the `---` of the MAC line. Recipient stanzas are made by the
 * `age-encryption` library's own recipients (X25519 and hybrid), fed the known file key.
 *
 * **Padding.** A server-side copy on S3 composes the new object as a multipart upload whose
 * first part is the new header (uploaded) and whose other parts are byte ranges of the old
 * object (UploadPartCopy). S3 requires every part but the last to be at least 5 MiB, and a part
 * is either uploaded or copied, so the header itself must be at least 5 MiB. It is padded with
 * stanzas of type {@link PAD_STANZA_TYPE} that no identity recognises; the spec has identities
 * ignore stanzas they do not recognise (the Go age CLI itself writes such "grease" stanzas). The
 * padding is split into stanzas of {@link PAD_STANZA_BODY} bytes (a 64-column base64 line per 48
 * bytes): measured, the age 1.1.1 CLI and age-encryption 0.3.1 read a single 5 MB stanza as
 * well, but moderate stanzas keep clear of any per-stanza limit a parser may have, and the
 * library parses them twice as fast (0.6 s against 1.0 s for 5 MiB).
 */
import { createHmac, hkdfSync } from 'node:crypto';
import type { Recipient, Stanza } from 'age-encryption';
import { library, parseRecipient } from './keys.js';

/** The type of a padding stanza: no identity claims it. */
export const PAD_STANZA_TYPE = 'coffer.dev/pad';
/** Body bytes of one padding stanza (1,000 base64 lines of 64 columns). */
export const PAD_STANZA_BODY = 48 * 1000;
const VERSION_LINE = 'age-encryption.org/v1\n';
/** Body bytes per base64 line of a stanza. */
const BYTES_PER_LINE = 48;

/** The library's recipient objects for `recipients` (the same parsing `createEncryptStream` relies on). */
async function libraryRecipients(recipients: string[]): Promise<Recipient[]> {
  const encrypter = new (await library()).Encrypter();
  for (const r of recipients) encrypter.addRecipient(parseRecipient(r));
  // The Encrypter keeps them in a private field; the pinned library version is checked here.
  const held = (encrypter as unknown as { recipients?: unknown }).recipients;
  if (!Array.isArray(held) || held.length !== recipients.length || held.some((r) => typeof (r as Recipient)?.wrapFileKey !== 'function')) {
    throw new Error('age-encryption: unexpected Encrypter layout (recipients); coffer rekey needs the pinned library version');
  }
  return held as Recipient[];
}

/** One stanza as header text: `-> args` and its body in base64 (no padding) lines of 64 columns; a final short (possibly empty) line. */
function encodeStanza(args: string[], body: Uint8Array): string {
  const lines = [`-> ${args.join(' ')}\n`];
  const b = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  for (let i = 0; i < b.length; i += BYTES_PER_LINE) lines.push(`${b.subarray(i, i + BYTES_PER_LINE).toString('base64').replace(/=+$/, '')}\n`);
  if (b.length % BYTES_PER_LINE === 0) lines.push('\n');
  return lines.join('');
}

/** Header bytes of a stanza whose body has `n` bytes (arguments line excluded). */
function bodyTextLength(n: number): number {
  const full = Math.floor(n / BYTES_PER_LINE);
  const rest = n % BYTES_PER_LINE;
  return full * 65 + (rest === 0 ? 1 : Math.ceil((rest * 4) / 3) + 1);
}

/**
 * Builds an age v1 header that wraps `fileKey` for `recipients`, optionally padded to at least
 * `minLength` bytes with stanzas no identity recognises.
 *
 * @param fileKey - the 16-byte file key of the object being rekeyed.
 * @param recipients - `age1…` / `age1pq1…` recipients; at least one.
 * @param minLength - the header is at least this long (0: no padding).
 * @returns the header, through the MAC line's newline.
 * @throws {UsageError} for an invalid recipient; Error for an empty recipient list or a bad key.
 */
export async function buildHeader(fileKey: Uint8Array, recipients: string[], minLength = 0): Promise<Buffer> {
  if (fileKey.length !== 16) throw new Error('age file keys are 16 bytes');
  if (recipients.length === 0) throw new Error('a header needs at least one recipient');
  const stanzas: Stanza[] = [];
  for (const r of await libraryRecipients(recipients)) stanzas.push(...(await r.wrapFileKey(Uint8Array.from(fileKey))));
  const parts = [VERSION_LINE, ...stanzas.map((s) => encodeStanza(s.args, s.body))];
  // The MAC line: "--- " + 43 base64 characters + "\n".
  const macLineLength = 4 + 43 + 1;
  let length = parts.reduce((n, p) => n + Buffer.byteLength(p, 'latin1'), 0) + macLineLength;
  let counter = 0;
  while (length < minLength) {
    const args = [PAD_STANZA_TYPE, String(counter++)];
    const argsLength = Buffer.byteLength(`-> ${args.join(' ')}\n`);
    const missing = minLength - length - argsLength;
    // The largest body up to PAD_STANZA_BODY whose text is at least `missing` (or the whole PAD_STANZA_BODY).
    let body = PAD_STANZA_BODY;
    if (bodyTextLength(body) > missing) {
      body = Math.max(0, Math.floor((missing * BYTES_PER_LINE) / 65));
      while (bodyTextLength(body) < missing) body++;
    }
    const text = encodeStanza(args, new Uint8Array(body));
    parts.push(text);
    length += text.length;
  }
  const noMac = Buffer.from(`${parts.join('')}---`, 'latin1');
  const macKey = Buffer.from(hkdfSync('sha256', fileKey, Buffer.alloc(0), 'header', 32));
  const mac = createHmac('sha256', macKey).update(noMac).digest();
  macKey.fill(0);
  return Buffer.concat([noMac, Buffer.from(` ${mac.toString('base64').replace(/=+$/, '')}\n`, 'latin1')]);
}
