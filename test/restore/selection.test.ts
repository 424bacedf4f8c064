/**
 * The selection rules of a selective restore and the archive header reader, on synthetic tables
 * of contents (pure: no database). selective.test.ts runs them against real archives.
 */
import { describe, expect, it } from 'vitest';
import { archiveMinorOf, parseArchiveHeader, pgMajorReading, type TocObject } from '../../src/pg/archive-toc.js';
import { parseListFile, selectEntries, type SelectionSpec } from '../../src/pipeline/selection.js';
import { majorOf } from '../../src/pg/versions.js';
import { UsageError } from '../../src/errors.js';
import { ArchiveOffsetScanner, scanProblem } from '../../src/pg/archive-offsets.js';

let next = 1;
function e(desc: string, namespace: string, tag: string, deps: TocObject[] = []): TocObject {
  return { dumpId: next++, desc, namespace, tag, owner: 'o', deps: deps.map((d) => d.dumpId), hasData: desc === 'TABLE DATA' };
}

// A partitioned table with one partition, a table with a foreign key to it, a function used by a
// default, a shared (not owned) sequence.
const enc = e('ENCODING', '', 'ENCODING');
const sales = e('SCHEMA', '', 'sales');
const fn = e('FUNCTION', 'sales', 'next_code()', [sales]);
const shared = e('SEQUENCE', 'sales', 'shared_seq', [sales]);
const parent = e('TABLE', 'sales', 'orders', [sales]);
const part = e('TABLE', 'sales', 'orders_2024', [sales, parent]);
const attach = e('TABLE ATTACH', 'sales', 'orders_2024', [parent, part]);
const partData = e('TABLE DATA', 'sales', 'orders_2024', [part]);
const items = e('TABLE', 'sales', 'items', [sales, shared]);
const itemsData = e('TABLE DATA', 'sales', 'items', [items]);
const itemsDefault = e('DEFAULT', 'sales', 'items code', [items, fn]);
const parentPk = e('CONSTRAINT', 'sales', 'orders orders_pkey', [parent]);
const fk = e('FK CONSTRAINT', 'sales', 'items items_order_fkey', [items, parentPk]);
const sharedSet = e('SEQUENCE SET', 'sales', 'shared_seq', [shared]);
const ownedSeq = e('SEQUENCE', 'sales', 'orders_id_seq', [sales, parent]);
const ownedBy = e('SEQUENCE OWNED BY', 'sales', 'orders_id_seq', [ownedSeq]);
const TOC = [enc, sales, fn, shared, parent, part, attach, partData, items, itemsData, itemsDefault, parentPk, fk, sharedSet, ownedSeq, ownedBy];

const spec = (s: Partial<SelectionSpec>): SelectionSpec => ({ tables: [], schemas: [], excludeTables: [], ...s });
const ids = (xs: TocObject[]): number[] => xs.map((x) => x.dumpId).sort((a, b) => a - b);

describe('selectEntries', () => {
  it('a foreign table comes with its server and the server\'s user mappings; another server\'s mappings stay out', () => {
    const pub = e('SCHEMA', '', 'ext');
    const fdw = e('FOREIGN DATA WRAPPER', '', 'postgres_fdw');
    const server = e('SERVER', '', 'remote', [fdw]);
    const other = e('SERVER', '', 'unused', [fdw]);
    // pg_dump 15 gives a mapping no dependency: its tag names the server, quoted as an identifier.
    const quoted = e('SERVER', '', 'Remote "x"', [fdw]);
    const mapping = e('USER MAPPING', '', 'USER MAPPING app SERVER remote');
    const mappingPublic = e('USER MAPPING', '', 'USER MAPPING public SERVER remote');
    const otherMapping = e('USER MAPPING', '', 'USER MAPPING app SERVER unused');
    const quotedMapping = e('USER MAPPING', '', 'USER MAPPING "we ird" SERVER "Remote ""x"""');
    const withDep = e('USER MAPPING', '', 'USER MAPPING x SERVER remote', [server]);
    const ft = e('FOREIGN TABLE', 'ext', 'ft', [pub, server]);
    const plain = e('TABLE', 'ext', 'plain', [pub]);
    const ft2 = e('FOREIGN TABLE', 'ext', 'ft2', [pub, quoted]);
    const toc = [enc, pub, fdw, server, other, quoted, mapping, mappingPublic, otherMapping, quotedMapping, withDep, ft, ft2, plain];
    expect(selectEntries(toc, spec({ tables: ['ft'] })).ids).toEqual(ids([enc, pub, fdw, server, mapping, mappingPublic, withDep, ft]));
    expect(selectEntries(toc, spec({ tables: ['ft2'] })).ids).toEqual(ids([enc, pub, fdw, quoted, quotedMapping, ft2]));
    // No foreign table selected: no server, no mapping.
    expect(selectEntries(toc, spec({ tables: ['plain'] })).ids).toEqual(ids([enc, pub, plain]));
  });

  it('--table: the table, its data and default, the definitions it needs without rows; a foreign key to an unselected table is left out and said', () => {
    const s = selectEntries(TOC, spec({ tables: ['items'] }));
    expect([...s.ids].sort((a, b) => a - b)).toEqual(ids([enc, sales, fn, shared, items, itemsData, itemsDefault, sharedSet]));
    expect(s.notes).toEqual(['FK CONSTRAINT sales.items items_order_fkey left out: it needs CONSTRAINT sales.orders orders_pkey, which is not restored']);
    expect(s.tables).toEqual(['sales.items']);
    // In archive order, as pg_restore streams it.
    expect(s.ids).toEqual(TOC.filter((x) => s.ids.includes(x.dumpId)).map((x) => x.dumpId));
    expect(s.listText.split('\n')[1]).toBe(`${enc.dumpId}; ENCODING ENCODING`);
  });

  it('a partition without its parent is refused; with it, the attach and the data come along', () => {
    expect(() => selectEntries(TOC, spec({ tables: ['orders_2024'] }))).toThrow(/^TABLE sales\.orders_2024 needs TABLE sales\.orders, which is not selected$/);
    // An owned sequence alone: its creation (identity) or OWNED BY needs its table.
    expect(() => selectEntries(TOC, spec({ tables: ['orders_id_seq'] }))).toThrow(/^SEQUENCE sales\.orders_id_seq needs TABLE sales\.orders, which is not selected$/);
    const s = selectEntries(TOC, spec({ tables: ['orders', 'orders_2024'] }));
    expect(s.ids).toEqual(expect.arrayContaining(ids([parent, part, attach, partData, parentPk, ownedSeq, ownedBy])));
    expect(s.ids).not.toContain(items.dumpId);
    // The partitioned table alone brings its partitions and their rows (the parent holds none).
    const alone = selectEntries(TOC, spec({ tables: ['orders'] }));
    expect([...alone.ids].sort((a, b) => a - b)).toEqual([...s.ids].sort((a, b) => a - b));
    expect(alone.tables).toEqual(['sales.orders', 'sales.orders_2024']);
    // …unless a partition is excluded: then its attach and rows stay out.
    const without = selectEntries(TOC, spec({ tables: ['orders'], excludeTables: ['orders_2024'] }));
    for (const gone of [part, attach, partData]) expect(without.ids).not.toContain(gone.dumpId);
  });

  it('--exclude-table takes what depends on it; --schema with --table narrows; names are exact', () => {
    const s = selectEntries(TOC, spec({ excludeTables: ['orders'] }));
    for (const gone of [parent, part, attach, partData, parentPk, fk, ownedSeq, ownedBy]) expect(s.ids).not.toContain(gone.dumpId);
    expect(s.ids).toEqual(expect.arrayContaining(ids([items, itemsData, itemsDefault, shared, sharedSet, fn])));
    expect(() => selectEntries(TOC, spec({ tables: ['Items'] }))).toThrow(UsageError);
    expect(() => selectEntries(TOC, spec({ tables: ['sales.items'] }))).toThrow(/--table "sales\.items" matches no table/);
    expect(() => selectEntries(TOC, spec({ tables: ['items'], schemas: ['public'] }))).toThrow(/--schema "public" matches no schema/);
  });

  it('--list-file: exactly the listed entries; unknown ids and empty lists are refused', () => {
    const text = `;\n; Archive created at …\n${items.dumpId}; 1259 1 TABLE sales items o\n;${itemsData.dumpId}; 0 1 TABLE DATA sales items o\n  ${sales.dumpId}; 2615 2 SCHEMA - sales o\n`;
    const list = parseListFile(text, 'l.txt');
    expect(list).toEqual([items.dumpId, sales.dumpId]);
    expect(selectEntries(TOC, spec({ listIds: list, listFile: 'l.txt' })).ids).toEqual([sales.dumpId, items.dumpId]);
    expect(() => selectEntries(TOC, spec({ listIds: [99999], listFile: 'l.txt' }))).toThrow(/entry 99999 is not in this backup/);
    expect(() => selectEntries(TOC, spec({ listIds: [], listFile: 'l.txt' }))).toThrow(/selects nothing/);
    expect(() => parseListFile('TABLE items\n', 'l.txt')).toThrow(/line 1 is not a pg_restore --list entry/);
    expect(() => selectEntries(TOC, spec({ listIds: list, tables: ['items'] }))).toThrow(/cannot be combined/);
  });
});

describe('selectEntries: what --schema brings and --exclude-table takes', () => {
  // app.events partitioned; app.events_a in app, parts.events_b in parts, sub-partitioned, with
  // leaf.events_b_rest (a default partition) in a third schema; public without a SCHEMA entry
  // (pg_dump 15) but with its COMMENT and ACL; a policy and a rule reading owners; columns drawing
  // from sequences: serial (DEFAULT entry), identity (the sequence depends on its table), shared
  // (the table's own entry depends on it).
  const app = e('SCHEMA', '', 'app');
  const parts = e('SCHEMA', '', 'parts');
  const leaf = e('SCHEMA', '', 'leaf');
  const ghost: TocObject = { dumpId: 900000, desc: 'SCHEMA', namespace: '', tag: 'public', owner: 'o', deps: [], hasData: false }; // not in the archive
  const pubComment = e('COMMENT', '', 'SCHEMA public', [ghost]);
  const pubAcl = e('ACL', '', 'SCHEMA public', [ghost]);
  const events = e('TABLE', 'app', 'events', [app]);
  const evA = e('TABLE', 'app', 'events_a', [app, events]);
  const evAAttach = e('TABLE ATTACH', 'app', 'events_a', [events, evA]);
  const evAData = e('TABLE DATA', 'app', 'events_a', [evA]);
  const evB = e('TABLE', 'parts', 'events_b', [parts, events]);
  const evBAttach = e('TABLE ATTACH', 'parts', 'events_b', [events, evB]);
  const evRest = e('TABLE', 'leaf', 'events_b_rest', [leaf, evB]);
  const evRestAttach = e('TABLE ATTACH', 'leaf', 'events_b_rest', [evB, evRest]);
  const evRestData = e('TABLE DATA', 'leaf', 'events_b_rest', [evRest]);
  const evIdx = e('INDEX', 'app', 'events_at_idx', [events]);
  const evRestIdx = e('INDEX', 'leaf', 'events_b_rest_at_idx', [evRest]);
  const evRestIdxAttach = e('INDEX ATTACH', 'leaf', 'events_b_rest_at_idx', [evIdx, evRestIdx]);
  const owners = e('TABLE', 'public', 'owners', []);
  const ownersData = e('TABLE DATA', 'public', 'owners', [owners]);
  const ownersPk = e('CONSTRAINT', 'public', 'owners owners_pkey', [owners]);
  const docs = e('TABLE', 'public', 'docs', []);
  const docsRls = e('ROW SECURITY', 'public', 'docs', [docs]);
  const policy = e('POLICY', 'public', 'docs p_own', [docs, owners]);
  const queue = e('TABLE', 'public', 'queue', []);
  const rule = e('RULE', 'public', 'queue r_copy', [queue, owners]);
  const items = e('TABLE', 'public', 'items', []);
  const itemsSeq = e('SEQUENCE', 'public', 'items_id_seq', [items]);
  const itemsOwned = e('SEQUENCE OWNED BY', 'public', 'items_id_seq', [itemsSeq]);
  const itemsDefault = e('DEFAULT', 'public', 'items id', [items, itemsSeq]);
  const idents = e('TABLE', 'public', 'idents', []);
  const identSeq = e('SEQUENCE', 'public', 'idents_id_seq', [idents]);
  const shared = e('SEQUENCE', 'public', 'shared_no', []);
  const tickets = e('TABLE', 'public', 'tickets', [shared]);
  const T = [enc, app, parts, leaf, pubComment, pubAcl, events, evA, evAAttach, evAData, evB, evBAttach, evRest, evRestAttach, evRestData, evIdx, evRestIdx, evRestIdxAttach, owners, ownersData, ownersPk, docs, docsRls, policy, queue, rule, items, itemsSeq, itemsOwned, itemsDefault, idents, identSeq, shared, tickets];

  it('--schema: a partitioned table brings its partitions at every level, whatever their schema, with their schemas', () => {
    const s = selectEntries(T, spec({ schemas: ['app'] }));
    expect(s.ids).toEqual(expect.arrayContaining(ids([events, evA, evAAttach, evAData, evB, evBAttach, evRest, evRestAttach, evRestData, evIdx, evRestIdx, evRestIdxAttach, parts, leaf])));
    expect(s.tables).toEqual(['app.events', 'app.events_a', 'parts.events_b', 'leaf.events_b_rest']);
    expect(s.notes).toEqual([]);
    // As with --table; and an excluded partition stays out with what is under it.
    expect(selectEntries(T, spec({ tables: ['events'] })).tables).toEqual(s.tables);
    const without = selectEntries(T, spec({ tables: ['events'], excludeTables: ['events_b'] }));
    for (const gone of [evB, evBAttach, evRest, evRestAttach, evRestData, evRestIdxAttach]) expect(without.ids).not.toContain(gone.dumpId);
    const withoutA = selectEntries(T, spec({ schemas: ['app'], excludeTables: ['events_a'] }));
    for (const gone of [evA, evAAttach, evAData]) expect(withoutA.ids).not.toContain(gone.dumpId);
    expect(withoutA.ids).toContain(evRestData.dumpId);
    // Nothing else of other schemas comes along.
    expect(s.ids).not.toContain(owners.dumpId);
  });

  it('--schema public brings its COMMENT and ACL, which hang on no SCHEMA entry', () => {
    const s = selectEntries(T, spec({ schemas: ['public'] }));
    expect(s.ids).toEqual(expect.arrayContaining(ids([pubComment, pubAcl, owners, docs])));
    expect(selectEntries(T, spec({ schemas: ['app'] })).ids).not.toContain(pubComment.dumpId);
    expect(selectEntries(T, spec({ tables: ['docs'] })).ids).not.toContain(pubAcl.dumpId);
  });

  it('--exclude-table names what it takes from restored tables (a policy, a rule), not what belonged to the excluded one', () => {
    for (const extra of [{}, { schemas: ['public'] }]) {
      const s = selectEntries(T, spec({ excludeTables: ['owners'], ...extra }));
      expect(s.notes.sort()).toEqual([
        'POLICY public.docs p_own left out: it needs TABLE public.owners, which is excluded',
        'RULE public.queue r_copy left out: it needs TABLE public.owners, which is excluded',
      ]);
      for (const gone of [owners, ownersData, ownersPk, policy, rule]) expect(s.ids).not.toContain(gone.dumpId);
      expect(s.ids).toEqual(expect.arrayContaining(ids([docs, docsRls, queue])));
    }
  });

  it('--exclude-table of a sequence a restored column draws from is refused (serial, identity, shared default); with its table, it goes quietly', () => {
    expect(() => selectEntries(T, spec({ excludeTables: ['items_id_seq'] }))).toThrow(/^--exclude-table "items_id_seq": SEQUENCE public\.items_id_seq gives the values of a serial or identity column of TABLE public\.items, which is restored; without the sequence, inserts relying on it would fail$/);
    expect(() => selectEntries(T, spec({ excludeTables: ['idents_id_seq'] }))).toThrow(/of a serial or identity column of TABLE public\.idents, which is restored/);
    expect(() => selectEntries(T, spec({ excludeTables: ['shared_no'] }))).toThrow(/gives the values of a column DEFAULT of TABLE public\.tickets, which is restored/);
    expect(() => selectEntries(T, spec({ tables: ['items'], excludeTables: ['items_id_seq'] }))).toThrow(UsageError);
    const both = selectEntries(T, spec({ excludeTables: ['items', 'items_id_seq', 'tickets', 'shared_no'] }));
    expect(both.notes).toEqual([]);
    for (const gone of [items, itemsSeq, itemsOwned, itemsDefault, tickets, shared]) expect(both.ids).not.toContain(gone.dumpId);
  });
});

describe('why bytes are not a whole archive, in a sentence', () => {
  it('a reason said of the archive follows its name; one that names a fault is said to be in it', () => {
    const reason = (bytes: Buffer): string => {
      const s = new ArchiveOffsetScanner();
      s.push(bytes);
      const r = s.end();
      if (r.ok) throw new Error('scanned whole');
      return r.reason;
    };
    // "…: it unknown data block type 7" was said.
    expect(scanProblem('the archive', 'unknown data block type 7')).toBe('unknown data block type 7 in the archive');
    expect(scanProblem('the custom archive', reason(Buffer.from('PGDMX garbage')))).toMatch(/^not a custom-format archive \(no PGDMP magic\) at byte \d+ in the custom archive$/);
    expect(scanProblem('the custom archive', reason(Buffer.from('PGDMP')))).toMatch(/^the custom archive ends inside /);
  });
});

describe('archive header and versions', () => {
  function header(minor: number, strs: string[]): Buffer {
    const int = (v: number): Buffer => Buffer.from([0, v & 0xff, (v >> 8) & 0xff, 0, 0]);
    const parts = [Buffer.from('PGDMP'), Buffer.from([1, minor, 0, 4, 8, 1]), minor >= 15 ? Buffer.from([0]) : int(0)];
    for (let i = 0; i < 7; i++) parts.push(int(1));
    for (const s of strs) parts.push(int(Buffer.byteLength(s)), Buffer.from(s));
    return Buffer.concat(parts);
  }

  it('reads the version bytes and the server and pg_dump versions (1.14 and 1.15 layouts)', () => {
    expect(parseArchiveHeader(header(14, ['db', '15.4', '15.4']))).toEqual({ version: [1, 14, 0], versionText: '1.14', dbname: 'db', serverVersion: '15.4', pgDumpVersion: '15.4' });
    expect(parseArchiveHeader(header(15, ['db', '16.2 (Debian)', '16.2']))).toMatchObject({ versionText: '1.15', serverVersion: '16.2 (Debian)', pgDumpVersion: '16.2' });
    // Cut short: the version bytes alone.
    expect(parseArchiveHeader(header(16, ['db', '17.0', '17.0']).subarray(0, 20))).toEqual({ version: [1, 16, 0], versionText: '1.16' });
    expect(parseArchiveHeader(Buffer.from('-- PostgreSQL database dump'))).toBeUndefined();
  });

  it('maps PostgreSQL majors to archive formats and back', () => {
    expect([12, 15, 16, 17, 18].map(archiveMinorOf)).toEqual([14, 14, 15, 16, 16]);
    expect([14, 15, 16].map(pgMajorReading)).toEqual([12, 16, 17]);
    expect(majorOf('16.2 (Debian 16.2-1)')).toBe(16);
    expect(majorOf('9.6.24')).toBe(9.6);
  });
});
