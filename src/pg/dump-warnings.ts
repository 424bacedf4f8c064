/**
 * pg_dump's warnings, read from its stderr while it runs. pg_dump prints each as
 *
 *   pg_dump: warning: there are circular foreign-key constraints among these tables:
 *   pg_dump: detail: a
 *   pg_dump: detail: b
 *   pg_dump: hint: You might not be able to restore the dump without using --disable-triggers …
 *
 * (pg_dumpall likewise, with its own name). Each warning becomes one line: the message, its
 * details joined by ", ", then its hints. They are logged (warn) and recorded in the manifest.
 */

/** At most this many warnings are kept (a pathological schema could print thousands). */
const MAX_WARNINGS = 100;
/** At most this many characters of one warning. */
const MAX_CHARS = 2000;

const LINE_RE = /^(pg_dump|pg_dumpall): (warning|detail|hint): (.*)$/;

interface Pending {
  program: string;
  message: string;
  details: string[];
  hints: string[];
}

export class DumpWarnings {
  private carry = '';
  private pending: Pending | undefined;
  private readonly done: string[] = [];
  private dropped = 0;

  /** @param onWarning called once per complete warning, as soon as it is complete */
  constructor(private readonly onWarning?: (line: string) => void) {}

  /** Feed a chunk of stderr. */
  push(chunk: Buffer): void {
    const text = this.carry + chunk.toString('utf8');
    const lines = text.split('\n');
    this.carry = lines.pop() ?? '';
    // A line without its end is kept, but not forever.
    if (this.carry.length > 64 * 1024) this.carry = this.carry.slice(0, 64 * 1024);
    for (const l of lines) this.line(l.replace(/\r$/, ''));
  }

  /** The stream ended: completes the last warning; returns them all, each on one line. */
  end(): string[] {
    if (this.carry !== '') this.line(this.carry);
    this.carry = '';
    this.flush();
    return this.list();
  }

  /** Warnings complete so far. */
  list(): string[] {
    return this.dropped > 0 ? [...this.done, `(${this.dropped} more warnings not recorded)`] : [...this.done];
  }

  private line(l: string): void {
    const m = LINE_RE.exec(l);
    if (!m) {
      this.flush();
      return;
    }
    const [, program, level, text] = m as unknown as [string, string, string, string];
    if (level === 'warning') {
      this.flush();
      this.pending = { program, message: text.trim(), details: [], hints: [] };
    } else if (this.pending) {
      (level === 'detail' ? this.pending.details : this.pending.hints).push(text.trim());
    }
  }

  private flush(): void {
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    let s = p.message;
    if (p.details.length > 0) s += `${s.endsWith(':') ? ' ' : ': '}${p.details.join(', ')}`;
    for (const h of p.hints) s += ` (hint: ${h})`;
    s = `${p.program}: warning: ${s}`;
    if (s.length > MAX_CHARS) s = `${s.slice(0, MAX_CHARS - 1)}…`;
    if (this.done.length >= MAX_WARNINGS) {
      this.dropped++;
      return;
    }
    this.done.push(s);
    this.onWarning?.(s);
  }
}
