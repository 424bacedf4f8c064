import { readFileSync } from 'node:fs';

/** coffer's version, from package.json (one level above both src/ and dist/). */
export const COFFER_VERSION: string = (() => {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
})();
