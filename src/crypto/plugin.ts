/**
 * The client side of age's plugin protocol, `identity-v1` (https://c2sp.org/age-plugin): restores
 * accept `AGE-PLUGIN-<NAME>-1…` identities (age-plugin-yubikey, age-plugin-tpm, …) by running
 * `age-plugin-<name> --age-plugin=identity-v1` (found on PATH, absolute directories only) and
 * handing it the header's stanzas; the plugin answers with the file key, which coffer checks
 * against the header MAC and then uses to decrypt the payload itself. The age CLI cannot hand a
 * file key back (it decrypts whole files only), so coffer speaks the protocol itself instead of
 * delegating to `age -d`. Backups to plugin recipients (`age1<name>1…`) run the same plugin
 * with `recipient-v1` ({@link wrapWithPlugin}), offering age's labels extension so that the
 * post-quantum mixing rule covers plugin stanzas too ({@link checkLabelSets}).
 *
 * The plugin's requests are answered as age does: `msg` is logged; `request-secret`,
 * `request-public` and `confirm` are asked on the terminal when coffer has one (stdin and stderr
 * are terminals), else answered `fail` (the plugin then gives up, and the restore fails saying
 * that this identity needs a terminal). Nothing the user types and no file key is logged.
 *
 * Errors (one line each): the plugin is not on PATH ({@link UsageError}, exit 2); it needs a PIN
 * or a confirmation and there is no terminal ({@link UsageError}, exit 2); it reports an `error`,
 * exits or closes its output before `done`, breaks the protocol, or stays silent for
 * {@link PLUGIN_SILENCE_MS} ({@link IntegrityError}, exit 5). The run's abort signal (SIGINT,
 * SIGTERM, `--timeout`) ends the plugin at once.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import * as path from 'node:path';
import type { Identity, Stanza } from 'age-encryption';
import { IntegrityError, UsageError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { holdProgressLines } from '../observe/progress.js';
import { bech32Decode } from './bech32.js';

/** A plugin silent this long (not counting time the user spends answering it) has failed. */
export const PLUGIN_SILENCE_MS = 120_000;
/** After `done` or a failure, how long the plugin gets to exit after SIGINT before SIGKILL. */
const PLUGIN_EXIT_GRACE_MS = 2_000;
const FILE_KEY_SIZE = 16;
/** Longest plugin message kept (a message is one line of a log). */
const MAX_MESSAGE = 300;

/** What the plugin client needs from the run: set once by the CLI ({@link configurePluginClient}). */
export interface PluginClientOptions {
  log?: Logger | undefined;
  signal?: AbortSignal | undefined;
  /** The plugin's environment (the CLI's child-safe one: no coffer or AWS secrets; libpq's PG* variables are left out too, {@link pluginEnv}). */
  env?: NodeJS.ProcessEnv | undefined;
  /** Whether the user can be asked (a PIN, a confirmation). Default: stdin and stderr are terminals. */
  interactive?: boolean | undefined;
}

let session: PluginClientOptions = {};

/** Sets the run's logger, abort signal, environment and interactivity for every plugin started later. */
export function configurePluginClient(opts: PluginClientOptions): void {
  session = { ...opts };
}

const NAME = /^[a-z0-9_.+-]+$/;

/**
 * A plugin's environment: the run's child-safe one (no coffer or AWS secrets) without libpq's
 * variables either: the database password reaches only PostgreSQL's own programs, and a
 * third-party plugin needs none of them.
 */
export function pluginEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !k.startsWith('PG')));
}

/**
 * The plugin name of a plugin identity (`AGE-PLUGIN-YUBIKEY-1…` → `yubikey`), or `undefined`
 * when `s` is not a well-formed one (upper case bech32 with the HRP `AGE-PLUGIN-<NAME>-`).
 */
export function pluginIdentityName(s: string): string | undefined {
  if (!s.startsWith('AGE-PLUGIN-') || s !== s.toUpperCase()) return undefined;
  const decoded = bech32Decode(s, 4096);
  if (decoded === undefined || !decoded.prefix.endsWith('-')) return undefined;
  const name = decoded.prefix.slice('age-plugin-'.length, -1);
  return name.length > 0 && NAME.test(name) ? name : undefined;
}

/** Native recipient types of age that look like plugin names (`age1pq1…`, `age1tag1…`, `age1tagpq1…`). */
const NATIVE_RECIPIENT_TYPES = new Set(['pq', 'tag', 'tagpq']);

/**
 * The plugin name of a plugin recipient (`age1yubikey1…` → `yubikey`), or `undefined` when `s` is
 * not a well-formed one (lower case bech32 with the HRP `age1<name>`, not a native type).
 */
export function pluginRecipientName(s: string): string | undefined {
  if (!s.startsWith('age1') || s !== s.toLowerCase()) return undefined;
  const decoded = bech32Decode(s, 4096);
  if (decoded === undefined || !decoded.prefix.startsWith('age1')) return undefined;
  const name = decoded.prefix.slice(4);
  return name.length > 0 && NAME.test(name) && !NATIVE_RECIPIENT_TYPES.has(name) ? name : undefined;
}

/** `age-plugin-<name>` on PATH (absolute directories only, never the working directory), or undefined. */
export function findPlugin(name: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const bin = `age-plugin-${name}`;
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!path.isAbsolute(dir)) continue;
    const p = path.join(dir, bin);
    try {
      if (!statSync(p).isFile()) continue;
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

// --- IPC stanzas: the age v1 header's stanza text format --------------------------------------

interface IpcStanza {
  type: string;
  args: string[];
  body: Buffer;
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64').replace(/=+$/, '');
}

/** One stanza in age's text format: `-> type args…`, the body in base64 lines of 64, a short last line. */
export function encodeIpcStanza(type: string, args: string[] = [], body: Uint8Array = new Uint8Array(0)): string {
  const text = b64(body);
  let out = `-> ${[type, ...args].join(' ')}\n`;
  for (let i = 0; i + 64 <= text.length; i += 64) out += `${text.slice(i, i + 64)}\n`;
  return `${out}${text.slice(text.length - (text.length % 64))}\n`;
}

/** Strict unpadded base64 of a stanza body line; undefined when malformed. */
function decodeBody(lines: string[]): Buffer | undefined {
  const text = lines.join('');
  if (!/^[A-Za-z0-9+/]*$/.test(text) || text.length % 4 === 1) return undefined;
  const bytes = Buffer.from(text, 'base64');
  return b64(bytes) === text ? bytes : undefined;
}

/** Reads stanzas from the plugin's stdout as they complete. */
class StanzaReader {
  #buf = '';
  #lines: string[] = [];
  #pending: string[] | undefined;

  /** Feeds bytes; returns the stanzas completed by them. Throws on a malformed stanza. */
  push(chunk: Buffer): IpcStanza[] {
    this.#buf += chunk.toString('latin1');
    const out: IpcStanza[] = [];
    for (let nl = this.#buf.indexOf('\n'); nl >= 0; nl = this.#buf.indexOf('\n')) {
      this.#lines.push(this.#buf.slice(0, nl));
      this.#buf = this.#buf.slice(nl + 1);
    }
    if (this.#buf.length > 1024 * 1024) throw new Error('a line of more than 1 MiB');
    for (const line of this.#lines.splice(0)) {
      if (this.#pending === undefined) {
        if (!line.startsWith('-> ')) throw new Error('a line that does not start a stanza');
        this.#pending = [line];
        continue;
      }
      this.#pending.push(line);
      if (line.length < 64) {
        const [head, ...body] = this.#pending;
        this.#pending = undefined;
        const [type, ...args] = head!.slice(3).split(' ');
        const bytes = decodeBody(body);
        if (!type || bytes === undefined || args.some((a) => a.length === 0)) throw new Error('a malformed stanza');
        out.push({ type, args, body: bytes });
      } else if (line.length > 64) {
        throw new Error('a stanza body line longer than 64 columns');
      }
    }
    return out;
  }
}

/** Printable, one line, bounded: plugin text shown to the user or logged. */
function oneLine(text: string): string {
  const s = text.replace(/[\r\n\t]+/g, ' ').replace(/[^\x20-\x7e\u00a0-\uffff]/g, '?').trim();
  return s.length > MAX_MESSAGE ? `${s.slice(0, MAX_MESSAGE)}…` : s;
}

// --- terminal prompts ------------------------------------------------------------------------

function isInteractive(): boolean {
  return session.interactive ?? (!!process.stdin.isTTY && !!process.stderr.isTTY);
}

/** The prompt on screen, if any: plugins running at once (a backup's objects) ask one after the other. */
let prompting: Promise<unknown> = Promise.resolve();

/** Asks on the terminal; a secret is read with echo off. Rejects on Ctrl-C / Ctrl-D / abort. */
function ask(question: string, secret: boolean, signal: AbortSignal | undefined): Promise<string> {
  const asked = prompting.then(() => askNow(question, secret, signal));
  prompting = asked.catch(() => undefined);
  return asked;
}

function askNow(question: string, secret: boolean, signal: AbortSignal | undefined): Promise<string> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    const stdin = process.stdin;
    // Echo off before the prompt appears: whatever is typed after seeing it is never shown.
    const wasRaw = stdin.isRaw;
    if (stdin.isTTY) stdin.setRawMode(true);
    const release = holdProgressLines();
    process.stderr.write(`${question} `);
    const bytes: number[] = [];
    const done = (err: Error | undefined): void => {
      stdin.off('data', onData);
      signal?.removeEventListener('abort', onAbort);
      if (stdin.isTTY) stdin.setRawMode(wasRaw);
      stdin.pause();
      process.stderr.write('\n');
      release();
      const answer = Buffer.from(bytes).toString('utf8');
      bytes.fill(0);
      if (err) reject(err);
      else resolve(answer);
    };
    const onAbort = (): void => done(signal?.reason instanceof Error ? signal.reason : new Error('aborted'));
    const onData = (chunk: Buffer): void => {
      for (const byte of chunk) {
        if (byte === 0x0d || byte === 0x0a) return done(undefined);
        if (byte === 0x03) {
          done(new UsageError('the age plugin prompt was interrupted (Ctrl-C)'));
          process.kill(process.pid, 'SIGINT');
          return;
        }
        if (byte === 0x04) return done(new UsageError('the age plugin prompt got no answer (end of input)'));
        if (byte === 0x7f || byte === 0x08) {
          // One character back: its UTF-8 continuation bytes, then its first byte.
          while (bytes.length > 0 && (bytes[bytes.length - 1]! & 0xc0) === 0x80) bytes.pop();
          if (bytes.pop() !== undefined && !secret) process.stderr.write('\b \b');
          continue;
        }
        if (byte < 0x20) continue;
        bytes.push(byte);
        if (!secret) process.stderr.write(Buffer.of(byte));
      }
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    stdin.on('data', onData);
    stdin.resume();
  });
}

// --- one plugin run --------------------------------------------------------------------------

/** Why the plugin needed the user and could not have them (no terminal), for the final error. */
type Needed = 'a PIN or passphrase' | 'an answer' | 'a confirmation';

/** What differs between the two state machines. */
interface Conversation {
  machine: 'identity-v1' | 'recipient-v1';
  /** Phase 1, sent at once (ends with `done`). */
  phase1: string;
  /** What the plugin is needed for, in the "not installed" line. */
  neededFor: string;
  /** The hint of a plugin failure. */
  failureHint: string;
  /** What the plugin was doing, in "exited … before it finished <doing>". */
  doing: string;
  /** What to do without a terminal. */
  noTerminalHint: string;
  /** Handles a state-machine command (file-key, recipient-stanza, labels); false when it is not one. */
  onCommand: (s: IpcStanza, reply: (text: string) => void, failed: (what: string) => IntegrityError) => boolean;
}

/**
 * Runs `age-plugin-<name> --age-plugin=<machine>` through both phases: sends phase 1, then
 * answers the plugin's phase 2 until its `done`. The common commands (msg, request-*, confirm,
 * error, unknown ones) are handled here, the state machine's own by `c.onCommand`.
 *
 * @returns what the plugin asked of the user that could not be given (no terminal), if anything.
 */
async function converse(name: string, c: Conversation): Promise<{ needed: Needed | undefined }> {
  const bin = `age-plugin-${name}`;
  const { log, signal } = session;
  const env = pluginEnv(session.env ?? process.env);
  signal?.throwIfAborted();
  const file = findPlugin(name, env);
  if (file === undefined) {
    throw new UsageError(`age plugin ${bin} is not installed: it is needed for ${c.neededFor}, and was not found on PATH`, {
      hint: `install ${bin} on this host (in a directory of PATH)`,
    });
  }
  const child: ChildProcessWithoutNullStreams = spawn(file, [`--age-plugin=${c.machine}`], {
    // Plugins must not depend on the working directory (the spec); age uses the temp directory.
    cwd: path.parse(file).root,
    env,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const interactive = isInteractive();
  let stderrTail = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderrTail = (stderrTail + chunk.toString('utf8')).slice(-2000);
  });
  child.stdin.on('error', () => undefined); // EPIPE when the plugin exits early: the read side reports it

  const failed = (what: string, detail?: string): IntegrityError => {
    const last = oneLine(stderrTail.trim().split('\n').pop() ?? '');
    return new IntegrityError(`age plugin ${bin} ${what}`, {
      hint: c.failureHint,
      ...((detail ?? last) ? { detail: detail ?? `plugin stderr: ${last}` } : {}),
    });
  };
  const noTerminal = (needed: Needed, pluginMessage: string): UsageError =>
    new UsageError(`age plugin ${bin} needs ${needed} and coffer has no terminal to ask on${pluginMessage ? ` (the plugin said: ${pluginMessage})` : ''}`, {
      hint: c.noTerminalHint,
    });

  let needed: Needed | undefined;
  const reader = new StanzaReader();
  const send = (text: string): void => {
    child.stdin.write(text);
  };

  const exchange = new Promise<void>((resolve, reject) => {
    let silence: NodeJS.Timeout | undefined;
    let settled = false;
    let waitingForUser = false;
    const queue: IpcStanza[] = [];
    const armSilence = (): void => {
      clearTimeout(silence);
      if (!waitingForUser) silence = setTimeout(() => finish(failed(`did not answer within ${PLUGIN_SILENCE_MS / 1000} s`)), PLUGIN_SILENCE_MS);
    };
    const finish = (err?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(silence);
      signal?.removeEventListener('abort', onAbort);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onAbort = (): void => finish(signal?.reason ?? new Error('aborted'));
    signal?.addEventListener('abort', onAbort, { once: true });

    let busy = false;
    let closed: string | undefined;
    const handle = async (s: IpcStanza): Promise<void> => {
      switch (s.type) {
        case 'msg':
          log?.info(`age plugin ${bin}: ${oneLine(s.body.toString('utf8'))}`);
          return send(encodeIpcStanza('ok'));
        case 'error': {
          send(encodeIpcStanza('ok'));
          const which = { identity: 'with its identity', stanza: 'with a stanza of the header', recipient: 'with a recipient' }[s.args[0] ?? ''] ?? '';
          const text = oneLine(s.body.toString('utf8'));
          if (needed !== undefined) throw noTerminal(needed, text);
          throw failed(`reported an error${which ? ` ${which}` : ''}: ${text || '(no message)'}`, '');
        }
        case 'request-secret':
        case 'request-public':
        case 'confirm': {
          const prompt = oneLine(s.body.toString('utf8'));
          const kind: Needed = s.type === 'request-secret' ? 'a PIN or passphrase' : s.type === 'confirm' ? 'a confirmation' : 'an answer';
          if (s.type === 'confirm' && (s.args.length < 1 || s.args.length > 2)) throw failed('sent a malformed confirm request');
          if (!interactive) {
            needed ??= kind;
            log?.warn(`age plugin ${bin} asks for ${kind} (${prompt}), but coffer has no terminal to ask on: answering that it cannot`);
            return send(encodeIpcStanza('fail'));
          }
          waitingForUser = true;
          clearTimeout(silence);
          try {
            if (s.type === 'confirm') {
              const yes = Buffer.from(s.args[0]!, 'base64').toString('utf8');
              const no = s.args[1] !== undefined ? Buffer.from(s.args[1], 'base64').toString('utf8') : undefined;
              const answer = await ask(`${bin}: ${prompt} [${yes}${no !== undefined ? `/${no}` : ''}]`, false, signal);
              const chose = answer.trim().toLowerCase();
              if (no !== undefined && chose === no.toLowerCase()) return send(encodeIpcStanza('ok', ['no']));
              return send(encodeIpcStanza('ok', ['yes']));
            }
            const answer = await ask(`${bin}: ${prompt}`, s.type === 'request-secret', signal);
            return send(encodeIpcStanza('ok', [], Buffer.from(answer, 'utf8')));
          } finally {
            waitingForUser = false;
          }
        }
        default:
          if (!c.onCommand(s, send, (what) => failed(what))) send(encodeIpcStanza('unsupported'));
      }
    };
    const drain = async (): Promise<void> => {
      if (busy) return;
      busy = true;
      try {
        while (queue.length > 0 && !settled) {
          const s = queue.shift()!;
          if (s.type === 'done') return finish();
          await handle(s);
          armSilence();
        }
        if (closed !== undefined && !settled) {
          if (needed !== undefined) return finish(noTerminal(needed, ''));
          finish(failed(`exited (${closed}) before it finished ${c.doing}`));
        }
      } catch (err) {
        finish(err);
      } finally {
        busy = false;
      }
    };
    child.stdout.on('data', (chunk: Buffer) => {
      armSilence();
      try {
        queue.push(...reader.push(chunk));
      } catch (err) {
        finish(failed(`broke age's plugin protocol (${(err as Error).message})`));
        return;
      }
      void drain();
    });
    child.on('error', (err) => finish(failed(`could not be started: ${err.message}`)));
    child.on('close', (code, sig) => {
      // Stanzas still queued (a `done` among them) are handled first; drain() then reports the exit.
      closed = sig !== null ? `signal ${sig}` : `code ${code}`;
      void drain();
    });
    armSilence();
    send(c.phase1);
  });

  try {
    await exchange;
  } finally {
    await stop(child);
  }
  return { needed };
}

const RESTORE_NO_TERMINAL = 'run the restore interactively (from a terminal), or use for unattended restores a plugin identity that needs no PIN or touch, or a non-plugin identity';

/**
 * Runs `age-plugin-<name> --age-plugin=identity-v1` once for one file header: adds every
 * identity, passes every stanza as file 0, answers the plugin's requests, and returns the file
 * key it sends, or `null` when it sends none (none of its identities matches the header).
 *
 * @throws {UsageError} the plugin is not on PATH; it needed the user and there is no terminal.
 * @throws {IntegrityError} the plugin reported an error, exited or closed its output before
 *   `done`, broke the protocol, or was silent for {@link PLUGIN_SILENCE_MS}.
 * @throws the abort signal's reason when the run is stopped.
 */
export async function unwrapWithPlugin(name: string, identities: readonly string[], stanzas: readonly Stanza[]): Promise<Uint8Array | null> {
  let fileKey: Uint8Array | null = null;
  let phase1 = '';
  for (const id of identities) phase1 += encodeIpcStanza('add-identity', [id]);
  for (const st of stanzas) phase1 += encodeIpcStanza('recipient-stanza', ['0', ...st.args], st.body);
  phase1 += encodeIpcStanza('done');
  let needed: Needed | undefined;
  try {
    ({ needed } = await converse(name, {
      machine: 'identity-v1',
      phase1,
      neededFor: `the AGE-PLUGIN-${name.toUpperCase()}-1… identity in the identity file (or restore with a non-plugin identity)`,
      failureHint: 'check the plugin (and its hardware key) with: age -d -i <identity file> <backup object>',
      doing: 'unwrapping the file key',
      noTerminalHint: RESTORE_NO_TERMINAL,
      onCommand: (s, reply, failed) => {
        if (s.type !== 'file-key') return false;
        if (s.args.length !== 1 || s.args[0] !== '0') throw failed('sent a file key for a file it was not given');
        if (fileKey !== null) throw failed('sent two file keys for one file');
        if (s.body.length !== FILE_KEY_SIZE) throw failed(`sent a file key of ${s.body.length} bytes (age uses ${FILE_KEY_SIZE})`);
        fileKey = Uint8Array.from(s.body);
        s.body.fill(0);
        reply(encodeIpcStanza('ok'));
        return true;
      },
    }));
  } catch (err) {
    if (fileKey !== null) (fileKey as Uint8Array).fill(0);
    throw err;
  }
  if (fileKey === null && needed !== undefined) {
    throw new UsageError(`age plugin age-plugin-${name} needs ${needed} and coffer has no terminal to ask on`, { hint: RESTORE_NO_TERMINAL });
  }
  return fileKey;
}

/** The stanzas a plugin wrapped one file key into, and the labels it gave them (c2sp.org/age-plugin). */
export interface PluginWrap {
  stanzas: Array<{ args: string[]; body: Uint8Array }>;
  labels: string[];
}

/**
 * Runs `age-plugin-<name> --age-plugin=recipient-v1` once: wraps `fileKey` to every recipient
 * (`age1<name>1…`) of that plugin. Offers age's labels extension; the labels the plugin sends
 * (e.g. `postquantum`) are returned for the caller's mixing check.
 *
 * @throws {UsageError} the plugin is not on PATH; it needed the user and there is no terminal.
 * @throws {IntegrityError} the plugin reported an error, sent no stanza, exited or closed its
 *   output before `done`, broke the protocol, or was silent for {@link PLUGIN_SILENCE_MS}.
 */
export async function wrapWithPlugin(name: string, recipients: readonly string[], fileKey: Uint8Array): Promise<PluginWrap> {
  let phase1 = '';
  for (const r of recipients) phase1 += encodeIpcStanza('add-recipient', [r]);
  phase1 += encodeIpcStanza('wrap-file-key', [], fileKey);
  phase1 += encodeIpcStanza('extension-labels');
  phase1 += encodeIpcStanza('done');
  const out: PluginWrap = { stanzas: [], labels: [] };
  const { needed } = await converse(name, {
    machine: 'recipient-v1',
    phase1,
    neededFor: `the recipient age1${name}1…`,
    failureHint: `check the plugin with: age -r <recipient> on this host`,
    doing: 'wrapping the file key',
    noTerminalHint: 'backups run without a terminal: use a plugin recipient that needs no PIN or touch to encrypt (age-plugin-yubikey needs none)',
    onCommand: (s, reply, failed) => {
      if (s.type === 'recipient-stanza') {
        if (s.args[0] !== '0' || s.args.length < 2) throw failed('sent a stanza for a file it was not given');
        out.stanzas.push({ args: s.args.slice(1), body: Uint8Array.from(s.body) });
        reply(encodeIpcStanza('ok'));
        return true;
      }
      if (s.type === 'labels') {
        out.labels = [...s.args].sort();
        reply(encodeIpcStanza('ok'));
        return true;
      }
      return false;
    },
  });
  if (needed !== undefined) {
    throw new UsageError(`age plugin age-plugin-${name} needs ${needed} and coffer has no terminal to ask on`, {
      hint: 'backups run without a terminal: use a plugin recipient that needs no PIN or touch to encrypt',
    });
  }
  if (out.stanzas.length < recipients.length) throw new IntegrityError(`age plugin age-plugin-${name} wrapped the file key for ${out.stanzas.length} of ${recipients.length} recipients`);
  return out;
}

/** Closes the plugin's stdin and waits for it to exit: SIGINT at once if still running, SIGKILL after a grace period. */
async function stop(child: ChildProcessWithoutNullStreams): Promise<void> {
  child.stdin.end();
  if (child.exitCode !== null || child.signalCode !== null) return;
  // 'exit', not 'close': a process the plugin started may hold its pipes open after it is gone.
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGINT');
  const timer = setTimeout(() => child.kill('SIGKILL'), PLUGIN_EXIT_GRACE_MS);
  await exited;
  clearTimeout(timer);
}

/** What the plugins of one header unwrap reported: failures (another identity may still match), and an abort. */
export interface PluginOutcome {
  failures: unknown[];
  /** The run was stopped while a plugin ran: its reason, to be thrown as it is. */
  aborted?: unknown;
}

/**
 * An `age-encryption` Identity for all identities of one plugin, to be tried after the native
 * ones. A plugin failure is recorded in `outcome.failures` and the identity returns null, so that
 * another identity may still match; the caller reports the first failure when none does.
 */
export function pluginIdentity(name: string, identities: readonly string[], outcome: PluginOutcome): Identity {
  return {
    async unwrapFileKey(stanzas: Stanza[]): Promise<Uint8Array | null> {
      try {
        return await unwrapWithPlugin(name, identities, stanzas);
      } catch (err) {
        if (session.signal?.aborted) {
          outcome.aborted = session.signal.reason ?? err;
          throw err;
        }
        outcome.failures.push(err);
        return null;
      }
    },
  };
}

/**
 * Splits identities into native ones (in order) and plugin ones grouped by plugin name (in
 * order of first appearance), as age does: one plugin run per plugin and file.
 */
export function splitPluginIdentities(identities: readonly string[]): { native: string[]; plugins: Map<string, string[]> } {
  const native: string[] = [];
  const plugins = new Map<string, string[]>();
  for (const id of identities) {
    const name = pluginIdentityName(id);
    if (name === undefined) native.push(id);
    else plugins.set(name, [...(plugins.get(name) ?? []), id]);
  }
  return { native, plugins };
}

/**
 * The library Recipients of the plugin recipients among `recipients` (one per plugin, run once
 * per file key), and the label set of every recipient once the file key is wrapped: native
 * X25519 has none, hybrid `postquantum`, a plugin's what it sent (c2sp.org/age-plugin, labels).
 */
export function pluginRecipients(
  recipients: readonly string[],
  makeStanza: (args: string[], body: Uint8Array) => Stanza,
): { native: string[]; plugins: Array<{ wrapFileKey(fileKey: Uint8Array): Promise<Stanza[]> }>; labels: Array<{ recipient: string; labels: string[] }> } {
  const native: string[] = [];
  const byName = new Map<string, string[]>();
  const labels: Array<{ recipient: string; labels: string[] }> = [];
  for (const r of recipients) {
    const name = pluginRecipientName(r);
    if (name === undefined) {
      native.push(r);
      labels.push({ recipient: r, labels: r.startsWith('age1pq1') ? ['postquantum'] : [] });
    } else byName.set(name, [...(byName.get(name) ?? []), r]);
  }
  const plugins = [...byName].map(([name, rs]) => ({
    async wrapFileKey(fileKey: Uint8Array): Promise<Stanza[]> {
      const w = await wrapWithPlugin(name, rs, fileKey);
      for (const r of rs) labels.push({ recipient: r, labels: w.labels });
      return w.stanzas.map((st) => makeStanza(st.args, st.body));
    },
  }));
  return { native, plugins, labels };
}

/**
 * age's rule: every recipient stanza of one file has the same label set, so post-quantum stanzas
 * are never next to classic ones (c2sp.org/age-plugin, labels).
 *
 * @throws {UsageError} naming two recipients whose label sets differ.
 */
export function checkLabelSets(labels: ReadonlyArray<{ recipient: string; labels: string[] }>): void {
  const key = (l: string[]): string => [...l].sort().join(' ');
  const first = labels[0];
  const other = labels.find((l) => key(l.labels) !== key(first!.labels));
  if (first === undefined || other === undefined) return;
  const show = (r: string): string => (r.length > 24 ? `"${r.slice(0, 20)}…"` : `"${r}"`);
  const what = (l: string[]): string => (l.length === 0 ? 'classic' : l.join(' '));
  throw new UsageError(
    `recipients ${show(first.recipient)} (${what(first.labels)}) and ${show(other.recipient)} (${what(other.labels)}) cannot be mixed in one backup: it would be only as strong as the weaker kind`,
    { hint: 'use only post-quantum recipients or only classic ones (age refuses the same mix)' },
  );
}
