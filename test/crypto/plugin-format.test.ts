/**
 * The pure parts of the age plugin client (src/crypto/plugin.ts): which strings are plugin
 * identities and recipients (and which `age1…1…` types are age's own), the IPC stanza encoding
 * (age header format: 64-column base64 lines, a short last line), and age's label-set rule.
 * The protocol itself is exercised against a real plugin process in plugin.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { checkLabelSets, encodeIpcStanza, pluginIdentityName, pluginRecipientName } from '../../src/crypto/plugin.js';
import { parseIdentity, parseRecipient } from '../../src/crypto/age.js';

// Made by test/fixtures/age-plugin/age-plugin-coffertest --keygen (a test key, nothing else).
const IDENTITY = 'AGE-PLUGIN-COFFERTEST-14RK8XXHNLFX4H9G2A22GS0LCM8A9N0QKQHPGJ47RQ9MGC5GMMAKSP9FLJ7';
const RECIPIENT = 'age1coffertest18k23jtmkvvuuu4l06zp0ce6a5yx2w9a4jxw0tk26xtx74rr30u3qu7ajk8';

describe('plugin identities and recipients', () => {
  it('names the plugin of well-formed ones only', async () => {
    expect(pluginIdentityName(IDENTITY)).toBe('coffertest');
    expect(pluginRecipientName(RECIPIENT)).toBe('coffertest');
    expect(await parseIdentity(IDENTITY)).toBe(IDENTITY);
    expect(parseRecipient(RECIPIENT)).toBe(RECIPIENT);
    // Case: identities upper case, recipients lower case (bech32 forbids mixed case).
    expect(pluginIdentityName(IDENTITY.toLowerCase())).toBeUndefined();
    expect(pluginRecipientName(RECIPIENT.toUpperCase())).toBeUndefined();
    // One changed character breaks the checksum.
    const flip = (s: string, i: number): string => s.slice(0, i) + (s[i] === 'Q' || s[i] === 'q' ? (s[i] === 'Q' ? 'P' : 'p') : s[i] === s[i]!.toUpperCase() ? 'Q' : 'q') + s.slice(i + 1);
    expect(pluginIdentityName(flip(IDENTITY, 40))).toBeUndefined();
    expect(pluginRecipientName(flip(RECIPIENT, 40))).toBeUndefined();
    await expect(parseIdentity(flip(IDENTITY, 40))).rejects.toThrow(/^invalid age plugin identity/);
    expect(() => parseRecipient(flip(RECIPIENT, 40))).toThrow(/unsupported recipient type/);
    // age's own types are not plugins, and a name has no path separator.
    expect(pluginRecipientName('age1pq1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq')).toBeUndefined();
    expect(pluginIdentityName('AGE-PLUGIN-A/B-1QQQQQQQ')).toBeUndefined();
  });
});

describe('IPC stanzas', () => {
  it('encode as age header stanzas: 64-column base64 lines, then a shorter (possibly empty) last line', () => {
    expect(encodeIpcStanza('done')).toBe('-> done\n\n');
    expect(encodeIpcStanza('add-identity', [IDENTITY])).toBe(`-> add-identity ${IDENTITY}\n\n`);
    expect(encodeIpcStanza('ok', [], Buffer.from('1234'))).toBe('-> ok\nMTIzNA\n');
    const b48 = Buffer.alloc(48, 0xff); // exactly 64 base64 characters: a full line, then an empty one
    expect(encodeIpcStanza('x', ['0'], b48)).toBe(`-> x 0\n${'/'.repeat(64)}\n\n`);
    const b49 = Buffer.alloc(49, 0xff);
    expect(encodeIpcStanza('x', [], b49).split('\n')).toEqual(['-> x', '/'.repeat(64), '/w', '']);
  });
});

describe("age's label rule", () => {
  it('accepts equal label sets in any order and refuses different ones, naming both recipients', () => {
    expect(() => checkLabelSets([])).not.toThrow();
    expect(() => checkLabelSets([{ recipient: 'a', labels: [] }, { recipient: 'b', labels: [] }])).not.toThrow();
    expect(() => checkLabelSets([{ recipient: 'a', labels: ['x', 'postquantum'] }, { recipient: 'b', labels: ['postquantum', 'x'] }])).not.toThrow();
    expect(() => checkLabelSets([{ recipient: 'age1pq1abc', labels: ['postquantum'] }, { recipient: RECIPIENT, labels: [] }])).toThrow(
      /^recipients "age1pq1abc" \(postquantum\) and "age1coffertest18k23j…" \(classic\) cannot be mixed in one backup/,
    );
  });
});
