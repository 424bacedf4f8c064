import { StorageError } from '../../errors.js';

/** The HTTP status of the server's answer to a failed request, if it answered. */
export function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

/** Maps an AWS SDK / network error to the store contract's StorageError. */
export function s3Error(err: unknown, what: string): StorageError {
  if (err instanceof StorageError) return err;
  const e = err as { name?: string; code?: string; message?: string };
  const status = httpStatus(err);
  const name = e?.name ?? '';
  const code = e?.code ?? '';
  const net = ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE'];
  if (net.includes(code) || net.includes(name) || name === 'TimeoutError' || name === 'RequestTimeout') {
    return new StorageError('Unavailable', `${what}: cannot reach the S3 endpoint (${code || name})`, {
      cause: err,
      hint: 'check --s3-endpoint / AWS_ENDPOINT_URL and the network',
    });
  }
  if (name === 'AbortError') return new StorageError('Aborted', `${what}: aborted`, { cause: err });
  if (name === 'NoSuchBucket') {
    return new StorageError('NoSuchBucket', `${what}: the bucket does not exist`, { cause: err, hint: 'create it, e.g. with `coffer init --create-bucket`' });
  }
  if (name === 'NoSuchKey' || name === 'NotFound' || status === 404) {
    return new StorageError('NotFound', `${what}: no such object`, { cause: err });
  }
  if (name === 'AccessDenied' || name === 'Forbidden' || status === 403) {
    return new StorageError('AccessDenied', `${what}: access denied`, { cause: err, hint: 'check the credentials and the bucket policy' });
  }
  if (name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch') {
    return new StorageError('AccessDenied', `${what}: the S3 credentials were rejected (${name})`, { cause: err, hint: 'check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY' });
  }
  if (name === 'CredentialsProviderError') {
    return new StorageError('AccessDenied', `${what}: no S3 credentials found`, { cause: err, hint: 'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE' });
  }
  const brief = (e?.message ?? String(err)).split('\n')[0];
  return new StorageError('Failed', `${what}: ${name && name !== 'Error' ? `${name}: ` : ''}${brief}${status ? ` (HTTP ${status})` : ''}`, { cause: err });
}
