/** What replaces a secret wherever coffer prints a value. */
export const REDACTED = '***';

/**
 * Hides the password part of a libpq connection string or URI, and of any URL with
 * credentials in it (`postgresql://u:pw@h/db`, `host=h password=pw`, `https://u:pw@h/`),
 * and the values of query parameters that name a password, token, key or secret.
 */
export function redactConnectionString(s: string): string {
  return s
    .replace(/(:\/\/[^/@:\s]*:)[^@/\s]*@/g, `$1${REDACTED}@`)
    .replace(/(\bpassword\s*=\s*)('(?:\\.|[^'\\])*'|[^\s&]*)/gi, `$1${REDACTED}`)
    .replace(/([?&](?:[a-z_]*(?:token|secret|key|sig|signature))=)[^&\s]*/gi, `$1${REDACTED}`);
}

/** The password inside a connection string or URI, if there is one (for log scrubbing). */
export function passwordInConnectionString(s: string): string | undefined {
  const uri = /^postgres(?:ql)?:\/\/[^/@:\s]*:([^@/\s]*)@/i.exec(s.trim());
  if (uri?.[1]) {
    try {
      return decodeURIComponent(uri[1]);
    } catch {
      return uri[1];
    }
  }
  const kv = /\bpassword\s*=\s*('(?:\\.|[^'\\])*'|[^\s&]*)/i.exec(s);
  if (!kv?.[1]) return undefined;
  const v = kv[1];
  return v.startsWith("'") ? v.slice(1, -1).replace(/\\(.)/g, '$1') : v;
}
