/**
 * An https:// endpoint that speaks plain HTTP (RGW's port given as https://): one line saying
 * the TLS handshake failed, with the hint that the endpoint may be plain HTTP (http://), not
 * OpenSSL's raw "write EPROTO …wrong version number…". Listing, a backup's upload and a
 * restore's reads (list, backup, verify).
 */
import { describe, expect, it } from 'vitest';
import { errorLine } from '../harness/cli.js';
import { useFixture } from '../harness/fixture.js';

const f = useFixture({ name: 'tlsplain', s3: true, db: 'vault' });

describe('an https:// endpoint speaking plain HTTP', () => {
  it('list, backup, verify: "TLS handshake … failed", the hint to use http://; exit 4', { timeout: 180_000 }, async () => {
    const repo = f.repo('tls');
    await f.backup(repo, f.db);
    const https = f.rgw!.endpoint.replace(/^http:/, 'https:');
    const env = f.env({ AWS_ENDPOINT_URL_S3: https });
    for (const args of [
      ['list', '--from', repo],
      ['backup', '--to', repo, '--db', f.db, '--recipient', f.recipient],
      ['verify', '--from', repo, '--identity', f.identityFile],
    ]) {
      const r = await f.run(args, env);
      expect(r.code, `${args[0]}: ${r.stderr}`).toBe(4);
      const line = errorLine(r.stderr);
      expect(line, args[0]).toMatch(/the TLS handshake with the S3 endpoint failed/);
      expect(line, args[0]).toMatch(/may speak plain HTTP: give it as http:\/\//);
      expect(line, args[0]).not.toMatch(/SSL routines/);
    }
  });
});
