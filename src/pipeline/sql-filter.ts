/**
 * `--no-owner` / `--no-privileges` for plain-SQL archives (schema-only and data-only backups are
 * `pg_dump --format=plain` output, restored by piping into psql): a streaming filter that removes
 * from pg_dump's output what `pg_restore --no-owner` / `--no-privileges` would skip:
 *
 * - `noOwner`: the top-level `ALTER … OWNER TO role;` statements, and `SET SESSION AUTHORIZATION`
 *   / `RESET SESSION AUTHORIZATION`;
 * - `noPrivileges`: the GRANT / REVOKE / ALTER DEFAULT PRIVILEGES statements of the entries whose
 *   pg_dump header comment says `Type: ACL` or `Type: DEFAULT ACL` (`ACL LANGUAGE` in old dumps).
 *
 * It splits the input into statements as psql does (psqlscan.l): string literals ('', E'' with
 * backslash escapes, standard_conforming_strings off), quoted identifiers, dollar quotes
 * ($$…$$, $tag$…$tag$), nested comments, parentheses and the `BEGIN ATOMIC … END` bodies of
 * CREATE FUNCTION/PROCEDURE, backslash meta-commands between statements (`\connect`,
 * `\restrict`), and `COPY … FROM stdin` data up to its `\.` line. Nothing inside a literal, a
 * body, a comment or COPY data is ever looked at as a statement. Chunk boundaries can fall
 * anywhere (the state is kept byte by byte). Memory: only a statement that could be dropped
 * (one starting with ALTER, SET, RESET, GRANT, REVOKE, COPY — short in pg_dump's output) is
 * held until its `;`; everything else streams through.
 */
import { Transform, type TransformCallback } from 'node:stream';

export interface SqlFilterOptions {
  noOwner: boolean;
  noPrivileges: boolean;
}

/** What the filter removed. */
export interface SqlFilterCounts {
  /** ALTER … OWNER TO and SET/RESET SESSION AUTHORIZATION statements. */
  ownership: number;
  /** GRANT / REVOKE / ALTER DEFAULT PRIVILEGES statements of ACL entries. */
  privileges: number;
}

const enum Mode {
  Between,
  Statement,
  Meta,
  Copy,
}

const enum Lex {
  Code,
  LineComment,
  BlockComment,
  SQuote,
  EString,
  DQuote,
  DollarTag,
  Dollar,
  DollarClose,
}

/** Statements that may be dropped (or must be read: COPY, SET standard_conforming_strings) start with one of these. */
const HELD_WORDS = new Set(['alter', 'set', 'reset', 'grant', 'revoke', 'copy']);
/** Longest word kept while lexing (the keywords compared are shorter). */
const WORD_MAX = 16;
/** Longest comment line kept for the header check (pg_dump's headers are one line). */
const COMMENT_MAX = 8192;

const isIdentStart = (b: number): boolean => (b >= 0x61 && b <= 0x7a) || (b >= 0x41 && b <= 0x5a) || b === 0x5f || b >= 0x80;
const isDigit = (b: number): boolean => b >= 0x30 && b <= 0x39;
const isIdentCont = (b: number): boolean => isIdentStart(b) || isDigit(b) || b === 0x24;
const isSpace = (b: number): boolean => b === 0x20 || (b >= 0x09 && b <= 0x0d);

const NL = 0x0a;
const CR = 0x0d;
const DASH = 0x2d;
const SLASH = 0x2f;
const STAR = 0x2a;
const QUOTE = 0x27;
const DQUOTE = 0x22;
const DOLLAR = 0x24;
const BACKSLASH = 0x5c;
const DOT = 0x2e;
const SEMI = 0x3b;
const LPAREN = 0x28;
const RPAREN = 0x29;

/** A pg_dump entry header: `-- Name: …; Type: …; Schema: …; Owner: …` (or `Data for Name:`). */
const HEADER_RE = /^ (?:Data for )?Name: .*; Type: .*; Schema: /;
const ACL_HEADER_RE = /; Type: (?:ACL|DEFAULT ACL|ACL LANGUAGE); Schema: /;

export class PlainSqlFilter extends Transform {
  readonly counts: SqlFilterCounts = { ownership: 0, privileges: 0 };
  readonly #opts: SqlFilterOptions;

  // Where bytes go: out (streamed) or held (the current statement, until its end decides).
  #out: Buffer[] = [];
  #held: Buffer[] = [];
  #chunk: Buffer = Buffer.alloc(0);
  #pos = 0;
  #segStart = 0;
  #segHeld = false;

  #mode = Mode.Between;
  #lex = Lex.Code;
  #pendDash = false;
  #pendSlash = false;
  #pendStar = false;
  #pendQuote = false;
  #escape = false;
  #depth = 0;
  #tag: number[] = [];
  #closeIdx = 0;

  // The current statement.
  /** Its first word is not complete yet: held until it is. */
  #deciding = false;
  /** Held until its end (its first word is one of HELD_WORDS). */
  #holding = false;
  #skeleton = '';
  #prevIdentCont = false;
  #inWord = false;
  #word = '';
  #justEndedE = false;
  #parenDepth = 0;
  #beginDepth = 0;
  #identCount = 0;
  #idents: string[] = [];

  #scs = true;
  #copyPending = false;
  #copyState = 0;
  #comment: number[] = [];
  #inAcl = false;

  constructor(opts: SqlFilterOptions) {
    super();
    this.#opts = opts;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#chunk = chunk;
    this.#pos = 0;
    this.#segStart = 0;
    while (this.#pos < chunk.length) this.#step(chunk[this.#pos]!);
    this.#flushSeg();
    this.#emit();
    cb();
  }

  override _flush(cb: TransformCallback): void {
    // An unterminated last statement goes out as it is (psql runs it too).
    for (const b of this.#held) this.#out.push(b);
    this.#held = [];
    this.#emit();
    cb();
  }

  #emit(): void {
    if (this.#out.length === 0) return;
    const data = this.#out.length === 1 ? this.#out[0]! : Buffer.concat(this.#out);
    this.#out = [];
    this.push(data);
  }

  /** Sends chunk[segStart, pos) where the segment goes. */
  #flushSeg(): void {
    if (this.#pos > this.#segStart) {
      const part = this.#chunk.subarray(this.#segStart, this.#pos);
      if (this.#segHeld) this.#held.push(Buffer.from(part));
      else this.#out.push(part);
    }
    this.#segStart = this.#pos;
  }

  /** Consumes the current byte, routed by the current state. */
  #consume(): void {
    const held = this.#mode === Mode.Statement && (this.#holding || this.#deciding);
    if (held !== this.#segHeld) {
      this.#flushSeg();
      this.#segHeld = held;
    }
    this.#pos++;
  }

  #step(b: number): void {
    switch (this.#mode) {
      case Mode.Copy:
        return this.#stepCopy(b);
      case Mode.Meta:
        return this.#stepMeta(b);
      case Mode.Between:
        return this.#stepBetween(b);
      case Mode.Statement:
        return this.#stepStatement(b);
    }
  }

  /** A psql meta-command line (`\connect …`): passed through to its end. */
  #stepMeta(b: number): void {
    this.#consume();
    if (b === NL) this.#mode = Mode.Between;
  }

  /** COPY data: passed through up to and including the `\.` line. */
  #stepCopy(b: number): void {
    this.#consume();
    // 0 line start, 1 `\`, 2 `\.`, 3 `\.\r`, 4 inside a line
    const s = this.#copyState;
    if (b === NL) {
      if (s === 2 || s === 3) this.#mode = Mode.Between;
      this.#copyState = 0;
    } else if (s === 0 && b === BACKSLASH) this.#copyState = 1;
    else if (s === 1 && b === DOT) this.#copyState = 2;
    else if (s === 2 && b === CR) this.#copyState = 3;
    else this.#copyState = 4;
  }

  #stepBetween(b: number): void {
    if (this.#lex === Lex.LineComment) {
      this.#consume();
      if (b === NL) {
        this.#lex = Lex.Code;
        this.#endComment();
        this.#newline();
      } else if (this.#comment.length < COMMENT_MAX) this.#comment.push(b);
      return;
    }
    if (this.#lex === Lex.BlockComment) return this.#stepBlockComment(b);
    if (this.#pendDash) {
      this.#pendDash = false;
      if (b === DASH) {
        this.#consume();
        this.#lex = Lex.LineComment;
        this.#comment = [];
        return;
      }
      // A statement that starts with `-` (already sent on: it cannot be one that is dropped).
      this.#startStatement(false);
      return;
    }
    if (this.#pendSlash) {
      this.#pendSlash = false;
      if (b === STAR) {
        this.#consume();
        this.#lex = Lex.BlockComment;
        this.#depth = 1;
        return;
      }
      this.#startStatement(false);
      return;
    }
    if (isSpace(b)) {
      this.#consume();
      if (b === NL) this.#newline();
      return;
    }
    if (b === DASH) {
      this.#consume();
      this.#pendDash = true;
      return;
    }
    if (b === SLASH) {
      this.#consume();
      this.#pendSlash = true;
      return;
    }
    if (b === BACKSLASH) {
      this.#mode = Mode.Meta;
      this.#consume();
      return;
    }
    this.#startStatement(isIdentStart(b));
  }

  /** A newline between statements: COPY data starts on the line after `COPY … FROM stdin;`. */
  #newline(): void {
    if (this.#copyPending) {
      this.#copyPending = false;
      this.#mode = Mode.Copy;
      this.#copyState = 0;
    }
  }

  #endComment(): void {
    const text = Buffer.from(this.#comment).toString('utf8');
    this.#comment = [];
    if (HEADER_RE.test(text)) this.#inAcl = ACL_HEADER_RE.test(text);
  }

  #stepBlockComment(b: number): void {
    this.#consume();
    if (this.#pendStar) {
      this.#pendStar = false;
      if (b === SLASH) {
        if (--this.#depth === 0) this.#lex = Lex.Code;
        return;
      }
    } else if (this.#pendSlash) {
      this.#pendSlash = false;
      if (b === STAR) {
        this.#depth++;
        return;
      }
    }
    if (b === STAR) this.#pendStar = true;
    else if (b === SLASH) this.#pendSlash = true;
  }

  /** The next byte starts a statement; `maybeHeld`: it starts a word (the first word decides). */
  #startStatement(maybeHeld: boolean): void {
    this.#mode = Mode.Statement;
    this.#lex = Lex.Code;
    this.#deciding = maybeHeld;
    this.#holding = false;
    this.#skeleton = '';
    this.#prevIdentCont = false;
    this.#inWord = false;
    this.#word = '';
    this.#justEndedE = false;
    this.#parenDepth = 0;
    this.#beginDepth = 0;
    this.#identCount = 0;
    this.#idents = [];
  }

  #skel(s: string): void {
    if (this.#holding || this.#deciding) this.#skeleton += s;
  }

  #stepStatement(b: number): void {
    switch (this.#lex) {
      case Lex.Code:
        return this.#stepCode(b);
      case Lex.LineComment:
        this.#consume();
        if (b === NL) this.#lex = Lex.Code;
        return;
      case Lex.BlockComment:
        return this.#stepBlockComment(b);
      case Lex.SQuote:
      case Lex.EString:
      case Lex.DQuote: {
        const q = this.#lex === Lex.DQuote ? DQUOTE : QUOTE;
        if (this.#pendQuote) {
          this.#pendQuote = false;
          if (b !== q) {
            this.#lex = Lex.Code;
            this.#prevIdentCont = false;
            return; // the byte after the literal: lexed as code
          }
          this.#consume(); // a doubled quote
          return;
        }
        this.#consume();
        if (this.#escape) this.#escape = false;
        else if (b === BACKSLASH && this.#lex === Lex.EString) this.#escape = true;
        else if (b === q) this.#pendQuote = true;
        return;
      }
      case Lex.DollarTag:
        if (b === DOLLAR) {
          this.#consume();
          this.#lex = Lex.Dollar;
          this.#skel('$s$');
        } else if (this.#tag.length === 0 ? isIdentStart(b) : isIdentStart(b) || isDigit(b)) {
          this.#consume();
          this.#tag.push(b);
        } else {
          // `$1`, or `$name` not closed by `$`: not a dollar quote.
          this.#skel(`$${Buffer.from(this.#tag).toString('latin1')}`);
          this.#prevIdentCont = this.#tag.length > 0;
          this.#lex = Lex.Code;
        }
        return;
      case Lex.Dollar:
        this.#consume();
        if (b === DOLLAR) {
          this.#lex = Lex.DollarClose;
          this.#closeIdx = 0;
        }
        return;
      case Lex.DollarClose:
        this.#consume();
        if (this.#closeIdx < this.#tag.length) {
          if (b === this.#tag[this.#closeIdx]) this.#closeIdx++;
          else if (b === DOLLAR) this.#closeIdx = 0;
          else this.#lex = Lex.Dollar;
        } else if (b === DOLLAR) {
          this.#lex = Lex.Code;
          this.#prevIdentCont = false;
        } else this.#lex = Lex.Dollar;
        return;
    }
  }

  #stepCode(b: number): void {
    if (this.#pendDash) {
      this.#pendDash = false;
      if (b === DASH) {
        this.#consume();
        this.#lex = Lex.LineComment;
        this.#skel(' ');
        return;
      }
    } else if (this.#pendSlash) {
      this.#pendSlash = false;
      if (b === STAR) {
        this.#consume();
        this.#lex = Lex.BlockComment;
        this.#depth = 1;
        this.#skel(' ');
        return;
      }
    }
    if (this.#inWord) {
      if (isIdentCont(b)) {
        this.#consume();
        if (this.#word.length <= WORD_MAX) this.#word += String.fromCharCode(b >= 0x41 && b <= 0x5a ? b + 0x20 : b);
        this.#skel(String.fromCharCode(b));
        this.#prevIdentCont = true;
        return;
      }
      this.#endWord();
    }
    const e = this.#justEndedE;
    this.#justEndedE = false;
    if (isIdentStart(b) && !this.#prevIdentCont) {
      this.#inWord = true;
      this.#word = '';
      return; // the word's first byte, again: now inside the word
    }
    if (this.#deciding) {
      // The statement does not start with a word that could be dropped.
      this.#deciding = false;
      this.#holding = false;
      this.#release();
    }
    const prevIdentCont = this.#prevIdentCont;
    this.#consume();
    this.#prevIdentCont = isIdentCont(b);
    switch (b) {
      case QUOTE:
        this.#lex = e || !this.#scs ? Lex.EString : Lex.SQuote;
        this.#skel("'s'");
        return;
      case DQUOTE:
        this.#lex = Lex.DQuote;
        this.#skel('"q"');
        return;
      case DOLLAR:
        if (!prevIdentCont) {
          this.#lex = Lex.DollarTag;
          this.#tag = [];
          return;
        }
        break;
      case DASH:
        this.#pendDash = true;
        break;
      case SLASH:
        this.#pendSlash = true;
        break;
      case LPAREN:
        this.#parenDepth++;
        break;
      case RPAREN:
        if (this.#parenDepth > 0) this.#parenDepth--;
        break;
      case SEMI:
        if (this.#parenDepth === 0 && this.#beginDepth === 0) {
          this.#skel(';');
          this.#endStatement();
          return;
        }
        break;
    }
    this.#skel(String.fromCharCode(b));
  }

  /** Ends the current word: the first one decides whether the statement is held; psql's BEGIN … END tracking. */
  #endWord(): void {
    this.#inWord = false;
    const w = this.#word;
    if (this.#deciding) {
      this.#deciding = false;
      this.#holding = HELD_WORDS.has(w);
      if (!this.#holding) this.#release();
    }
    // psqlscan.l: CREATE [OR REPLACE] FUNCTION|PROCEDURE … BEGIN … END: its semicolons do not end the statement.
    if (this.#identCount === 0) this.#idents = [];
    if ((w === 'create' || w === 'function' || w === 'procedure' || w === 'or' || w === 'replace') && this.#identCount < 4) this.#idents[this.#identCount] = w[0]!;
    this.#identCount++;
    const id = this.#idents;
    if (id[0] === 'c' && (id[1] === 'f' || id[1] === 'p' || (id[1] === 'o' && id[2] === 'r' && (id[3] === 'f' || id[3] === 'p'))) && this.#parenDepth === 0) {
      if (w === 'begin') this.#beginDepth++;
      else if (w === 'case') {
        if (this.#beginDepth >= 1) this.#beginDepth++;
      } else if (w === 'end' && this.#beginDepth > 0) this.#beginDepth--;
    }
    this.#justEndedE = w === 'e';
  }

  /** The statement is not held after all: what was held goes out, the rest streams. */
  #release(): void {
    this.#flushSeg();
    for (const b of this.#held) this.#out.push(b);
    this.#held = [];
    this.#segHeld = false;
  }

  #endStatement(): void {
    this.#flushSeg();
    this.#segHeld = false;
    this.#mode = Mode.Between;
    this.#lex = Lex.Code;
    if (!this.#holding) return;
    this.#holding = false;
    const held = this.#held;
    this.#held = [];
    const verdict = this.#judge(this.#skeleton, held);
    if (verdict === 'keep') for (const b of held) this.#out.push(b);
    else this.counts[verdict]++;
  }

  #judge(skeleton: string, held: Buffer[]): 'keep' | 'ownership' | 'privileges' {
    const t = skeleton
      .toLowerCase()
      .replace(/([(),;])/g, ' $1 ')
      .split(/\s+/)
      .filter(Boolean);
    if (t[0] === 'copy' && /\sfrom\s+stdin\b/i.test(skeleton)) this.#copyPending = true;
    if (t[0] === 'set' && t.includes('standard_conforming_strings')) {
      const v = /standard_conforming_strings\s*(?:=|\bto\b)\s*'?(on|off|true|false)\b/i.exec(Buffer.concat(held).toString('utf8'));
      if (v) this.#scs = /^(on|true)$/i.test(v[1]!);
    }
    const sessionAuth =
      (t[0] === 'set' && t[1] === 'session' && t[2] === 'authorization') ||
      (t[0] === 'set' && (t[1] === 'session' || t[1] === 'local') && t[2] === 'session' && t[3] === 'authorization') ||
      (t[0] === 'reset' && t[1] === 'session' && t[2] === 'authorization');
    if (this.#opts.noOwner && (sessionAuth || isOwnerChange(t))) return 'ownership';
    if (this.#opts.noPrivileges && this.#inAcl) {
      if (t[0] === 'grant' || t[0] === 'revoke' || (t[0] === 'alter' && t[1] === 'default' && t[2] === 'privileges') || sessionAuth) return 'privileges';
    }
    return 'keep';
  }
}

/**
 * `ALTER <object> OWNER TO <role>;` (tokens, lowercase, literals masked). Not the rename of a
 * column, attribute or constraint called `owner` (`ALTER TABLE t RENAME [COLUMN] owner TO x`).
 */
function isOwnerChange(t: string[]): boolean {
  const n = t.length;
  if (n < 6 || t[0] !== 'alter' || t[n - 1] !== ';' || t[n - 4] !== 'owner' || t[n - 3] !== 'to') return false;
  if (!/^(?:"q"|[a-z_\x80-\uffff][\w$\x80-\uffff]*)$/.test(t[n - 2]!)) return false;
  const before = t[n - 5]!;
  if (before === 'rename' && n - 5 >= 3) return false;
  if ((before === 'column' || before === 'attribute' || before === 'constraint') && t[n - 6] === 'rename') return false;
  return true;
}

/** A filter for `noOwner` / `noPrivileges`, or undefined when neither is asked for. */
export function plainSqlFilter(opts: SqlFilterOptions): PlainSqlFilter | undefined {
  return opts.noOwner || opts.noPrivileges ? new PlainSqlFilter(opts) : undefined;
}
