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
  // An https:// endpoint that answers in plain HTTP: OpenSSL's "wrong version number" (EPROTO).
  const message = e?.message ?? '';
  if (code === 'EPROTO' || code.startsWith('ERR_SSL_') || /wrong version number|packet length too long|SSL routines/i.test(message)) {
    return new StorageError('Unavailable', `${what}: the TLS handshake with the S3 endpoint failed (${code || name || 'TLS'}${/wrong version number/i.test(message) ? ': wrong version number' : ''})`, {
      cause: err,
      hint: 'the endpoint may speak plain HTTP: give it as http://… (--s3-endpoint / AWS_ENDPOINT_URL), or check its port and certificate',
    });
  }
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

/**
 * {@link s3Error} for an upload: an upload with object-lock retention (`--object-lock-mode`) that
 * the server refuses as an invalid request (400 InvalidRequest: AWS "Bucket is missing Object Lock
 * Configuration", RGW "UnknownError") went to a bucket without object lock: said so, with what to do.
 */
export function s3UploadError(err: unknown, what: string, opts: { locked: boolean; bucket: string }): StorageError {
  if (opts.locked && !(err instanceof StorageError) && httpStatus(err) === 400) {
    const e = err as { name?: string; message?: string };
    if (e?.name === 'InvalidRequest' || /object.?lock/i.test(e?.message ?? '')) {
      return new StorageError('Failed', `${what}: the bucket s3://${opts.bucket} has no object lock, so --object-lock-mode cannot be applied (the server refused the retention: ${e?.name ?? 'HTTP 400'})`, {
        cause: err,
        hint: 'back up into a bucket created with object lock (`coffer init --to s3://BUCKET/PREFIX --create-bucket --object-lock governance|compliance`), or drop --object-lock-mode',
      });
    }
  }
  return s3Error(err, what);
}
