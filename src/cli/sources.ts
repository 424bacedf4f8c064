import { CofferError, formatErrorLine, UsageError } from '../errors.js';
import type { LoadedConfig } from './command.js';

/**
 * The sources a run asks for (`--source NAME`…, `--all-sources`), each with the command's values
 * for it (its settings over the environment and the rest of the file; the command line still
 * wins), all resolved before anything runs. Undefined when the run names none.
 */
export function chooseSources<V>(flags: { source: string[]; allSources: boolean }, config: Pick<LoadedConfig, 'sources' | 'forSource'> | undefined): Array<{ name: string; flags: V }> | undefined {
  if (!flags.allSources && flags.source.length === 0) return undefined;
  if (flags.allSources && flags.source.length > 0) throw new UsageError('--all-sources and --source cannot be combined');
  const declared = config?.sources ?? [];
  if (declared.length === 0) throw new UsageError(`${flags.allSources ? '--all-sources' : '--source'}: the configuration file declares no sources`, { hint: 'add a sources: mapping to coffer.yaml (README "Several servers from one configuration")' });
  const unknown = flags.source.filter((n) => !declared.includes(n));
  if (unknown.length > 0) throw new UsageError(`--source ${unknown.join(', ')}: no such source in the configuration file`, { hint: `the sources are: ${declared.join(', ')}` });
  const names = flags.allSources ? declared : [...new Set(flags.source)];
  return names.map((name) => ({ name, flags: config!.forSource(name) as V }));
}

/** The one error of a run over sources where some failed: the first failure's kind (its exit code), every failed source named. */
export function sourcesFailed(failed: Array<{ name: string; error: unknown }>, total: number, tail = ''): Error {
  const first = failed[0]!.error;
  const msg = `${failed.length} of ${total} sources failed: ${failed.map((f) => `${JSON.stringify(f.name)} (${formatErrorLine(f.error)})`).join('; ')}${tail}`;
  return first instanceof CofferError ? new CofferError(first.kind, msg, { cause: first }) : new Error(msg, { cause: first });
}
