/**
 * Selective restore: which entries of a custom archive's table of contents a restore with
 * `--table`, `--schema`, `--exclude-table` or `--list-file` gives to pg_restore (as a `-L` list),
 * decided from the TOC alone, before any database exists.
 *
 * Names follow pg_restore 15's rules for -t and -n: exact and case-sensitive, as the catalog
 * spells them (no quotes, no wildcards); `--table` names a relation (table, view, materialized
 * view, foreign table, sequence) in any schema and cannot be schema-qualified (a dot is part of
 * the name): narrow it with `--schema` (both must match, as for pg_restore -n with -t).
 * pg_restore 15 has no exclude-table; `--exclude-table` uses the same rule.
 *
 * Unlike pg_restore -t, a selected relation comes with what belongs to it (so the restored
 * table is usable and checkable): its data, indexes, constraints, defaults, triggers, rules,
 * policies, owned sequences (and their values), comments, grants, statistics; and with the
 * definitions it needs that hold no rows (its schema, types, functions, non-owned sequences,
 * extensions, a foreign table's server with its user mappings). A foreign key to a table not restored is left out (it could not be created
 * without that table's rows) and logged. A selected relation that needs another relation (a
 * view on a table, a partition of a parent, an owned sequence its table) that is not selected is
 * refused: select both.
 * `--schema` alone chooses everything in the schemas, the schemas' own comments and grants (also
 * public's, which pg_dump 15 writes without a SCHEMA entry), and the partitions of their
 * partitioned tables in any schema.
 * An excluded relation takes with it everything that depends on it; each entry so left out is
 * logged, except what belongs only to what is excluded. Excluding a sequence that a column of a
 * restored table draws from (serial, identity, DEFAULT nextval) is refused.
 * `--list-file` is exact: the entries listed, nothing added, in archive order (a streamed
 * archive cannot be read out of order).
 */
import { UsageError } from '../errors.js';
import type { TocObject } from '../pg/archive-toc.js';

export interface SelectionSpec {
  tables: string[];
  schemas: string[];
  excludeTables: string[];
  /** The dump ids of a pg_restore -L list (its text parsed by {@link parseListFile}). */
  listIds?: number[];
  /** For messages: the list file's name. */
  listFile?: string;
}

export interface Selection {
  /** Dump ids for pg_restore -L, in archive order. */
  ids: number[];
  /** TABLE entries selected, as "schema.name" (for the summary). */
  tables: string[];
  /** What was left out that the user may not expect (foreign keys, dependents of exclusions). */
  notes: string[];
  /** The `-L` list text. */
  listText: string;
}

/** Whether any selective option was given. */
export function isSelective(spec: SelectionSpec): boolean {
  return spec.tables.length > 0 || spec.schemas.length > 0 || spec.excludeTables.length > 0 || spec.listIds !== undefined;
}

/** Entries that only describe another object. */
const DESCRIBES = new Set(['ACL', 'COMMENT', 'SECURITY LABEL']);
/** What pg_restore -t matches (pg_restore 15, _tocEntryRequired). */
const RELATION_KINDS = new Set(['TABLE', 'VIEW', 'MATERIALIZED VIEW', 'FOREIGN TABLE', 'SEQUENCE']);
/** Relations whose rows or definition another relation's entry needs: never pulled in implicitly. */
const HOLDS_ROWS = new Set(['TABLE', 'VIEW', 'MATERIALIZED VIEW', 'FOREIGN TABLE']);
/** Entries that exist only for a relation (or another such entry): never pulled in as a prerequisite. */
const RELATION_BOUND = new Set([
  ...HOLDS_ROWS,
  'TABLE DATA',
  'MATERIALIZED VIEW DATA',
  'INDEX',
  'INDEX ATTACH',
  'TABLE ATTACH',
  'CONSTRAINT',
  'CHECK CONSTRAINT',
  'FK CONSTRAINT',
  'DEFAULT',
  'TRIGGER',
  'RULE',
  'POLICY',
  'ROW SECURITY',
  'STATISTICS',
  'PUBLICATION TABLE',
  'PUBLICATION TABLES IN SCHEMA',
]);
/** Processed by pg_restore whatever the list says; kept in it for clarity. */
const SPECIAL = new Set(['ENCODING', 'STDSTRINGS', 'SEARCHPATH']);
/** Entries that only exist for a relation or sequence: left out with it without a word. */
const ATTACHED = new Set([...[...RELATION_BOUND].filter((d) => !HOLDS_ROWS.has(d)), 'SEQUENCE', 'SEQUENCE SET', 'SEQUENCE OWNED BY']);

/** An identifier as pg_dump's fmtId writes it in a tag ("SCHEMA public", "SCHEMA \"Mixed Case\""). */
function quoteIdent(name: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}

/**
 * An excluded sequence that a column of a restored table draws its values from (a serial or
 * other DEFAULT nextval, an identity column) is refused: without it the column loses its default
 * or its identity and every insert that relies on it fails later, with nothing said now.
 */
function refuseColumnSequences(toc: TocObject[], byId: Map<number, TocObject>, excluded: Set<number>, chosen: Set<number>): void {
  for (const id of excluded) {
    const seq = byId.get(id)!;
    if (seq.desc !== 'SEQUENCE') continue;
    const users: string[] = [];
    const tables: TocObject[] = [];
    // An identity column's sequence (and pg_dump's owned sequences) depend on their table.
    for (const d of seq.deps) {
      const t = byId.get(d);
      if (t && HOLDS_ROWS.has(t.desc) && chosen.has(d)) {
        users.push(`a serial or identity column of TABLE ${qualified(t)}`);
        tables.push(t);
      }
    }
    // A column DEFAULT nextval(...): in the table's own entry (a sequence not owned by it), or
    // an entry of its own that depends on the sequence and on the table.
    for (const x of toc) {
      if (x.desc === 'TABLE' && chosen.has(x.dumpId) && x.deps.includes(id) && !tables.includes(x)) {
        users.push(`a column DEFAULT of TABLE ${qualified(x)}`);
        tables.push(x);
      }
      if (x.desc !== 'DEFAULT' || !x.deps.includes(id)) continue;
      for (const d of x.deps) {
        const t = byId.get(d);
        if (!t || !HOLDS_ROWS.has(t.desc) || !chosen.has(d) || tables.includes(t)) continue;
        const column = x.tag.startsWith(`${t.tag} `) ? x.tag.slice(t.tag.length + 1) : x.tag;
        users.push(`the DEFAULT of column ${qualified(t)}.${column}`);
        tables.push(t);
      }
    }
    if (users.length === 0) continue;
    throw new UsageError(`--exclude-table ${JSON.stringify(seq.tag)}: ${what(seq)} gives the values of ${users.join(' and of ')}, which is restored; without the sequence, inserts relying on it would fail`, {
      hint: `exclude the table too: ${tables.map((t) => `--exclude-table ${JSON.stringify(t.tag)}`).join(' ')}; or keep the sequence`,
    });
  }
}

/** The dump ids of a pg_restore -L list: each line's leading number; ';' starts a comment. */
export function parseListFile(text: string, file: string): number[] {
  const ids: number[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith(';')) return;
    const m = /^(\d+)\s*;/.exec(line);
    if (!m) throw new UsageError(`--list-file ${file}: line ${i + 1} is not a pg_restore --list entry: ${JSON.stringify(raw.slice(0, 80))}`, { hint: 'write it from pg_restore --list (or coffer restore --output FILE, then pg_restore --list FILE) and comment out lines with ;' });
    ids.push(Number(m[1]));
  });
  return ids;
}

function qualified(e: TocObject): string {
  return e.namespace ? `${e.namespace}.${e.tag}` : e.tag;
}

function what(e: TocObject): string {
  return `${e.desc} ${qualified(e)}`;
}

/**
 * The entries to restore. UsageError (nothing created yet) when a name matches nothing, when
 * the selection is empty, or when a selected relation needs one that is not selected.
 */
export function selectEntries(toc: TocObject[], spec: SelectionSpec): Selection {
  const byId = new Map(toc.map((e) => [e.dumpId, e]));
  const notes: string[] = [];
  let chosen: Set<number>;

  if (spec.listIds !== undefined) {
    if (spec.tables.length > 0 || spec.schemas.length > 0 || spec.excludeTables.length > 0) {
      throw new UsageError('--list-file cannot be combined with --table, --schema or --exclude-table', { hint: 'edit the list instead: it is exactly what is restored' });
    }
    const unknown = spec.listIds.find((id) => !byId.has(id));
    if (unknown !== undefined) throw new UsageError(`--list-file ${spec.listFile}: entry ${unknown} is not in this backup's table of contents`, { hint: 'make the list from this backup (coffer restore --output FILE, then pg_restore --list FILE)' });
    if (spec.listIds.length === 0) throw new UsageError(`--list-file ${spec.listFile} selects nothing: every line is empty or commented out`);
    chosen = new Set(spec.listIds);
  } else {
    const inSchemas = (e: TocObject): boolean => spec.schemas.length === 0 || spec.schemas.includes(e.namespace);
    for (const s of spec.schemas) {
      if (!toc.some((e) => (e.desc === 'SCHEMA' && e.tag === s) || e.namespace === s)) {
        throw new UsageError(`--schema ${JSON.stringify(s)} matches no schema in the backup (names are exact and case-sensitive, without quotes)`, { hint: 'list the backup\'s schemas with coffer show' });
      }
    }
    const relationNamed = (name: string, flag: string): TocObject[] => {
      const hits = toc.filter((e) => RELATION_KINDS.has(e.desc) && e.tag === name && inSchemas(e));
      if (hits.length === 0) {
        const within = spec.schemas.length > 0 ? ` in schema ${spec.schemas.map((s) => JSON.stringify(s)).join(', ')}` : '';
        throw new UsageError(`${flag} ${JSON.stringify(name)} matches no table, view, sequence or foreign table${within} in the backup (names are exact and case-sensitive, without quotes or schema; narrow with --schema)`, {
          hint: "list the backup's tables with coffer show",
        });
      }
      return hits;
    };
    let roots: TocObject[];
    if (spec.tables.length > 0) roots = spec.tables.flatMap((t) => relationNamed(t, '--table'));
    else if (spec.schemas.length > 0) roots = toc.filter((e) => e.namespace !== '' ? inSchemas(e) : e.desc === 'SCHEMA' && spec.schemas.includes(e.tag));
    else roots = [...toc];
    const excluded = new Set(spec.excludeTables.flatMap((t) => relationNamed(t, '--exclude-table')).map((e) => e.dumpId));
    chosen = new Set(roots.map((e) => e.dumpId).filter((id) => !excluded.has(id)));
    refuseColumnSequences(toc, byId, excluded, chosen);
    // A chosen schema's own grants, comment and security label (their entries have no namespace).
    // pg_dump 15 writes no SCHEMA entry for an unchanged public schema, only its COMMENT and ACL
    // (their dependency is on an object not in the archive): those go by their tag.
    const schemaTags = spec.tables.length === 0 ? new Set(spec.schemas.map((s) => `SCHEMA ${quoteIdent(s)}`)) : new Set<string>();
    for (const e of toc) {
      if (!DESCRIBES.has(e.desc) || e.deps.length === 0 || e.namespace !== '') continue;
      if (e.deps.every((d) => chosen.has(d) && byId.get(d)?.desc === 'SCHEMA')) chosen.add(e.dumpId);
      else if (schemaTags.has(e.tag) && e.deps.every((d) => !byId.has(d) || (chosen.has(d) && byId.get(d)?.desc === 'SCHEMA'))) chosen.add(e.dumpId);
    }

    // What belongs to the chosen relations (data, indexes, constraints, owned sequences, and
    // what belongs to those: comments, sequence values), to a fixed point. Other relations are
    // never pulled in this way (a view over a chosen table is not restored unless chosen).
    // With --schema alone, everything in the schema is chosen already; what is pulled in is a
    // partitioned table's partitions in other schemas, and what belongs to them.
    const anchors = new Set([...chosen].filter((id) => RELATION_KINDS.has(byId.get(id)!.desc)));
    const pulled = spec.tables.length > 0 ? anchors : new Set<number>();
    if (spec.tables.length > 0 || spec.schemas.length > 0) {
      for (let grew = true; grew; ) {
        grew = false;
        for (const e of toc) {
          if (chosen.has(e.dumpId) || excluded.has(e.dumpId) || HOLDS_ROWS.has(e.desc)) continue;
          if (e.desc === 'TABLE ATTACH') {
            // A chosen partitioned table brings its partitions (its rows live there), and they
            // theirs; a chosen partition does not bring its parent (refused below instead).
            const partition = e.deps.map((d) => byId.get(d)).find((x) => x?.desc === 'TABLE' && x.tag === e.tag && x.namespace === e.namespace);
            const parent = e.deps.find((d) => d !== partition?.dumpId && byId.get(d)?.desc === 'TABLE');
            if (partition && parent !== undefined && anchors.has(parent) && !excluded.has(partition.dumpId)) {
              for (const id of [e.dumpId, partition.dumpId]) {
                chosen.add(id);
                anchors.add(id);
                pulled.add(id);
              }
              grew = true;
            }
            continue;
          }
          if (e.deps.some((d) => pulled.has(d))) {
            chosen.add(e.dumpId);
            anchors.add(e.dumpId);
            pulled.add(e.dumpId);
            grew = true;
          }
        }
      }
    }

    // Exclusions take everything that depends on them, to a fixed point; each entry so left out
    // is named, except what only belongs to what is left out (an excluded table's data, indexes,
    // constraints, own sequences, comments).
    const gone = new Set(excluded);
    const dropped: TocObject[] = [];
    for (let grew = true; grew; ) {
      grew = false;
      for (const id of chosen) {
        const e = byId.get(id)!;
        if (e.deps.some((d) => gone.has(d))) {
          chosen.delete(id);
          gone.add(id);
          dropped.push(e);
          grew = true;
        }
      }
    }
    for (const e of dropped) {
      if (DESCRIBES.has(e.desc) || SPECIAL.has(e.desc)) continue;
      // Its own relation (an entry tagged "table name", or the relation itself) is left out: it goes with it.
      const own = e.deps.map((d) => byId.get(d)).find((r) => r && RELATION_KINDS.has(r.desc) && r.namespace === e.namespace && (e.tag === r.tag || e.tag.startsWith(`${r.tag} `)));
      if (own && gone.has(own.dumpId)) continue;
      // An index, constraint, sequence value… of nothing restored goes with what it belongs to.
      const ofRestored = e.deps.some((d) => chosen.has(d) && (RELATION_BOUND.has(byId.get(d)!.desc) || byId.get(d)!.desc === 'SEQUENCE'));
      if (ATTACHED.has(e.desc) && !ofRestored) continue;
      const need = byId.get(e.deps.find((d) => excluded.has(d)) ?? e.deps.find((d) => gone.has(d))!)!;
      notes.push(`${what(e)} left out: it needs ${what(need)}, which is ${excluded.has(need.dumpId) ? 'excluded' : 'not restored'}`);
    }

    // Prerequisites: definitions without rows are added (recursively); an entry that belongs to
    // a chosen relation but also needs a relation not chosen (a foreign key to another table)
    // is left out; a chosen relation that needs one not chosen is refused.
    const rootIds = new Set(roots.map((r) => r.dumpId));
    const required = (e: TocObject): boolean => rootIds.has(e.dumpId);
    for (let changed = true; changed; ) {
      changed = false;
      for (const id of [...chosen]) {
        const e = byId.get(id);
        if (!e || !chosen.has(id)) continue;
        for (const d of e.deps) {
          const dep = byId.get(d);
          if (!dep || chosen.has(d)) continue; // not in the archive (system objects): nothing to do
          if (RELATION_BOUND.has(dep.desc) || gone.has(d) || (dep.desc === 'SEQUENCE' && dep.deps.some((x) => HOLDS_ROWS.has(byId.get(x)?.desc ?? '')))) {
            // A selected relation that needs another (a view its tables, a partition its parent, an
            // owned or identity sequence its table) is refused rather than silently dropped.
            if (required(e) && RELATION_KINDS.has(e.desc)) {
              throw new UsageError(`${what(e)} needs ${what(dep)}, which is not selected`, {
                hint: spec.tables.length > 0 ? `select it too (--table ${JSON.stringify(dep.tag)}), or leave ${JSON.stringify(e.tag)} out` : `select its schema too (--schema ${JSON.stringify(dep.namespace)}), or leave ${JSON.stringify(e.tag)} out (--exclude-table)`,
              });
            }
            chosen.delete(id);
            gone.add(id);
            changed = true;
            if (!SPECIAL.has(e.desc) && e.desc !== 'COMMENT' && e.desc !== 'ACL') notes.push(`${what(e)} left out: it needs ${what(dep)}, which is not restored`);
            break;
          }
          chosen.add(d);
          changed = true;
        }
      }
    }
    // A sequence pulled in as a prerequisite (a default's nextval) keeps its value: without its
    // SEQUENCE SET it would start again at 1 and hand out numbers the restored rows hold.
    for (const e of toc) if (e.desc === 'SEQUENCE SET' && !gone.has(e.dumpId) && e.deps.length > 0 && e.deps.every((d) => chosen.has(d))) chosen.add(e.dumpId);
    // A foreign server pulled in (a foreign table's) comes with its user mappings: without one,
    // the restored foreign table cannot be read ("user mapping not found"). pg_dump 15 gives a
    // mapping no dependency: its tag names the server (`USER MAPPING <user> SERVER <server>`,
    // both quoted as identifiers).
    // (A keyword is quoted by pg_dump though plain: both spellings are taken.)
    const servers = new Set(toc.filter((x) => x.desc === 'SERVER' && chosen.has(x.dumpId)).flatMap((x) => [` SERVER ${quoteIdent(x.tag)}`, ` SERVER "${x.tag.replace(/"/g, '""')}"`]));
    for (const e of toc) {
      if (e.desc !== 'USER MAPPING' || gone.has(e.dumpId)) continue;
      const server = e.tag.slice(e.tag.lastIndexOf(' SERVER '));
      if (e.deps.length > 0 ? e.deps.every((d) => chosen.has(d) && byId.get(d)?.desc === 'SERVER') : servers.has(server)) chosen.add(e.dumpId);
    }
    for (const e of toc) if (SPECIAL.has(e.desc)) chosen.add(e.dumpId);
  }

  const picked = toc.filter((e) => chosen.has(e.dumpId));
  if (!picked.some((e) => !SPECIAL.has(e.desc) && e.desc !== 'DATABASE' && e.desc !== 'DATABASE PROPERTIES')) {
    throw new UsageError('the selection matches nothing in the backup', { hint: "list the backup's contents with coffer show" });
  }
  const listText = `; coffer selective restore: ${picked.length} of ${toc.length} entries\n${picked.map((e) => `${e.dumpId}; ${e.desc} ${qualified(e)}`.replace(/\n/g, ' ')).join('\n')}\n`;
  return {
    ids: picked.map((e) => e.dumpId),
    tables: picked.filter((e) => e.desc === 'TABLE').map(qualified),
    notes,
    listText,
  };
}
