/** Key parsing, key files and key generation, checked against age-keygen. */
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Encrypter, armor, generateHybridIdentity, identityToRecipient } from 'age-encryption';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  generateIdentity,
  parseIdentity,
  parseRecipient,
  readIdentityFile,
  readRecipientsFile,
  recipientOf,
  writeSecretFileExclusive,
} from '../../src/crypto/age.js';
import { UsageError } from '../../src/errors.js';
import { ageKeygen, run, tempDir } from './helpers.js';

let dir: string;
let cleanup: () => Promise<void>;
let key: { path: string; identity: string; recipient: string };

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
  key = await ageKeygen(dir);
});
afterAll(async () => cleanup());

let n = 0;
async function file(text: string | Buffer, mode = 0o600): Promise<string> {
  const path = join(dir, `f${n++}`);
  await writeFile(path, text);
  await chmod(path, mode); // not subject to the umask
  return path;
}

/** The promise rejects with a UsageError whose message matches and holds no secret. */
async function rejectsUsage(p: Promise<unknown>, pattern: RegExp, secret?: string): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UsageError);
  const e = err as UsageError;
  expect(e.message).toMatch(pattern);
  expect(e.message).not.toContain('\n');
  if (secret !== undefined) {
    const body = secret.slice('AGE-SECRET-KEY-1'.length, 'AGE-SECRET-KEY-1'.length + 12);
    expect(`${e.message} ${e.hint ?? ''} ${String(e.cause)}`).not.toContain(body);
  }
}

describe('readIdentityFile', () => {
  it('reads an age-keygen file', async () => {
    expect(await readIdentityFile(key.path)).toEqual([key.identity]);
  });

  it('tolerates CRLF, a BOM, comments, blank lines, several identities', async () => {
    const other = await generateIdentity();
    const hybrid = await generateHybridIdentity();
    const path = await file(`\ufeff# a comment\r\n\r\n${key.identity}\r\n# created: x\r\n${other.identity}\r\n${hybrid}\r\n`);
    expect(await readIdentityFile(path)).toEqual([key.identity, other.identity, hybrid]);
  });

  it('refuses a file readable or writable by group or others, with the chmod fix', async () => {
    const text = await readFile(key.path, 'utf8');
    for (const mode of [0o644, 0o640, 0o604, 0o620, 0o602]) {
      const path = await file(text, mode);
      await rejectsUsage(readIdentityFile(path), new RegExp(`run chmod 600 ${path}$`), key.identity);
    }
    expect(await readIdentityFile(await file(text, 0o400))).toEqual([key.identity]);
  });

  it('refuses a missing file, a directory, an empty file, a comments-only file', async () => {
    await rejectsUsage(readIdentityFile(join(dir, 'nope.txt')), /^cannot read identity file .*nope\.txt: no such file$/);
    await rejectsUsage(readIdentityFile(dir), /is (not a regular file|a directory)/);
    await rejectsUsage(readIdentityFile(await file('')), /contains no identities/);
    await rejectsUsage(readIdentityFile(await file('# only\n\n# comments\n')), /contains no identities/);
  });

  it('refuses a passphrase-encrypted identity file, binary and armored', async () => {
    const e = new Encrypter();
    e.setScryptWorkFactor(2);
    e.setPassphrase('pw');
    const encrypted = await e.encrypt(await readFile(key.path));
    await rejectsUsage(readIdentityFile(await file(Buffer.from(encrypted))), /is itself encrypted with age; decrypt it first \(age -d/);
    await rejectsUsage(readIdentityFile(await file(armor.encode(encrypted), 0o644)), /is itself encrypted with age/);
  });

  it('refuses a recipient (public key) file', async () => {
    await rejectsUsage(readIdentityFile(await file(`# public\n${key.recipient}\n`)), /line 2: this is a public key \(recipient\), not a secret key/);
  });

  it('refuses ssh keys', async () => {
    const pem = '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n';
    await rejectsUsage(readIdentityFile(await file(pem)), /ssh keys are not supported/);
    await rejectsUsage(readIdentityFile(await file('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO user@host\n')), /line 1: ssh keys are not supported/);
  });

  it('refuses garbage, binary, lowercase and plugin identities', async () => {
    await rejectsUsage(readIdentityFile(await file(`${key.identity}\nhello world\n`)), /line 2: not an age identity/);
    await rejectsUsage(readIdentityFile(await file(Buffer.from([0x41, 0, 0x42, 0x0a]))), /is not a text file/);
    await rejectsUsage(readIdentityFile(await file(key.identity.toLowerCase())), /line 1: invalid age secret key \(must be upper case/, key.identity);
    await rejectsUsage(readIdentityFile(await file('AGE-PLUGIN-YUBIKEY-1QQQQQQ\n')), /line 1: invalid age plugin identity/);
  });

  it('refuses truncated or mistyped keys without printing them', async () => {
    const truncated = key.identity.slice(0, -5);
    await rejectsUsage(readIdentityFile(await file(truncated + '\n')), /line 1: invalid age secret key \(bad checksum, truncated or mistyped\)$/, key.identity);
    const typo = key.identity.slice(0, 30) + (key.identity[30] === 'Q' ? 'P' : 'Q') + key.identity.slice(31);
    await rejectsUsage(readIdentityFile(await file(`# x\n\n${typo}\n`)), /line 3: invalid age secret key/, key.identity);
  });
});

describe('readRecipientsFile', () => {
  it('reads recipients with comments, blank lines and CRLF; drops duplicates', async () => {
    const other = await generateIdentity();
    const path = await file(`# team\r\n${key.recipient}\r\n\r\n  ${other.recipient}  \r\n${key.recipient}\r\n`, 0o644);
    expect(await readRecipientsFile(path)).toEqual([key.recipient, other.recipient]);
  });

  it('accepts hybrid post-quantum recipients', async () => {
    const pq = await identityToRecipient(await generateHybridIdentity());
    expect(await readRecipientsFile(await file(`${pq}\n`))).toEqual([pq]);
  });

  it('names the bad line', async () => {
    const bad = key.recipient.slice(0, -1) + (key.recipient.endsWith('q') ? 'p' : 'q');
    await rejectsUsage(readRecipientsFile(await file(`${key.recipient}\n# c\n${bad}\n`)), /^recipients file .* line 3: ".*…" is not a valid age recipient/);
    await rejectsUsage(readRecipientsFile(await file('ssh-ed25519 AAAAC3Nza user\n')), /line 1: ssh public keys are not supported/);
    await rejectsUsage(readRecipientsFile(await file(`${key.identity}\n`)), /line 1: this is a secret key/, key.identity);
    await rejectsUsage(readRecipientsFile(await file('age1yubikey1qwertyuiop\n')), /unsupported recipient type/);
  });

  it('refuses missing and empty files', async () => {
    await rejectsUsage(readRecipientsFile(join(dir, 'missing')), /^cannot read recipients file .*: no such file$/);
    await rejectsUsage(readRecipientsFile(await file('# nobody\n')), /contains no recipients/);
  });
});

describe('parseRecipient', () => {
  it('accepts X25519 and hybrid recipients, trimmed', async () => {
    expect(parseRecipient(` ${key.recipient}\n`)).toBe(key.recipient);
    const pq = await identityToRecipient(await generateHybridIdentity());
    expect(parseRecipient(pq)).toBe(pq);
  });

  it('refuses bad values, showing public ones shortened and never secrets', () => {
    expect(() => parseRecipient('')).toThrow(UsageError);
    expect(() => parseRecipient('age1xyz')).toThrow(/"age1xyz" is not a valid age recipient/);
    expect(() => parseRecipient(key.recipient.slice(0, 40))).toThrow(/^"age1\w{16}…" is not a valid age recipient/);
    expect(() => parseRecipient('hello')).toThrow(/is not an age recipient/);
    let msg = '';
    try {
      parseRecipient(key.identity);
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).toMatch(/secret key/);
    expect(msg).not.toContain(key.identity.slice(16, 30));
    expect(() => parseRecipient(key.identity.toLowerCase())).toThrow(/^this is a secret key/);
  });

  it("agrees with the age library (which it no longer loads to check) on valid keys and every one-character change, case change, cut and extension", async () => {
    const library = (r: string): boolean => {
      try {
        new Encrypter().addRecipient(r);
        return true;
      } catch {
        return false;
      }
    };
    const ours = (r: string): boolean => {
      try {
        parseRecipient(r);
        return true;
      } catch {
        return false;
      }
    };
    const alphabet = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';
    const x25519 = await Promise.all(Array.from({ length: 4 }, async () => (await generateIdentity()).recipient));
    const pq = await identityToRecipient(await generateHybridIdentity());
    const cases: string[] = [...x25519, pq, x25519[0]!.toUpperCase(), `${x25519[0]!.slice(0, 10)}${x25519[0]!.slice(10).toUpperCase()}`];
    for (const r of [x25519[0]!, x25519[1]!]) {
      for (let i = 4; i < r.length; i++) {
        // every position, two substitutions each (one of them the neighbour in the alphabet)
        const c = alphabet.indexOf(r[i]!);
        cases.push(r.slice(0, i) + alphabet[(c + 1) % 32] + r.slice(i + 1), r.slice(0, i) + alphabet[(c + 17) % 32] + r.slice(i + 1));
      }
      cases.push(r.slice(0, -1), `${r}q`, r.slice(0, 5) + r.slice(6), `${r.slice(0, -6)}qqqqqq`);
    }
    for (let i = 7; i < pq.length; i += 97) cases.push(pq.slice(0, i) + (pq[i] === 'q' ? 'p' : 'q') + pq.slice(i + 1));
    cases.push(pq.slice(0, -8), `${pq}qq`);
    const disagree = cases.filter((r) => r.startsWith('age1') && ours(r) !== library(r));
    expect(disagree).toEqual([]);
    expect(cases.filter(ours).sort()).toEqual([...x25519, pq].sort());
  });

  it('identities: agrees with the age library (which it does not load to check them) on every one-character change, case change, cut and extension', async () => {
    const library = async (k: string): Promise<boolean> => {
      try {
        await identityToRecipient(k);
        return true;
      } catch {
        return false;
      }
    };
    const ours = async (k: string): Promise<boolean> => {
      try {
        await parseIdentity(k);
        return true;
      } catch {
        return false;
      }
    };
    const alphabet = 'QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L';
    const x25519 = await Promise.all(Array.from({ length: 3 }, async () => (await generateIdentity()).identity));
    const pq = await generateHybridIdentity();
    const valid = [...x25519, pq];
    const cases: string[] = [...valid, x25519[0]!.toLowerCase(), `${x25519[0]!.slice(0, 20)}${x25519[0]!.slice(20).toLowerCase()}`];
    for (const k of [x25519[0]!, pq]) {
      for (let i = k.indexOf('1') + 1; i < k.length; i++) {
        const c = alphabet.indexOf(k[i]!);
        cases.push(k.slice(0, i) + alphabet[(c + 1) % 32] + k.slice(i + 1), k.slice(0, i) + alphabet[(c + 17) % 32] + k.slice(i + 1));
      }
      cases.push(k.slice(0, -1), `${k}Q`, k.slice(0, 20) + k.slice(21), `${k.slice(0, -6)}QQQQQQ`, `${k}QQQQQQQQ`);
    }
    const verdicts = await Promise.all(cases.map(async (k) => ({ k, ours: await ours(k), library: await library(k) })));
    expect(verdicts.filter((v) => v.k.startsWith('AGE-SECRET-KEY-') && v.ours !== v.library).map((v) => v.k)).toEqual([]);
    expect(verdicts.filter((v) => v.ours).map((v) => v.k).sort()).toEqual([...valid].sort());
  });
});

describe('generateIdentity / recipientOf', () => {
  it("produces age-keygen's file format, readable by age-keygen -y", async () => {
    const g = await generateIdentity();
    expect(g.fileText).toMatch(
      /^# created: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)\n# public key: age1[02-9ac-hj-np-z]{58}\nAGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}\n$/,
    );
    expect(g.fileText).toContain(`# public key: ${g.recipient}\n${g.identity}\n`);
    const path = await file(g.fileText);
    expect((await run('age-keygen', ['-y', path])).toString().trim()).toBe(g.recipient);
    expect(await readIdentityFile(path)).toEqual([g.identity]);
    expect(await recipientOf(g.identity)).toBe(g.recipient);
    // Same shape as age-keygen's own output.
    const theirs = (await run('age-keygen', [])).toString().split('\n');
    const ours = g.fileText.split('\n');
    expect(ours.map((l) => l.replace(/[0-9a-zA-Z]/g, 'x').length)).toEqual(theirs.map((l) => l.replace(/[0-9a-zA-Z]/g, 'x').length));
  });

  it('writes the created time as RFC 3339 local time like Go', async () => {
    const saved = process.env.TZ;
    try {
      const at = new Date('2024-01-02T03:04:05.678Z');
      process.env.TZ = 'UTC';
      expect((await generateIdentity(at)).fileText).toMatch(/^# created: 2024-01-02T03:04:05Z\n/);
      process.env.TZ = 'Asia/Kolkata';
      expect((await generateIdentity(at)).fileText).toMatch(/^# created: 2024-01-02T08:34:05\+05:30\n/);
      process.env.TZ = 'America/New_York';
      expect((await generateIdentity(at)).fileText).toMatch(/^# created: 2024-01-01T22:04:05-05:00\n/);
    } finally {
      if (saved === undefined) delete process.env.TZ;
      else process.env.TZ = saved;
    }
  });

  it('recipientOf matches age-keygen -y and refuses invalid identities without echoing them', async () => {
    expect(await recipientOf(key.identity)).toBe(key.recipient);
    await rejectsUsage(recipientOf(key.identity.slice(0, -2)), /invalid age secret key/, key.identity);
    await rejectsUsage(recipientOf(key.recipient), /public key/);
  });
});

describe('writeSecretFileExclusive', () => {
  it('creates the file 0600 and missing parents 0700, and refuses to overwrite', async () => {
    const path = join(dir, 'new', 'deeper', 'key.txt');
    await writeSecretFileExclusive(path, 'secret\n');
    expect(await readFile(path, 'utf8')).toBe('secret\n');
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'new'))).mode & 0o777).toBe(0o700);
    expect((await stat(join(dir, 'new', 'deeper'))).mode & 0o777).toBe(0o700);
    await rejectsUsage(writeSecretFileExclusive(path, 'other\n'), new RegExp(`^${path} already exists; refusing to overwrite a key file$`));
    expect(await readFile(path, 'utf8')).toBe('secret\n');
  });

  it('keeps the mode of an existing parent directory and reports unusable paths', async () => {
    await mkdir(join(dir, 'open'), { mode: 0o755 });
    await writeSecretFileExclusive(join(dir, 'open', 'k'), 'x');
    expect((await stat(join(dir, 'open'))).mode & 0o777).toBe(0o755);
    const plain = await file('not a dir');
    await rejectsUsage(writeSecretFileExclusive(join(plain, 'k'), 'x'), /^cannot create (directory|key file)/);
  });
});
