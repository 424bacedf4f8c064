/**
 * The lexical parts of SQL text that are not code: string literals (E'' escapes), quoted
 * identifiers, dollar quotes and comments (nested block comments), as PostgreSQL's lexer reads
 * them. What rewrites SQL (the globals, a database's properties) skips these to find only what
 * is code.
 */

export const IDENT_START = /[A-Za-z_\u0080-\uffff]/;
export const IDENT_CHAR = /[A-Za-z0-9_$\u0080-\uffff]/;

/** Index just past the quoted text that starts at `i` (`quote` doubled inside it; `backslash`: E'' escapes). */
function skipQuoted(sql: string, i: number, quote: string, backslash = false): number {
  let j = i + 1;
  while (j < sql.length) {
    const c = sql[j]!;
    if (backslash && c === '\\') j += 2;
    else if (c === quote) {
      if (sql[j + 1] === quote) j += 2;
      else return j + 1;
    } else j++;
  }
  return j;
}

/** At `i` a `$tag$` opening a dollar quote (not part of an identifier or a parameter `$1`)? Its tag. */
function dollarTag(sql: string, i: number): string | undefined {
  if (i > 0 && IDENT_CHAR.test(sql[i - 1]!)) return undefined;
  const m = /^\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/.exec(sql.slice(i, i + 200));
  return m?.[0];
}

/** Index just past the comment or quoted text that starts at `i`, or `undefined` if none starts there. */
export function skipNonCode(sql: string, i: number): number | undefined {
  const c = sql[i]!;
  if (c === '-' && sql[i + 1] === '-') {
    const nl = sql.indexOf('\n', i);
    return nl < 0 ? sql.length : nl;
  }
  if (c === '/' && sql[i + 1] === '*') {
    let depth = 1;
    let j = i + 2;
    while (j < sql.length && depth > 0) {
      if (sql[j] === '/' && sql[j + 1] === '*') (depth++, (j += 2));
      else if (sql[j] === '*' && sql[j + 1] === '/') (depth--, (j += 2));
      else j++;
    }
    return j;
  }
  if (c === '"') return skipQuoted(sql, i, '"');
  if (c === "'") {
    const e = i > 0 && /[eE]/.test(sql[i - 1]!) && !(i > 1 && IDENT_CHAR.test(sql[i - 2]!));
    return skipQuoted(sql, i, "'", e);
  }
  if (c === '$') {
    const tag = dollarTag(sql, i);
    if (!tag) return undefined;
    const end = sql.indexOf(tag, i + tag.length);
    return end < 0 ? sql.length : end + tag.length;
  }
  return undefined;
}
