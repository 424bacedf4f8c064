/**
 * The backup's globals (`pg_dumpall --globals-only`) made safe to apply to a server that already
 * has roles. pg_dumpall writes `CREATE ROLE r;` then `ALTER ROLE r WITH … PASSWORD '…';` (and
 * later `ALTER ROLE r SET …`, `GRANT g TO r`): run as it is, the CREATE of a role the server has
 * fails and is skipped, but the ALTER still gives the role the backup's attributes, password and
 * settings. Here the SQL is read statement by statement (quotes, comments and dollar quotes
 * understood, so a role name cannot end a statement) and rewritten:
 *
 * - a role the server already has is left as it is: its CREATE ROLE, ALTER ROLE (attributes,
 *   password, settings), COMMENT ON ROLE, SECURITY LABEL and GRANT … ON PARAMETER are left out;
 * - a role the server lacks is created with all of that; its statements after the CREATE run only
 *   if this CREATE succeeded (psql's ERROR variable: a role created meanwhile by someone else is
 *   not altered either);
 * - a membership (`GRANT g TO m`) is applied when g or m is a role this restore creates; one
 *   between two roles the server already has is left out (the server's roles keep their memberships);
 * - DROP ROLE (pg_dumpall --clean) is left out; psql meta-commands of the backup (`\restrict`,
 *   `\unrestrict`) are left out, as is any statement with a backslash outside quotes (psql would
 *   run it as a meta-command); everything else (SET, tablespaces) runs as before.
 */
import { randomBytes } from 'node:crypto';
import { IDENT_CHAR, IDENT_START, skipNonCode } from './sql-lex.js';

/** A piece of the SQL text: a statement (from its first token to its `;`), a meta-command line, or what lies between. */
export interface Segment {
  kind: 'statement' | 'meta' | 'blank';
  text: string;
}

/** Splits psql input into statements, meta-command lines and the whitespace and comments between them. */
export function splitSql(sql: string): Segment[] {
  const out: Segment[] = [];
  let start = 0;
  let inStatement = false;
  let i = 0;
  const push = (kind: Segment['kind'], end: number): void => {
    if (end > start) out.push({ kind, text: sql.slice(start, end) });
    start = end;
  };
  while (i < sql.length) {
    const c = sql[i]!;
    if (!inStatement && c === '\\') {
      push('blank', i);
      const nl = sql.indexOf('\n', i);
      i = nl < 0 ? sql.length : nl + 1;
      push('meta', i);
      continue;
    }
    const skipped = skipNonCode(sql, i);
    if (skipped !== undefined) {
      // A comment outside a statement stays between statements; quotes start one.
      if (!inStatement && (c === '"' || c === "'" || c === '$')) {
        push('blank', i);
        inStatement = true;
      }
      i = skipped;
      continue;
    }
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (!inStatement) {
      push('blank', i);
      inStatement = true;
    }
    i++;
    if (c === ';') {
      push('statement', i);
      inStatement = false;
    }
  }
  push(inStatement ? 'statement' : 'blank', sql.length);
  return out;
}

/** A token of a statement: a bare word (its text; `name`: as PostgreSQL folds it), a quoted identifier, a string, or a symbol. */
interface Token {
  kind: 'word' | 'ident' | 'string' | 'symbol';
  /** Upper-case keyword for words; the name for identifiers; the text otherwise. */
  text: string;
  /** The role or object name the token stands for (words folded to lower case, identifiers unquoted). */
  name?: string;
}

/** The tokens of one statement (comments dropped); `backslash`: a backslash outside quotes (a psql meta-command). */
export function tokenize(stmt: string): { tokens: Token[]; backslash: boolean } {
  const tokens: Token[] = [];
  let backslash = false;
  let i = 0;
  while (i < stmt.length) {
    const c = stmt[i]!;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (c === '\\') backslash = true;
    const skipped = skipNonCode(stmt, i);
    if (skipped !== undefined) {
      if (c === '"') {
        const name = stmt.slice(i + 1, skipped - 1).replace(/""/g, '"');
        tokens.push({ kind: 'ident', text: name, name });
      } else if (c === "'" || c === '$') tokens.push({ kind: 'string', text: stmt.slice(i, skipped) });
      i = skipped;
      continue;
    }
    if (IDENT_START.test(c)) {
      let j = i + 1;
      while (j < stmt.length && IDENT_CHAR.test(stmt[j]!)) j++;
      const word = stmt.slice(i, j);
      // E'…' and U&"…" prefixes belong to the string or identifier that follows.
      if ((word === 'E' || word === 'e') && stmt[j] === "'") {
        const end = skipNonCode(stmt, j)!;
        tokens.push({ kind: 'string', text: stmt.slice(i, end) });
        i = end;
        continue;
      }
      tokens.push({ kind: 'word', text: word.toUpperCase(), name: word.replace(/[A-Z]/g, (x) => x.toLowerCase()) });
      i = j;
      continue;
    }
    tokens.push({ kind: 'symbol', text: c });
    i++;
  }
  return { tokens, backslash };
}

/** What a statement of the globals does to roles. */
export type GlobalsStatement =
  | { kind: 'create-role'; role: string }
  /** ALTER ROLE, COMMENT ON ROLE, SECURITY LABEL … ON ROLE: one role's own definition. */
  | { kind: 'role'; role: string }
  | { kind: 'drop-role' }
  | { kind: 'membership'; roles: string[]; members: string[] }
  /** GRANT/REVOKE … ON PARAMETER: privileges of roles on the server's settings (PUBLIC included as is). */
  | { kind: 'parameter-privilege'; grantees: string[] }
  /** A statement about roles coffer cannot read (it is left out). */
  | { kind: 'unknown-role' }
  | { kind: 'other' };

const ROLE_WORDS = new Set(['ROLE', 'USER', 'GROUP']);
/** Words that stand for a role without being its name (ALTER ROLE ALL, CURRENT_USER, …). */
const NOT_A_NAME = new Set(['ALL', 'CURRENT_USER', 'CURRENT_ROLE', 'SESSION_USER', 'PUBLIC', 'NONE']);

function roleName(t: Token | undefined): string | undefined {
  if (!t) return undefined;
  if (t.kind === 'ident') return t.name;
  if (t.kind === 'word' && !NOT_A_NAME.has(t.text)) return t.name;
  return undefined;
}

/** A comma-separated list of role names from `tokens[i]` up to a word in `stop` or the end; `undefined` when something else is in it. */
function nameList(tokens: Token[], i: number, stop: Set<string>, allowPublic = false): { names: string[]; end: number } | undefined {
  const names: string[] = [];
  let j = i;
  for (;;) {
    const t = tokens[j];
    const name = allowPublic && t?.kind === 'word' && t.text === 'PUBLIC' ? 'PUBLIC' : roleName(t);
    if (name === undefined || (t!.kind === 'word' && stop.has(t!.text))) return undefined;
    names.push(name);
    j++;
    if (tokens[j]?.kind === 'symbol' && tokens[j]!.text === ',') {
      j++;
      continue;
    }
    const next = tokens[j];
    if (!next || (next.kind === 'symbol' && next.text === ';') || (next.kind === 'word' && stop.has(next.text))) return { names, end: j };
    return undefined;
  }
}

const word = (t: Token | undefined, ...w: string[]): boolean => t?.kind === 'word' && w.includes(t.text);

/** What one statement (from {@link splitSql}) does to roles. */
export function classify(stmt: string): GlobalsStatement {
  const { tokens: t, backslash } = tokenize(stmt);
  const roleish = (): GlobalsStatement => ({ kind: 'unknown-role' });
  if (backslash) return roleish();
  if (word(t[0], 'CREATE') && word(t[1], ...ROLE_WORDS)) {
    const role = roleName(t[2]);
    return role === undefined ? roleish() : { kind: 'create-role', role };
  }
  if (word(t[0], 'ALTER') && word(t[1], ...ROLE_WORDS)) {
    const role = roleName(t[2]);
    return role === undefined ? roleish() : { kind: 'role', role };
  }
  if (word(t[0], 'DROP') && word(t[1], ...ROLE_WORDS)) return { kind: 'drop-role' };
  if (word(t[0], 'COMMENT') && word(t[1], 'ON') && word(t[2], 'ROLE')) {
    const role = roleName(t[3]);
    return role === undefined ? roleish() : { kind: 'role', role };
  }
  if (word(t[0], 'SECURITY') && word(t[1], 'LABEL')) {
    const on = t.findIndex((x, i) => i > 1 && word(x, 'ON'));
    if (on < 0) return { kind: 'other' };
    if (!word(t[on + 1], 'ROLE')) return { kind: 'other' };
    const role = roleName(t[on + 2]);
    return role === undefined ? roleish() : { kind: 'role', role };
  }
  if (word(t[0], 'GRANT', 'REVOKE')) {
    const on = t.findIndex((x) => word(x, 'ON'));
    const toFrom = t.findIndex((x) => word(x, 'TO', 'FROM'));
    if (on >= 0 && (toFrom < 0 || on < toFrom)) {
      // A privilege on an object: only those on parameters belong to roles alone.
      if (!t.slice(on + 1, on + 2).some((x) => word(x, 'PARAMETER'))) return { kind: 'other' };
      const list = toFrom < 0 ? undefined : nameList(t, toFrom + 1, new Set(['WITH', 'GRANTED', 'CASCADE', 'RESTRICT']), true);
      return list ? { kind: 'parameter-privilege', grantees: list.names } : roleish();
    }
    if (toFrom < 0) return roleish();
    // GRANT g[, …] TO m[, …] [WITH …] [GRANTED BY …]; REVOKE [ADMIN OPTION FOR] g FROM m
    let first = 1;
    if (word(t[0], 'REVOKE') && word(t[1], 'ADMIN', 'INHERIT', 'SET') && word(t[2], 'OPTION') && word(t[3], 'FOR')) first = 4;
    const roles = nameList(t, first, new Set(['TO', 'FROM']));
    const members = nameList(t, toFrom + 1, new Set(['WITH', 'GRANTED', 'CASCADE', 'RESTRICT']));
    if (!roles || roles.end !== toFrom || !members) return roleish();
    return { kind: 'membership', roles: roles.names, members: members.names };
  }
  return { kind: 'other' };
}

/** The globals rewritten by {@link globalsScript}. */
export interface GlobalsPlan {
  /** The SQL (with psql conditionals) to run with psql. */
  script: string;
  /** Roles the server already has, left as they are (in the backup's order). */
  kept: string[];
  /** Roles the script creates. */
  created: string[];
  /** Memberships between two roles the server already has, left out (`g to m`). */
  membershipsLeftOut: string[];
  /** Other statements left out (their first words): statements about roles that could not be read, privileges of PUBLIC on parameters. */
  leftOut: string[];
}

/** The first words of a statement, for a message (no password: cut before any string). */
function head(stmt: string): string {
  const cut = stmt.search(/['$]/);
  const s = (cut < 0 ? stmt : stmt.slice(0, cut)).replace(/\s+/g, ' ').trim();
  return s.length > 80 ? `${s.slice(0, 80)}…` : s;
}

/**
 * Rewrites pg_dumpall's globals for a server whose roles are `existing` (see the module comment).
 * `varPrefix`: the prefix of the psql variables the script sets (random by default, so that no
 * text of the backup can name them).
 */
export function globalsScript(sql: string, existing: Set<string>, varPrefix = `coffer_${randomBytes(6).toString('hex')}_`): GlobalsPlan {
  const kept = new Set<string>();
  const created = new Map<string, string>();
  const membershipsLeftOut: string[] = [];
  const leftOut: string[] = [];
  const out: string[] = [];
  /** The statement, run only if each of `roles` (created here) was created by this script. */
  const guarded = (stmt: string, roles: string[]): string => {
    const vars = [...new Set(roles.map((r) => created.get(r)).filter((v): v is string => v !== undefined))];
    return vars.length === 0 ? stmt : ['', ...vars.map((v) => `\\if :${v}`), stmt, ...vars.map(() => '\\endif'), ''].join('\n');
  };
  for (const seg of splitSql(sql)) {
    if (seg.kind === 'blank') {
      out.push(seg.text);
      continue;
    }
    if (seg.kind === 'meta') continue;
    const c = classify(seg.text);
    switch (c.kind) {
      case 'other':
        out.push(seg.text);
        break;
      case 'drop-role':
        break;
      case 'unknown-role':
        leftOut.push(head(seg.text));
        break;
      case 'create-role':
        if (existing.has(c.role)) kept.add(c.role);
        else if (created.has(c.role)) out.push(guarded(seg.text, [c.role]));
        else {
          const v = `${varPrefix}${created.size}`;
          out.push(seg.text, `\n\\if :ERROR\n\\set ${v} false\n\\else\n\\set ${v} true\n\\endif\n`);
          created.set(c.role, v);
        }
        break;
      case 'role':
        if (existing.has(c.role)) kept.add(c.role);
        else out.push(guarded(seg.text, [c.role]));
        break;
      case 'membership': {
        const all = [...c.roles, ...c.members];
        if (all.every((r) => existing.has(r))) {
          for (const g of c.roles) for (const m of c.members) membershipsLeftOut.push(`${g} to ${m}`);
        } else out.push(guarded(seg.text, all));
        break;
      }
      case 'parameter-privilege': {
        const old = c.grantees.filter((r) => r === 'PUBLIC' || existing.has(r));
        for (const r of old) if (r !== 'PUBLIC') kept.add(r);
        if (old.length === 0) out.push(guarded(seg.text, c.grantees));
        else if (old.includes('PUBLIC')) leftOut.push(head(seg.text));
        break;
      }
    }
  }
  return { script: out.join(''), kept: [...kept], created: [...created.keys()], membershipsLeftOut, leftOut };
}
