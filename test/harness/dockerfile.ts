/**
 * Reading the repository's Dockerfile and .dockerignore without a Docker engine (none runs in CI):
 * the instructions of each stage, their exec-form and ENV values, and the build context's
 * exclusions. Only the syntax the repository uses: line continuations, comments, `FROM … AS`,
 * `ARG` defaults, `${NAME}` references.
 */

export interface ImageRef {
  file: string;
  ref: string;
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
}

/** Splits an image reference the way Docker does: registry (docker.io by default), repository, tag, digest. */
export function parseImageRef(file: string, ref: string): ImageRef {
  const [name, digest] = ref.split('@') as [string, string | undefined];
  const slash = name.indexOf('/');
  const first = slash === -1 ? '' : name.slice(0, slash);
  const hasRegistry = first.includes('.') || first.includes(':') || first === 'localhost';
  const registry = hasRegistry ? first : 'docker.io';
  let path = hasRegistry ? name.slice(slash + 1) : name;
  const colon = path.lastIndexOf(':');
  const tag = colon > path.lastIndexOf('/') ? path.slice(colon + 1) : undefined;
  if (tag !== undefined) path = path.slice(0, colon);
  const repository = registry === 'docker.io' && !path.includes('/') ? `library/${path}` : path;
  return { file, ref, registry, repository, ...(tag !== undefined && { tag }), ...(digest !== undefined && { digest }) };
}

export interface Instruction {
  /** Upper case: FROM, RUN, COPY, ENV, USER, ENTRYPOINT, … */
  keyword: string;
  /** The rest of the instruction, continuations joined with a space. */
  value: string;
}

export interface Stage {
  /** The image or earlier stage it starts from, as written. */
  from: string;
  name?: string;
  /** An earlier stage of this file (`FROM base`), not an image. */
  fromStage: boolean;
  instructions: Instruction[];
}

export interface Dockerfile {
  /** `ARG NAME=default` before the first FROM (their defaults are what a plain `docker build` uses). */
  args: Map<string, string>;
  stages: Stage[];
}

export function parseDockerfile(text: string): Dockerfile {
  const logical: string[] = [];
  let pending = '';
  for (const raw of text.split('\n')) {
    // Comment lines are dropped by Docker even inside a continuation.
    if (/^\s*#/.test(raw)) continue;
    const continued = /\\\s*$/.test(raw);
    pending += (pending ? ' ' : '') + raw.replace(/\\\s*$/, '').trim();
    if (!continued) {
      if (pending.trim() !== '') logical.push(pending.trim());
      pending = '';
    }
  }
  if (pending.trim() !== '') logical.push(pending.trim());

  const args = new Map<string, string>();
  const stages: Stage[] = [];
  for (const line of logical) {
    const m = /^(\S+)\s*(.*)$/.exec(line)!;
    const keyword = m[1]!.toUpperCase();
    const value = m[2]!.replace(/\s+/g, ' ');
    if (keyword === 'FROM') {
      const f = /^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i.exec(value);
      if (!f) throw new Error(`Dockerfile: cannot read "FROM ${value}"`);
      const from = f[1]!;
      const fromStage = stages.some((s) => s.name !== undefined && s.name.toLowerCase() === from.toLowerCase());
      stages.push({ from, ...(f[2] !== undefined && { name: f[2] }), fromStage, instructions: [] });
    } else if (stages.length === 0) {
      if (keyword !== 'ARG') throw new Error(`Dockerfile: ${keyword} before the first FROM`);
      const a = /^([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?$/.exec(value);
      if (a) args.set(a[1]!, a[2] ?? '');
    } else {
      stages[stages.length - 1]!.instructions.push({ keyword, value });
    }
  }
  return { args, stages };
}

/** The values of one instruction in a stage, in order. */
export function valuesOf(stage: Stage, keyword: string): string[] {
  return stage.instructions.filter((i) => i.keyword === keyword).map((i) => i.value);
}

/** An exec-form value (`["coffer", "--help"]`); a shell-form one is refused. */
export function execForm(value: string): string[] {
  const parsed: unknown = JSON.parse(value);
  if (!Array.isArray(parsed) || !parsed.every((x) => typeof x === 'string')) throw new Error(`not an exec-form array of strings: ${value}`);
  return parsed as string[];
}

/** The environment a stage sets (`ENV A=1 B=2`, unquoted values). */
export function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const value of valuesOf(stage, 'ENV')) {
    for (const pair of value.split(' ')) {
      const i = pair.indexOf('=');
      if (i <= 0) throw new Error(`ENV ${value}: only KEY=VALUE pairs are read here`);
      env[pair.slice(0, i)] = pair.slice(i + 1);
    }
  }
  return env;
}

/** `${NAME}` and `$NAME` replaced with the given values (the ARGs' defaults); others are left. */
export function expand(value: string, vars: Map<string, string>): string {
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (all, a: string | undefined, b: string | undefined) => vars.get((a ?? b)!) ?? all);
}

/**
 * Whether a path of the build context (relative, `/`-separated) is left out by .dockerignore:
 * Docker matches each pattern against the path and each of its parent directories (from the
 * context's root, unlike .gitignore), `*` within one segment, `**` across any, the last matching
 * pattern deciding (`!` re-includes).
 */
export function dockerignore(text: string): (relPath: string) => boolean {
  const rules = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const negate = l.startsWith('!');
      const pattern = (negate ? l.slice(1) : l).replace(/^\/+|\/+$/g, '');
      const re = pattern
        .split('/')
        .map((seg) => (seg === '**' ? '(?:.*)' : seg.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')))
        .join('/')
        .replace(/\(\?:\.\*\)\//g, '(?:.*/)?');
      return { negate, re: new RegExp(`^${re}$`) };
    });
  return (relPath) => {
    const parts = relPath.split('/');
    const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
    let excluded = false;
    for (const r of rules) if (candidates.some((c) => r.re.test(c))) excluded = !r.negate;
    return excluded;
  };
}
