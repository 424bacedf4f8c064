/**
 * Manifest signing keys and SSHSIG signatures, checked against OpenSSH's own ssh-keygen
 * (Debian's /usr/bin/ssh-keygen): keys either one makes are used by the other, signatures either
 * one makes are accepted by the other, and a flipped byte is rejected by both.
 */
import { execa } from 'execa';
import { generateKeyPairSync } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { findSigner, parseAllowedSigners, readTrustedSigners } from '../../src/trust/allowed-signers.js';
import { fingerprint, generateSigningKey, publicKeyLine, readSigningKeyFile } from '../../src/trust/signing-key.js';
import { checkSignature, MANIFEST_NAMESPACE, parseSignature, signMessage } from '../../src/trust/sshsig.js';
import { baseEnv, runCoffer } from '../harness/cli.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'coffer-sign-'));
});
afterAll(async () => rm(dir, { recursive: true, force: true }));

let n = 0;
async function file(text: string | Buffer, mode = 0o600): Promise<string> {
  const p = join(dir, `f${n++}`);
  await writeFile(p, text);
  await chmod(p, mode);
  return p;
}

async function sshKeygen(args: string[], input?: string | Buffer): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await execa('/usr/bin/ssh-keygen', args, { reject: false, ...(input !== undefined ? { input } : { stdin: 'ignore' as const }) });
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** ssh-keygen -Y verify (with the allowed_signers line) and -Y check-novalidate of `message`. */
async function sshVerify(allowedLine: string, principal: string, sig: string, message: Buffer): Promise<{ verify: number; novalidate: number }> {
  const allowed = await file(`${allowedLine}\n`);
  const sigFile = await file(sig);
  const v = await sshKeygen(['-Y', 'verify', '-f', allowed, '-I', principal, '-n', MANIFEST_NAMESPACE, '-s', sigFile], message);
  const c = await sshKeygen(['-Y', 'check-novalidate', '-n', MANIFEST_NAMESPACE, '-s', sigFile], message);
  return { verify: v.code, novalidate: c.code };
}

async function usageMessage(p: Promise<unknown>): Promise<string> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UsageError);
  return (err as Error).message;
}

describe('signing keys', () => {
  it('coffer\'s key file is an OpenSSH key: ssh-keygen derives the same public key and signs with it', async () => {
    const { key, fileText } = generateSigningKey('coffer@test');
    const path = await file(fileText);
    const pub = await sshKeygen(['-y', '-f', path]);
    expect(pub.code).toBe(0);
    expect(pub.stdout.trim()).toBe(publicKeyLine(key.publicKey, 'coffer@test'));
    const fp = await sshKeygen(['-l', '-f', path]);
    expect(fp.stdout).toContain(fingerprint(key.publicKey));
    // Read back by coffer: the same key.
    const back = await readSigningKeyFile(path);
    expect(back.publicKey.equals(key.publicKey)).toBe(true);
    expect(back.comment).toBe('coffer@test');
    // ssh-keygen signs with coffer's key file; coffer accepts that signature.
    const message = Buffer.from('{"manifest": true}\n');
    const msgFile = await file(message);
    const s = await sshKeygen(['-Y', 'sign', '-f', path, '-n', MANIFEST_NAMESPACE, msgFile]);
    expect(s.code).toBe(0);
    const parsed = parseSignature(await readFile(`${msgFile}.sig`, 'latin1'));
    expect('problem' in parsed).toBe(false);
    if ('problem' in parsed) return;
    expect(checkSignature(parsed, message)).toBe(true);
    expect(checkSignature(parsed, Buffer.concat([message, Buffer.from(' ')]))).toBe(false);
  });

  it('reads a key made by ssh-keygen -t ed25519 -N \'\', and its signatures verify with ssh-keygen -Y verify', async () => {
    const path = join(dir, 'ssh_ed25519');
    expect((await sshKeygen(['-q', '-t', 'ed25519', '-N', '', '-C', 'ops@db1', '-f', path])).code).toBe(0);
    const key = await readSigningKeyFile(path);
    expect(publicKeyLine(key.publicKey, 'ops@db1')).toBe((await readFile(`${path}.pub`, 'utf8')).trim());
    const message = Buffer.from('manifest bytes\n');
    const sig = signMessage(key, message);
    const pub = (await readFile(`${path}.pub`, 'utf8')).trim();
    expect(await sshVerify(`ops@db1 namespaces="${MANIFEST_NAMESPACE}" ${pub}`, 'ops@db1', sig, message)).toEqual({ verify: 0, novalidate: 0 });
  });

  it('reads a PKCS#8 PEM Ed25519 key', async () => {
    const { privateKey } = generateKeyPairSync('ed25519');
    const path = await file(privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
    const key = await readSigningKeyFile(path);
    const sig = parseSignature(signMessage(key, Buffer.from('x')));
    expect('problem' in sig ? sig.problem : checkSignature(sig, Buffer.from('x'))).toBe(true);
  });

  it('a signature flipped at any byte of the message is rejected by coffer and by ssh-keygen', async () => {
    const { key } = generateSigningKey('c@h');
    const message = Buffer.from(`${JSON.stringify({ id: '20261201T000000Z-00000000', database: 'vault', n: 1 }, null, 2)}\n`);
    const sig = signMessage(key, message);
    const allowed = `c@h namespaces="${MANIFEST_NAMESPACE}" ${publicKeyLine(key.publicKey, '')}`;
    expect(await sshVerify(allowed, 'c@h', sig, message)).toEqual({ verify: 0, novalidate: 0 });
    const parsed = parseSignature(sig);
    if ('problem' in parsed) throw new Error(parsed.problem);
    // Every position for coffer; first, middle and last byte for ssh-keygen (a process each).
    for (let i = 0; i < message.length; i++) {
      const bad = Buffer.from(message);
      bad[i] = bad[i]! ^ 0x01;
      expect(checkSignature(parsed, bad), `byte ${i}`).toBe(false);
      if (i === 0 || i === message.length >> 1 || i === message.length - 1) {
        const r = await sshVerify(allowed, 'c@h', sig, bad);
        expect(r.verify, `ssh-keygen verify, byte ${i}`).not.toBe(0);
        expect(r.novalidate, `ssh-keygen check-novalidate, byte ${i}`).not.toBe(0);
      }
    }
    // Another namespace is another signature.
    expect(checkSignature(parsed, message, 'git')).toBe(false);
  });

  it('refuses group/other-readable, encrypted, public, age and garbage key files, never quoting the key', async () => {
    const { fileText } = generateSigningKey('c@h');
    const secretPart = fileText.split('\n')[3]!;
    for (const mode of [0o640, 0o604, 0o660]) {
      const msg = await usageMessage(readSigningKeyFile(await file(fileText, mode)));
      expect(msg).toMatch(/accessible by other users .*chmod 600/);
      expect(msg).not.toContain(secretPart);
    }
    const enc = join(dir, 'enc_key');
    await sshKeygen(['-q', '-t', 'ed25519', '-N', 'pass phrase', '-f', enc]);
    expect(await usageMessage(readSigningKeyFile(enc))).toMatch(/passphrase/);
    expect(await usageMessage(readSigningKeyFile(`${enc}.pub`))).toMatch(/public key/);
    expect(await usageMessage(readSigningKeyFile(await file('AGE-SECRET-KEY-1QQQ\n')))).toMatch(/age identity/);
    const rsa = join(dir, 'rsa_key');
    await sshKeygen(['-q', '-t', 'rsa', '-b', '1024', '-N', '', '-f', rsa]);
    expect(await usageMessage(readSigningKeyFile(rsa))).toMatch(/ssh-rsa key; manifest signing keys are Ed25519/);
    // A corrupt body: a byte changed inside the private section.
    const lines = fileText.split('\n');
    lines[3] = lines[3]!.slice(0, 10) + (lines[3]![10] === 'A' ? 'B' : 'A') + lines[3]!.slice(11);
    const msg = await usageMessage(readSigningKeyFile(await file(lines.join('\n'))));
    expect(msg).toMatch(/corrupt/);
    expect(msg).not.toContain(secretPart);
    expect(await usageMessage(readSigningKeyFile(join(dir, 'missing')))).toMatch(/cannot read signing key .*no such file/);
  });
});

describe('allowed_signers', () => {
  const a = generateSigningKey('a').key;
  const b = generateSigningKey('b').key;
  const line = (k: typeof a) => publicKeyLine(k.publicKey, '');

  it('reads principals, options, comments; matches keys and namespaces', () => {
    const t = parseAllowedSigners(
      [
        '# trusted backup hosts',
        '',
        `coffer@db1 namespaces="${MANIFEST_NAMESPACE}" ${line(a)} db1 key`,
        `"x@y,z@w" namespaces="git" ${line(b)}`,
        'ops@old ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== legacy',
      ].join('\n'),
      'signers',
    );
    expect(t.signers.map((s) => s.principals)).toEqual(['coffer@db1', 'x@y,z@w']);
    const ok = findSigner(t, a.publicKey, MANIFEST_NAMESPACE);
    expect(ok.ok && ok.signer.principals).toBe('coffer@db1');
    const wrongNs = findSigner(t, b.publicKey, MANIFEST_NAMESPACE);
    expect(wrongNs.ok ? '' : wrongNs.why).toMatch(/does not allow for namespace/);
    const unknown = findSigner(t, generateSigningKey('c').key.publicKey, MANIFEST_NAMESPACE);
    expect(unknown.ok ? '' : unknown.why).toMatch(/^signed by an unknown key SHA256:[A-Za-z0-9+/]{43}$/);
    // valid-before in the past: not trusted now.
    const old = parseAllowedSigners(`p valid-before="20200101" ${line(a)}`, 'f');
    expect(findSigner(old, a.publicKey, MANIFEST_NAMESPACE).ok).toBe(false);
    expect(findSigner(old, a.publicKey, MANIFEST_NAMESPACE, new Date('2019-06-01')).ok).toBe(true);
  });

  it('refuses cert-authority, unknown options, corrupt keys and empty files, naming the line', () => {
    const bad = (text: string) => {
      try {
        parseAllowedSigners(text, 'signers');
      } catch (e) {
        expect(e).toBeInstanceOf(UsageError);
        return (e as Error).message;
      }
      throw new Error('accepted');
    };
    expect(bad(`# c\n*@example.com cert-authority ${line(a)}`)).toMatch(/^trusted signers file signers line 2: cert-authority is not supported/);
    expect(bad(`p frobnicate ${line(a)}`)).toMatch(/line 1: unknown option "frobnicate"/);
    expect(bad('p ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==')).toMatch(/corrupt or truncated/);
    expect(bad('# nothing\n')).toMatch(/holds no ssh-ed25519 key/);
    expect(bad('p')).toMatch(/line 1: expected/);
  });

  it('refuses a trusted signers file that others can write', async () => {
    const p = await file(`p ${line(a)}\n`, 0o666);
    expect(await usageMessage(readTrustedSigners(p))).toMatch(/writable by other users/);
    await chmod(p, 0o644);
    expect((await readTrustedSigners(p)).signers).toHaveLength(1);
  });
});

describe('coffer keygen --signing', () => {
  it('writes an OpenSSH key 0600, prints its public key and an allowed_signers line ssh-keygen accepts, and never overwrites', async () => {
    const out = join(dir, 'keys', 'signing');
    const r = await runCoffer(['keygen', '--signing', '--out', out], { env: baseEnv() });
    expect(r.code, r.stderr).toBe(0);
    expect((await stat(out)).mode & 0o777).toBe(0o600);
    const [pubLine, allowedLine, ...rest] = r.stdout.trim().split('\n');
    expect(rest).toEqual([]);
    expect(pubLine).toMatch(/^ssh-ed25519 AAAAC3NzaC1lZDI1NTE5[A-Za-z0-9+/=]+ coffer@\S+$/);
    expect((await sshKeygen(['-y', '-f', out])).stdout.trim()).toBe(pubLine);
    const principal = allowedLine!.split(' ')[0]!;
    expect(allowedLine).toBe(`${principal} namespaces="${MANIFEST_NAMESPACE}" ${pubLine!.split(' ').slice(0, 2).join(' ')}`);
    // The key signs; ssh-keygen verifies with the printed allowed_signers line.
    const message = Buffer.from('hello\n');
    expect(await sshVerify(allowedLine!, principal, signMessage(await readSigningKeyFile(out), message), message)).toEqual({ verify: 0, novalidate: 0 });
    const before = await readFile(out, 'utf8');
    const again = await runCoffer(['keygen', '--signing', '--out', out], { env: baseEnv() });
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already exists; refusing to overwrite a key file/);
    expect(await readFile(out, 'utf8')).toBe(before);
    const noOut = await runCoffer(['keygen', '--signing'], { env: baseEnv() });
    expect(noOut.code).toBe(2);
    expect(noOut.stderr).toMatch(/--signing needs --out FILE/);
  });
});
