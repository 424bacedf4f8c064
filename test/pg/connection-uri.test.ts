/** `--dbname` URIs read as libpq reads them (PostgreSQL 15 docs, 34.1.1.2), not as WHATWG URLs. */
import { describe, expect, it } from 'vitest';
import { parseConnectionString } from '../../src/pg/connection.js';

describe('parseConnectionString: connection URIs', () => {
  const cases: Array<[string, Record<string, string>, string?]> = [
    ['postgresql://vault@db:5433/vault', { user: 'vault', host: 'db', port: '5433', dbname: 'vault' }],
    ['postgres://db/vault', { host: 'db', dbname: 'vault' }],
    ['postgresql://', {}],
    ['postgresql:///vault?host=/run/postgresql', { dbname: 'vault', host: '/run/postgresql' }],
    // a user and an empty host: the socket directory in the query, or percent-encoded as the host
    ['postgresql://postgres@/shop?host=/tmp/sock%20dir&port=5499', { user: 'postgres', dbname: 'shop', host: '/tmp/sock dir', port: '5499' }],
    ['postgresql://postgres:pw@/shop?host=/sock', { user: 'postgres', dbname: 'shop', host: '/sock' }, 'pw'],
    ['postgresql://postgres@%2Fsock%2Fdir:5499/shop', { user: 'postgres', host: '/sock/dir', port: '5499', dbname: 'shop' }],
    ['postgresql://%2Fvar%2Frun%2Fpostgresql/vault', { host: '/var/run/postgresql', dbname: 'vault' }],
    // IPv6, several hosts, percent-encoded user, password and database
    ['postgresql://[::1]:5432/x', { host: '::1', port: '5432', dbname: 'x' }],
    ['postgresql://a:1,b,[fe80::1]:3/x?target_session_attrs=read-write', { host: 'a,b,fe80::1', port: '1,,3', dbname: 'x', target_session_attrs: 'read-write' }],
    ['postgresql://us%40er:p%40ss%3Aw@h/d%2Fb', { user: 'us@er', host: 'h', dbname: 'd/b' }, 'p@ss:w'],
    ['postgresql://u:@h/d', { user: 'u', host: 'h', dbname: 'd' }, ''],
    ['POSTGRESQL://h?sslmode=require&application_name=a%20b', { host: 'h', sslmode: 'require', application_name: 'a b' }],
  ];
  it.each(cases)('%s', (uri, params, password) => {
    const spec = parseConnectionString(uri);
    expect(spec.params).toEqual(params);
    expect(spec.password).toBe(password);
  });

  it('refuses what libpq refuses, naming why, never echoing the password', () => {
    for (const [uri, why] of [
      ['postgresql://h:port/x', /port "port" is not a number/],
      ['postgresql://[::1/x', /IPv6 address without its closing/],
      ['postgresql://u:s3cr%ZZ@h/x', /malformed percent-encoding/],
      ['postgresql://h/x?novalue', /"novalue" is not key=value/],
    ] as const) {
      expect(() => parseConnectionString(uri), uri).toThrow(why);
      try {
        parseConnectionString(uri);
      } catch (err) {
        expect((err as Error).message).not.toContain('s3cr');
      }
    }
  });
});
