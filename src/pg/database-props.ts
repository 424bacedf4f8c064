/**
 * The database around the data: how a restore recreates it as it was.
 *
 * A custom archive carries the database's own definition in TOC entries that pg_restore applies
 * only with `--create`, under the archive's name (see {@link DatabaseTocEntry}). coffer restores
 * into a scratch database and renames it, so it applies them itself:
 *  - the CREATE DATABASE options (encoding, locale, locale provider, ICU locale) become the
 *    scratch database's options: a LATIN1 or SQL_ASCII database comes back LATIN1 or SQL_ASCII,
 *    a `C`-collated one sorts as before;
 *  - the owner, the ACL (`REVOKE CONNECT … FROM PUBLIC`), `ALTER DATABASE … SET`, `ALTER ROLE …
 *    IN DATABASE … SET`, the connection limit, the comment and security labels are applied to
 *    the scratch database (retargeted from the archive's name) before the rename.
 * Plain-SQL backups carry none of this (pg_dump writes it only with --create); their manifest
 * records the encoding and locale, which the scratch database gets.
 */
import { DatabaseError } from '../errors.js';
import type { DatabaseTocEntry } from './archive-offsets.js';
import { quoteIdent, quoteLiteral } from './admin.js';
import { skipNonCode } from './sql-lex.js';

/** The encoding and locale of a database, as its manifest records them. */
export interface DatabaseLocale {
  encoding: string;
  collate: string;
  ctype: string;
  /** `libc`, `icu` (PostgreSQL 15+) or `builtin` (17+). */
  localeProvider?: string;
  /** The ICU (or builtin) locale, when the provider is not libc. */
  locale?: string | null;
  icuRules?: string | null;
}

/** What a restore recreates of the database itself. */
export interface DatabaseDefinition {
  /** The database's name in the backup. */
  name: string;
  /** CREATE DATABASE options other than the name and template, in pg_dump's order. */
  options: Array<{ key: string; value: string }>;
  owner: string | null;
  /** The DATABASE PROPERTIES statements: connection limit, IS_TEMPLATE, SET, ROLE … IN DATABASE … SET. */
  properties: string | null;
  acl: string | null;
  comment: string | null;
  securityLabels: string[];
  /** Where it came from: the archive's table of contents, or the manifest (encoding and locale only). */
  from: 'archive' | 'manifest';
  /**
   * The encoding the archive's text is in (its ENCODING entry: pg_dump's client encoding). The
   * strings above hold those bytes one per character (latin1 decoding); they are sent back as
   * the same bytes under this client encoding, so non-UTF8 text comes back byte for byte.
   */
  clientEncoding: string;
}

/** The variable psql sets to the quoted name of the database it is connected to. */
export const TARGET_DB_VAR = 'coffer_target_db';

/** Whether a PostgreSQL encoding name is UTF-8. */
export function isUtf8(encoding: string): boolean {
  return /^utf-?8$/i.test(encoding);
}

/** Archive text (bytes as latin1 characters) as a JS string, for messages and UTF-8 statements. */
export function archiveText(raw: string, clientEncoding: string): string {
  return isUtf8(clientEncoding) ? Buffer.from(raw, 'latin1').toString('utf8') : raw;
}

/** Options of CREATE DATABASE that a new server may lack or that only pg_upgrade uses. */
const DROPPED_OPTIONS = new Set(['TEMPLATE', 'OID', 'COLLATION_VERSION', 'TABLESPACE']);

/**
 * The database's definition from a custom archive's database entries; `undefined` when the
 * archive has no DATABASE entry (pg_dump writes none with --table / --schema selections).
 */
export function definitionFromArchive(entries: DatabaseTocEntry[]): DatabaseDefinition | undefined {
  const db = entries.find((e) => e.desc === 'DATABASE');
  if (!db) return undefined;
  const options = parseCreateOptions(db.defn, db.tag);
  const encodingEntry = entries.find((e) => e.desc === 'ENCODING');
  const fromEntry = encodingEntry ? /client_encoding\s*=\s*'([^']+)'/.exec(encodingEntry.defn)?.[1] : undefined;
  const fromOption = options.find((o) => o.key === 'ENCODING')?.value.replace(/^'|'$/g, '');
  const def: DatabaseDefinition = {
    name: db.tag,
    options,
    owner: db.owner || null,
    properties: null,
    acl: null,
    comment: null,
    securityLabels: [],
    from: 'archive',
    clientEncoding: fromEntry ?? fromOption ?? 'UTF8',
  };
  for (const e of entries) {
    if (e.defn.trim() === '') continue;
    if (e.desc === 'DATABASE PROPERTIES') def.properties = (def.properties ?? '') + e.defn;
    else if (e.desc === 'ACL') def.acl = (def.acl ?? '') + e.defn;
    else if (e.desc === 'COMMENT') def.comment = (def.comment ?? '') + e.defn;
    else if (e.desc === 'SECURITY LABEL') def.securityLabels.push(e.defn);
  }
  return def;
}

/** The definition a plain-SQL backup's manifest allows: encoding and locale only. */
export function definitionFromManifest(name: string, l: DatabaseLocale): DatabaseDefinition {
  const options: Array<{ key: string; value: string }> = [{ key: 'ENCODING', value: quoteLiteral(l.encoding) }];
  if (l.localeProvider && l.localeProvider !== 'libc') options.push({ key: 'LOCALE_PROVIDER', value: l.localeProvider });
  if (l.collate === l.ctype) options.push({ key: 'LOCALE', value: quoteLiteral(l.collate) });
  else options.push({ key: 'LC_COLLATE', value: quoteLiteral(l.collate) }, { key: 'LC_CTYPE', value: quoteLiteral(l.ctype) });
  if (l.locale && l.localeProvider === 'icu') options.push({ key: 'ICU_LOCALE', value: quoteLiteral(l.locale) });
  if (l.locale && l.localeProvider === 'builtin') options.push({ key: 'BUILTIN_LOCALE', value: quoteLiteral(l.locale) });
  if (l.icuRules) options.push({ key: 'ICU_RULES', value: quoteLiteral(l.icuRules) });
  return { name, options, owner: null, properties: null, acl: null, comment: null, securityLabels: [], from: 'manifest', clientEncoding: 'UTF8' };
}

/**
 * The `KEY = value` options of pg_dump's `CREATE DATABASE <name> WITH …;` (values are quoted
 * literals or bare words). Throws when the statement is not in pg_dump's form.
 */
export function parseCreateOptions(defn: string, name: string): Array<{ key: string; value: string }> {
  const text = defn.trim();
  const heads = [`CREATE DATABASE ${quoteIdent(name)} WITH `, `CREATE DATABASE ${name} WITH `];
  const head = heads.find((h) => text.startsWith(h));
  if (!head) throw new DatabaseError(`the backup's CREATE DATABASE statement is not in the form pg_dump writes: ${JSON.stringify(text.slice(0, 120))}`);
  let rest = text.slice(head.length).replace(/;\s*$/, '');
  const out: Array<{ key: string; value: string }> = [];
  const re = /^\s*([A-Z_]+)\s*=\s*('(?:[^']|'')*'|[A-Za-z0-9_.-]+)/;
  while (rest.trim() !== '') {
    const m = re.exec(rest);
    if (!m) throw new DatabaseError(`cannot read the backup's CREATE DATABASE options at ${JSON.stringify(rest.trim().slice(0, 60))}`);
    out.push({ key: m[1]!, value: m[2]! });
    rest = rest.slice(m[0].length);
  }
  return out;
}

/** `CREATE DATABASE` for the scratch database, with the backup's encoding and locale (UTF-8 text). */
export function createStatement(scratch: string, def: DatabaseDefinition | undefined): { sql: string; dropped: string[] } {
  const text = (o: { key: string; value: string }): string => `${o.key} = ${def ? archiveText(o.value, def.clientEncoding) : o.value}`;
  const kept = (def?.options ?? []).filter((o) => !DROPPED_OPTIONS.has(o.key));
  const dropped = (def?.options ?? []).filter((o) => o.key === 'TABLESPACE').map(text);
  const opts = ['TEMPLATE = template0', ...kept.map(text)];
  return { sql: `CREATE DATABASE ${quoteIdent(scratch)} WITH ${opts.join(' ')};`, dropped };
}

/** The encoding and locale a definition asks for, for messages. */
export function describeLocale(def: DatabaseDefinition | undefined): string {
  if (!def) return 'the server defaults';
  const v = (k: string): string | undefined => {
    const raw = def.options.find((o) => o.key === k)?.value;
    return raw === undefined ? undefined : archiveText(raw, def.clientEncoding).replace(/^'|'$/g, '').replace(/''/g, "'");
  };
  const parts = [`encoding ${v('ENCODING') ?? '(default)'}`];
  const locale = v('LOCALE');
  if (locale !== undefined) parts.push(`locale ${locale}`);
  else if (v('LC_COLLATE') !== undefined) parts.push(`LC_COLLATE ${v('LC_COLLATE')}, LC_CTYPE ${v('LC_CTYPE')}`);
  const provider = v('LOCALE_PROVIDER');
  if (provider && provider !== 'libc') parts.push(`${provider} locale ${v('ICU_LOCALE') ?? v('BUILTIN_LOCALE') ?? '?'}`);
  return parts.join(', ');
}

/**
 * The statements that give a database the backup's owner, ACL, settings, connection limit,
 * comment and security labels, in the order pg_restore --create applies them, rewritten from
 * the backup's database name to psql's `:coffer_target_db` (the database psql is connected
 * to), in the archive's bytes (latin1 characters: send with `Buffer.from(…, 'latin1')` under
 * `def.clientEncoding`). `noOwner` leaves the owner as is (the restoring user); `noPrivileges`
 * leaves the ACL as is, as pg_restore's flags do.
 */
export function propertiesScript(def: DatabaseDefinition, opts: { noOwner: boolean; noPrivileges: boolean }): string {
  const to = `:${TARGET_DB_VAR}`;
  const parts: string[] = [];
  if (def.owner && !opts.noOwner) parts.push(`ALTER DATABASE ${to} OWNER TO ${quoteIdent(def.owner)};\n`);
  if (def.properties) parts.push(retargetDatabase(def.properties, def.name, to));
  if (def.comment) parts.push(retargetDatabase(def.comment, def.name, to));
  for (const l of def.securityLabels) parts.push(retargetDatabase(l, def.name, to));
  if (def.acl && !opts.noPrivileges) parts.push(retargetDatabase(def.acl, def.name, to));
  return parts.join('');
}

/**
 * Replaces the database name after the keyword DATABASE (`ALTER DATABASE x`, `ON DATABASE x`,
 * `IN DATABASE x`, `COMMENT ON DATABASE x`) with `replacement` (SQL text: a quoted name, or a
 * psql variable), outside string literals, quoted identifiers, dollar-quoted text and comments.
 * The name is matched as pg_dump writes it: quoted, or bare when it needs no quotes.
 */
export function retargetDatabase(sql: string, from: string, replacement: string): string {
  const forms = [quoteIdent(from)];
  if (/^[a-z_][a-z0-9_$]*$/.test(from)) forms.push(from);
  let out = '';
  let i = 0;
  const n = sql.length;
  while (i < n) {
    const c = sql[i]!;
    // Literals, quoted identifiers, dollar quotes and comments are copied as they are.
    const skipped = skipNonCode(sql, i);
    if (skipped !== undefined) {
      out += sql.slice(i, skipped);
      i = skipped;
      continue;
    }
    // The keyword DATABASE (a whole word), whitespace, then the name as a whole token.
    if ((c === 'D' || c === 'd') && (i === 0 || !/[A-Za-z0-9_$"]/.test(sql[i - 1]!)) && sql.slice(i, i + 8).toUpperCase() === 'DATABASE') {
      const ws = /^\s+/.exec(sql.slice(i + 8));
      if (ws) {
        const at = i + 8 + ws[0].length;
        const form = forms.find((f) => sql.startsWith(f, at) && !/[A-Za-z0-9_$]/.test(sql[at + f.length] ?? ''));
        if (form) {
          out += sql.slice(i, at) + replacement;
          i = at + form.length;
          continue;
        }
      }
    }
    out += c;
    i++;
  }
  return out;
}
