/**
 * deploy/ examples: the systemd units pass `systemd-analyze verify` (with no warnings) and carry
 * the hardening the README claims; the crontab lines are well-formed; the Kubernetes manifests
 * parse and have the security context and secret handling claimed; and every example coffer
 * configuration (deploy/coffer.yaml, the ConfigMap's) is accepted by the real CLI.
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseEnv, runCoffer } from '../harness/cli.js';

const DEPLOY = fileURLToPath(new URL('../../deploy/', import.meta.url));

let tmp: string;
beforeAll(async () => {
  tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'coffer-deploy-'));
});
afterAll(async () => {
  await fsp.rm(tmp, { recursive: true, force: true });
});

/** `Key=Value` lines of one section of a unit file (repeated keys keep the last value). */
function unitSection(text: string, section: string): Map<string, string> {
  const out = new Map<string, string>();
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) current = sec[1]!;
    else if (current === section) {
      const i = line.indexOf('=');
      out.set(line.slice(0, i), line.slice(i + 1));
    }
  }
  return out;
}

/** Runs `coffer config show --json` on a configuration text; secrets from env (not the files it names). */
async function acceptedByCoffer(yamlText: string): Promise<Record<string, Record<string, { value: unknown }>>> {
  const dir = await fsp.mkdtemp(path.join(tmp, 'cfg-'));
  await fsp.writeFile(path.join(dir, 'coffer.yaml'), yamlText);
  const env = baseEnv({ COFFER_PGPASSWORD: 'example', COFFER_S3_ACCESS_KEY_ID: 'AK', COFFER_S3_SECRET_ACCESS_KEY: 'SK' });
  const r = await runCoffer(['config', 'show', '--json'], { env, cwd: dir });
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { commands: Record<string, Record<string, { value: unknown }>> }).commands;
}

describe('deploy/ examples', () => {
  it('systemd: units are hardened and match the example configuration', async () => {
    const service = await fsp.readFile(path.join(DEPLOY, 'systemd/coffer-backup.service'), 'utf8');
    const timer = await fsp.readFile(path.join(DEPLOY, 'systemd/coffer-backup.timer'), 'utf8');
    const s = unitSection(service, 'Service');
    for (const [k, v] of [
      ['NoNewPrivileges', 'yes'],
      ['ProtectSystem', 'strict'],
      ['PrivateTmp', 'yes'],
      ['ProtectHome', 'yes'],
      ['User', 'coffer'],
      ['Type', 'oneshot'],
      ['RuntimeDirectory', 'coffer'],
      ['CapabilityBoundingSet', ''],
    ] as const) {
      expect(s.get(k), k).toBe(v);
    }
    expect(s.get('ReadWritePaths')).toBe('/var/lib/prometheus/node-exporter');
    expect(s.get('ExecStart')).toMatch(/^\/usr\/local\/bin\/coffer --config \/etc\/coffer\/coffer\.yaml backup$/);
    expect(unitSection(timer, 'Timer').get('Persistent')).toBe('yes');

    // The paths the unit makes writable are the ones the example configuration uses.
    const cfg = await acceptedByCoffer(await fsp.readFile(path.join(DEPLOY, 'coffer.yaml'), 'utf8'));
    expect(cfg.backup!.lockDir!.value).toBe('/run/coffer');
    expect(path.dirname(String(cfg.backup!.metricsFile!.value))).toBe(s.get('ReadWritePaths')!);
  });

  it('systemd: units pass systemd-analyze verify', async (ctx) => {
    const service = await fsp.readFile(path.join(DEPLOY, 'systemd/coffer-backup.service'), 'utf8');
    const timer = await fsp.readFile(path.join(DEPLOY, 'systemd/coffer-backup.timer'), 'utf8');
    const which = await execa('systemd-analyze', ['--version'], { reject: false });
    // scripts/system-deps.sh installs it (package systemd) when run as root on Debian.
    if (which.exitCode !== 0) ctx.skip('systemd-analyze is not installed (Debian: apt-get install systemd)');
    // verify checks that ExecStart exists: point it at a stand-in executable (test/install
    // verifies the unit with the installed coffer).
    const fake = path.join(tmp, 'coffer');
    await fsp.writeFile(fake, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    const dir = await fsp.mkdtemp(path.join(tmp, 'units-'));
    await fsp.writeFile(path.join(dir, 'coffer-backup.service'), service.replace(/^ExecStart=\S+/m, `ExecStart=${fake}`));
    await fsp.writeFile(path.join(dir, 'coffer-backup.timer'), timer);
    const r = await execa('systemd-analyze', ['verify', path.join(dir, 'coffer-backup.timer'), path.join(dir, 'coffer-backup.service')], {
      reject: false,
      timeout: 60_000,
    });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    // Unknown or misspelt directives are only warnings: there must be none.
    expect(String(r.stderr).trim()).toBe('');
  });

  it('crontab: five schedule fields, a user, coffer with an explicit --config, no pipe, valid sh', async () => {
    const text = await fsp.readFile(path.join(DEPLOY, 'crontab'), 'utf8');
    const jobs = text.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#') && !/^[A-Z_]+=/.test(l));
    expect(jobs.length).toBeGreaterThan(0);
    const ranges = [
      [0, 59],
      [0, 23],
      [1, 31],
      [1, 12],
      [0, 7],
    ] as const;
    for (const job of jobs) {
      const f = job.trim().split(/\s+/);
      for (const [i, [lo, hi]] of ranges.entries()) {
        if (f[i] === '*') continue;
        const n = Number(f[i]);
        expect(Number.isInteger(n) && n >= lo && n <= hi, `${job}: field ${i + 1}`).toBe(true);
      }
      expect(f[5]).toBe('coffer');
      const command = f.slice(6).join(' ');
      expect(command).toContain('/usr/local/bin/coffer --config /etc/coffer/coffer.yaml ');
      // No pipe (it would hide coffer's exit status), and `%` (cron's newline) is not used.
      expect(command).not.toMatch(/(^|[^|])\|([^|]|$)/);
      expect(command).not.toContain('%');
      // The shell part is valid sh.
      const sh = await execa('sh', ['-n', '-c', command], { reject: false });
      expect(sh.exitCode, String(sh.stderr)).toBe(0);
    }
    expect(jobs.some((j) => /coffer\.yaml backup\b/.test(j))).toBe(true);
    expect(jobs.some((j) => /coffer\.yaml status\b/.test(j))).toBe(true);
  });

  it('every example calls coffer where the README installs it', async () => {
    const readme = await fsp.readFile(path.join(DEPLOY, '../README.md'), 'utf8');
    const install = readme.slice(readme.indexOf('\n## Install\n'), readme.indexOf('\n## ', readme.indexOf('\n## Install\n') + 1));
    const prefix = /sudo npm install -g --prefix (\S+) \.\/coffer-/.exec(install)?.[1];
    expect(prefix, 'README "Install": sudo npm install -g --prefix DIR ./coffer-….tgz').toBeDefined();
    const bin = `${prefix}/bin/coffer`;
    expect(install).toContain(`\`${bin}\``);
    const service = await fsp.readFile(path.join(DEPLOY, 'systemd/coffer-backup.service'), 'utf8');
    expect(unitSection(service, 'Service').get('ExecStart')!.split(' ')[0]).toBe(bin);
    const cron = await fsp.readFile(path.join(DEPLOY, 'crontab'), 'utf8');
    const called = [...cron.matchAll(/([^\s(]*\/coffer) --config/g)].map((m) => m[1]);
    expect(called.length).toBeGreaterThan(0);
    for (const c of called) expect(c).toBe(bin);
    const k8s = await fsp.readFile(path.join(DEPLOY, 'kubernetes/cronjob.yaml'), 'utf8');
    expect(k8s).toContain(`command: ["${bin}"]`);
  });

  it('kubernetes: the CronJob runs non-root, read-only, without privileges; secrets are files', async () => {
    const docs = parseAllDocuments(await fsp.readFile(path.join(DEPLOY, 'kubernetes/cronjob.yaml'), 'utf8'));
    for (const d of Array.isArray(docs) ? docs : [docs]) expect(d.errors).toEqual([]);
    const objs = (Array.isArray(docs) ? docs : [docs]).map((d) => d.toJS()) as { kind: string; [k: string]: any }[];
    const cron = objs.find((o) => o.kind === 'CronJob')!;
    const cm = objs.find((o) => o.kind === 'ConfigMap')!;
    expect(cron.apiVersion).toBe('batch/v1');
    expect(cron.spec.concurrencyPolicy).toBe('Forbid');
    const pod = cron.spec.jobTemplate.spec.template.spec;
    expect(pod.restartPolicy).toBe('Never');
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    expect(pod.securityContext.runAsUser).toBeGreaterThan(0);
    const c = pod.containers[0];
    expect(c.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, privileged: false, capabilities: { drop: ['ALL'] } });
    // No secret in an env value or an argument: only *_FILE paths into the mounted Secret.
    const secretMount = c.volumeMounts.find((m: { name: string }) => m.name === 'secrets');
    expect(secretMount.readOnly).toBe(true);
    const secretVolume = pod.volumes.find((v: { name: string }) => v.name === 'secrets');
    expect(secretVolume.secret.secretName).toBeTruthy();
    expect(secretVolume.secret.defaultMode).toBe(0o440); // owner and fsGroup may read; nobody writes
    for (const e of c.env) {
      expect(e.name).toMatch(/_FILE$/);
      expect(e.value.startsWith(`${secretMount.mountPath}/`)).toBe(true);
    }
    expect(JSON.stringify(c.args)).not.toMatch(/password|secret/i);
    // The read-only root needs a writable /tmp (lockDir), and the config file is the ConfigMap's.
    expect(c.volumeMounts.some((m: { mountPath: string }) => m.mountPath === '/tmp')).toBe(true);
    expect(c.command).toEqual(['/usr/local/bin/coffer']);
    expect(c.args).toEqual(['--config', '/etc/coffer/coffer.yaml', 'backup']);
    const cfg = await acceptedByCoffer(cm.data['coffer.yaml']);
    expect(String(cfg.backup!.lockDir!.value).startsWith('/tmp/')).toBe(true);
    expect(cfg.backup!.to!.value).toBe('s3://db-backups/prod-main');
  });
});
