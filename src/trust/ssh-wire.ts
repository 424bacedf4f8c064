/**
 * The SSH wire encoding (RFC 4251 §5) that OpenSSH keys and signatures are made of: `uint32`
 * big-endian, and `string` = uint32 length + bytes. Small and strict: a reader that runs past
 * the end throws, so a truncated blob is never taken for a short one.
 */

/** `string`: uint32 length, then the bytes. */
export function sshString(b: Uint8Array | string): Buffer {
  const bytes = typeof b === 'string' ? Buffer.from(b, 'utf8') : Buffer.from(b);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(bytes.length);
  return Buffer.concat([len, bytes]);
}

/** `uint32`, big-endian. */
export function sshUint32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/** Thrown by {@link SshReader} on a blob that ends early; callers turn it into their own message. */
export class WireError extends Error {}

/** Reads SSH wire fields from a buffer, in order. */
export class SshReader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  uint32(): number {
    if (this.pos + 4 > this.buf.length) throw new WireError('truncated');
    const n = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return n;
  }

  bytes(): Buffer {
    const n = this.uint32();
    if (this.pos + n > this.buf.length) throw new WireError('truncated');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  text(): string {
    return this.bytes().toString('utf8');
  }

  /** Raw bytes of a fixed length (SSHSIG's magic preamble). */
  raw(n: number): Buffer {
    if (this.pos + n > this.buf.length) throw new WireError('truncated');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  rest(): Buffer {
    const out = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return out;
  }
}

/** Base64 wrapped at `width` columns between `-----BEGIN <label>-----` and `-----END <label>-----`. */
export function armor(label: string, bytes: Uint8Array, width = 70): string {
  const b64 = Buffer.from(bytes).toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += width) lines.push(b64.slice(i, i + width));
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/** The bytes inside an armored block, or undefined when `text` is not one such block. */
export function dearmor(label: string, text: string): Buffer | undefined {
  const m = new RegExp(`^\\s*-----BEGIN ${label}-----\\r?\\n([A-Za-z0-9+/=\\s]*?)-----END ${label}-----\\s*$`).exec(text);
  if (!m) return undefined;
  const b64 = m[1]!.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) return undefined;
  return Buffer.from(b64, 'base64');
}
