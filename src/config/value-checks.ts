import { UsageError } from '../errors.js';
import { parseRecipient } from '../crypto/age.js';
import { parseByteSize } from '../pipeline/part-size.js';
import { parseRepository } from '../store/open.js';
import { parseRetentionPeriod } from '../retention/policy.js';
import { parseDuration } from './settings.js';
import type { OptionSpec } from './option-specs.js';

/**
 * Up-front checks of values that come from the environment or the configuration file, chosen
 * by the option's argument placeholder (`<duration>`, `<url>`, `<repository>`, `<n>`,
 * `<size>`, `<period>`, `<age1…>`) and its declared choices. The label says where the value came from
 * (`COFFER_TIMEOUT`, `coffer.yaml: backup.timeout`), so the message points at the line to fix.
 * Values from the command line are checked by the commands themselves.
 */
export function checkOptionValue(spec: OptionSpec, value: string, label: string): void {
  const choices = spec.option.argChoices;
  if (choices && !choices.includes(value)) {
    throw new UsageError(`${label}: must be one of ${choices.join(', ')} (got ${JSON.stringify(value)})`);
  }
  switch (spec.placeholder) {
    case 'duration':
      parseDuration(value, label);
      return;
    case 'url':
      checkHttpUrl(value, label);
      return;
    case 'repository':
      prefixed(label, () => parseRepository(value));
      return;
    case 'n':
      if (!/^\d+$/.test(value.trim()) || Number(value) < 1) throw new UsageError(`${label}: must be a whole number of at least 1 (got ${JSON.stringify(value)})`);
      return;
    case 'period':
      parseRetentionPeriod(value, label);
      return;
    case 'size':
      parseByteSize(value, label);
      return;
    case 'age1…':
      prefixed(label, () => parseRecipient(value));
      return;
    default:
      return;
  }
}

/** An http:// or https:// URL (S3 endpoints, notification and webhook endpoints). */
export function checkHttpUrl(value: string, label: string): URL {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw new UsageError(`${label}: invalid URL ${JSON.stringify(value)}`, { hint: 'expected http:// or https://…' });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new UsageError(`${label}: URL must be http:// or https:// (got ${JSON.stringify(`${u.protocol}//…`)})`);
  }
  return u;
}

function prefixed(label: string, fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    if (err instanceof UsageError) throw new UsageError(`${label}: ${err.message}`, { hint: err.hint });
    throw err;
  }
}
