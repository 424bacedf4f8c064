/**
 * A walk over a tar stream as it passes (ustar, GNU and pax headers): every header is read and
 * its checksum checked, entry payloads are skipped by arithmetic except the few the caller asks
 * for, and the end is checked: a whole archive ends with two zero blocks (then only zeros, the
 * record padding). It proves that a tar a wrapper passed through was not cut short, and finds
 * what a physical backup's manifest records (backup_manifest's sha256, PG_VERSION, pg_control).
 */
import { createHash, type Hash } from 'node:crypto';
import { IntegrityError } from '../errors.js';

const BLOCK = 512;

export interface TarWalkOptions {
  /** Entries (names without a leading `./`) whose presence to record. */
  watch?: readonly string[];
  /** Prefixes (`pg_wal/`) under which every entry's presence is recorded (a few files only). */
  watchPrefix?: readonly string[];
  /** Entries whose first bytes to keep, with how many (small files: PG_VERSION, pg_control's head). */
  keep?: Readonly<Record<string, number>>;
  /** Entries whose content to hash (sha256). */
  hash?: readonly string[];
}

/** What the walk found, once the stream has ended. */
export interface TarWalkResult {
  /** Why the stream is not one whole tar archive; `undefined` when it is. */
  problem: string | undefined;
  /** Bytes walked. */
  bytes: number;
  entries: number;
  /** Watched (and kept, and hashed) names that were present. */
  seen: Set<string>;
  kept: Map<string, Buffer>;
  /** sha256 (hex) of each hashed entry's content. */
  hashes: Map<string, string>;
}

type State = 'header' | 'data' | 'pad' | 'trailer';

/** Walks a tar stream fed chunk by chunk ({@link push}); {@link end} tells whether it was whole. */
export class TarWalk {
  private state: State = 'header';
  private header = Buffer.alloc(BLOCK);
  private headerFill = 0;
  private zeroBlocks = 0;
  private remaining = 0;
  private padLeft = 0;
  private bytes = 0;
  private entries = 0;
  /** The current entry (what its payload is for). */
  private name = '';
  private meta: 'longname' | 'pax' | undefined;
  private metaBuf: Buffer[] = [];
  private keepLeft = 0;
  private hasher: Hash | undefined;
  /** Names set by a GNU `L` or pax `x` header for the next entry. */
  private nextName: string | undefined;
  private nextSize: number | undefined;
  private readonly watch: Set<string>;
  private readonly watchPrefix: readonly string[];
  private readonly keepSpec: Readonly<Record<string, number>>;
  private readonly hashSet: Set<string>;
  private readonly seen = new Set<string>();
  private readonly kept = new Map<string, Buffer>();
  private readonly hashes = new Map<string, string>();

  constructor(opts: TarWalkOptions = {}) {
    this.keepSpec = opts.keep ?? {};
    this.hashSet = new Set(opts.hash ?? []);
    this.watch = new Set([...(opts.watch ?? []), ...Object.keys(this.keepSpec), ...this.hashSet]);
    this.watchPrefix = opts.watchPrefix ?? [];
  }

  /** Walks the next chunk; IntegrityError at once for bytes that cannot be a tar stream. */
  push(chunk: Buffer): void {
    this.bytes += chunk.length;
    let i = 0;
    while (i < chunk.length) {
      switch (this.state) {
        case 'header': {
          const n = Math.min(BLOCK - this.headerFill, chunk.length - i);
          chunk.copy(this.header, this.headerFill, i, i + n);
          this.headerFill += n;
          i += n;
          if (this.headerFill === BLOCK) {
            this.headerFill = 0;
            this.onHeader();
          }
          break;
        }
        case 'data': {
          const n = Math.min(this.remaining, chunk.length - i);
          this.onData(chunk.subarray(i, i + n));
          this.remaining -= n;
          i += n;
          if (this.remaining === 0) this.endEntry();
          break;
        }
        case 'pad': {
          const n = Math.min(this.padLeft, chunk.length - i);
          this.padLeft -= n;
          i += n;
          if (this.padLeft === 0) this.state = 'header';
          break;
        }
        case 'trailer': {
          for (; i < chunk.length; i++) {
            if (chunk[i] !== 0) throw this.bad('data after the end-of-archive blocks');
          }
          break;
        }
      }
    }
  }

  /** After the last chunk: the verdict and what was found. */
  end(): TarWalkResult {
    let problem: string | undefined;
    if (this.state !== 'trailer') {
      const where = this.state === 'data' || this.state === 'pad' ? ` inside the entry ${JSON.stringify(this.name)}` : this.entries === 0 ? ' before any entry' : ` after ${this.entries} entries`;
      problem = this.bytes === 0 ? 'it is empty' : `it ends after ${this.bytes} bytes${where}, without the end-of-archive blocks (cut short?)`;
    }
    return { problem, bytes: this.bytes, entries: this.entries, seen: this.seen, kept: this.kept, hashes: this.hashes };
  }

  private bad(why: string): IntegrityError {
    return new IntegrityError(`the tar stream is damaged at byte ${this.bytes}: ${why}`);
  }

  private onHeader(): void {
    const h = this.header;
    if (isZero(h)) {
      this.zeroBlocks += 1;
      if (this.zeroBlocks === 2) this.state = 'trailer';
      return;
    }
    if (this.zeroBlocks > 0) throw this.bad('a lone zero block between entries');
    if (!checksumOk(h)) throw this.bad(`a header whose checksum does not match (after ${this.entries} entries); not a tar stream`);
    const type = String.fromCharCode(h[156]!);
    const size = this.nextSize ?? readNumber(h.subarray(124, 136));
    if (size === undefined || size < 0) throw this.bad('a header with an invalid size');
    const meta = type === 'L' ? 'longname' : type === 'x' ? 'pax' : undefined;
    // g: global pax header; K: GNU long link name. Neither names an entry.
    if (meta || type === 'g' || type === 'K') {
      this.startPayload('', type === 'g' || type === 'K' ? undefined : meta, readNumber(h.subarray(124, 136)) ?? 0);
      return;
    }
    const name = normalize(this.nextName ?? headerName(h));
    this.nextName = undefined;
    this.nextSize = undefined;
    this.entries += 1;
    if (this.watch.has(name) || this.watchPrefix.some((p) => name.startsWith(p))) this.seen.add(name);
    // Only regular files (0, NUL, 7) have a payload that is file content; directories and links have none.
    const payload = type === '0' || type === '\0' || type === '7' ? size : type === '5' || type === '1' || type === '2' ? 0 : size;
    this.startPayload(name, undefined, payload);
  }

  private startPayload(name: string, meta: 'longname' | 'pax' | undefined, size: number): void {
    this.name = name;
    this.meta = meta;
    this.metaBuf = [];
    this.keepLeft = meta ? 0 : (this.keepSpec[name] ?? 0);
    if (this.keepLeft > 0) this.kept.set(name, Buffer.alloc(0));
    this.hasher = !meta && this.hashSet.has(name) ? createHash('sha256') : undefined;
    this.remaining = size;
    this.padLeft = (BLOCK - (size % BLOCK)) % BLOCK;
    if (size === 0) this.endEntry();
    else this.state = 'data';
  }

  private onData(b: Buffer): void {
    if (this.meta) {
      this.metaBuf.push(Buffer.from(b));
      return;
    }
    if (this.keepLeft > 0) {
      const part = b.subarray(0, this.keepLeft);
      this.kept.set(this.name, Buffer.concat([this.kept.get(this.name)!, part]));
      this.keepLeft -= part.length;
    }
    this.hasher?.update(b);
  }

  private endEntry(): void {
    if (this.meta === 'longname') this.nextName = Buffer.concat(this.metaBuf).toString('utf8').replace(/\0.*$/s, '');
    else if (this.meta === 'pax') this.readPax(Buffer.concat(this.metaBuf));
    if (this.hasher) this.hashes.set(this.name, this.hasher.digest('hex'));
    this.hasher = undefined;
    this.meta = undefined;
    this.metaBuf = [];
    this.state = this.padLeft > 0 ? 'pad' : 'header';
  }

  /** pax records: `<len> <key>=<value>\n`; path and size apply to the next entry. */
  private readPax(b: Buffer): void {
    let at = 0;
    while (at < b.length) {
      const sp = b.indexOf(0x20, at);
      const len = sp < 0 ? NaN : Number(b.subarray(at, sp).toString('latin1'));
      if (!Number.isInteger(len) || len <= 0 || at + len > b.length) throw this.bad('an invalid pax header');
      const rec = b.subarray(sp + 1, at + len - 1).toString('utf8');
      const eq = rec.indexOf('=');
      const key = rec.slice(0, eq);
      const value = rec.slice(eq + 1);
      if (key === 'path') this.nextName = value;
      else if (key === 'size') this.nextSize = Number(value);
      at += len;
    }
  }
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** The header checksum: the sum of its bytes with the checksum field taken as spaces. */
function checksumOk(h: Buffer): boolean {
  const stored = readNumber(h.subarray(148, 156));
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
  return stored === sum;
}

/** An octal field (NUL/space terminated), or GNU's base-256 form (high bit set). */
function readNumber(f: Buffer): number | undefined {
  if (f[0]! & 0x80) {
    let n = 0;
    for (let i = 1; i < f.length; i++) n = n * 256 + f[i]!;
    return n;
  }
  const s = f.toString('latin1').replace(/[\0 ]+$/, '').replace(/^[\0 ]+/, '');
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) return undefined;
  return parseInt(s, 8);
}

/** name, with the ustar prefix when there is one. */
function headerName(h: Buffer): string {
  const str = (a: number, b: number): string => {
    const f = h.subarray(a, b);
    const z = f.indexOf(0);
    return f.subarray(0, z < 0 ? f.length : z).toString('utf8');
  };
  const name = str(0, 100);
  const ustar = h.subarray(257, 262).toString('latin1') === 'ustar';
  const prefix = ustar ? str(345, 500) : '';
  return prefix ? `${prefix}/${name}` : name;
}

/** `./PG_VERSION` → `PG_VERSION`; directories lose their trailing slash. */
function normalize(name: string): string {
  return name.replace(/^(\.\/)+/, '').replace(/\/+$/, '');
}
