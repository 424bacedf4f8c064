import { S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';

export interface S3StoreOptions {
  bucket: string;
  /** Key prefix without leading or trailing slash ('' for the bucket root). */
  prefix: string;
  /** Custom endpoint (MinIO, Ceph, …); enables path-style addressing. */
  endpoint?: string;
  region: string;
  /** Explicit credentials; otherwise the AWS SDK's default chain (env, profile, instance role…). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Attempts per request, including the first (SDK retry strategy). */
  maxAttempts?: number;
  /** Milliseconds without socket activity before a request fails. */
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
}

/**
 * The S3 client of a repository (its store and its bucket administration): path-style addressing
 * with a custom endpoint, checksums only when required, keep-alive sockets, idle timeouts.
 */
export function createS3Client(options: S3StoreOptions): S3Client {
  const agentOptions = { keepAlive: true, maxSockets: 32 };
  return new S3Client({
    region: options.region,
    ...(options.endpoint ? { endpoint: options.endpoint, forcePathStyle: true } : {}),
    ...(options.credentials ? { credentials: options.credentials } : {}),
    maxAttempts: options.maxAttempts ?? 5,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: new NodeHttpHandler({
      connectionTimeout: options.connectTimeoutMs ?? 10_000,
      // The idle timeout: a request (upload or download, headers or body) whose socket is
      // silent this long fails with TimeoutError and is retried or resumed. (`requestTimeout`
      // of this handler only logs a warning unless throwOnRequestTimeout is set, and a
      // whole-request limit would fail slow but healthy multi-GB downloads.)
      socketTimeout: options.requestTimeoutMs ?? 120_000,
      httpAgent: new HttpAgent(agentOptions),
      httpsAgent: new HttpsAgent(agentOptions),
    }),
  });
}
