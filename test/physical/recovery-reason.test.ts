/**
 * The reason a failed recovery gives: the server's FATAL line that stopped it, and
 * restore_command's complaint before it; not the server's refusals of the check's own
 * connection attempts, which can come later in the log.
 */
import { describe, expect, it } from 'vitest';
import { why } from '../../src/physical/recovery-check.js';

describe('why a recovery failed', () => {
  const log = [
    '2026-12-01 03:40:01.100 UTC [100] LOG:  starting PostgreSQL 15.13',
    '2026-12-01 03:40:01.200 UTC [101] FATAL:  the database system is starting up',
    '{"time":"2026-12-01T03:40:01.300Z","level":"error","msg":"cluster=main/wal/000000010000000000000003.ab.zst.age: authentication failed at byte offset 184","exit":200}',
    '2026-12-01 03:40:01.400 UTC [102] FATAL:  could not restore file "000000010000000000000003" from archive: child process exited with exit code 200',
    '2026-12-01 03:40:01.500 UTC [103] FATAL:  the database system is not yet accepting connections',
    '2026-12-01 03:40:01.600 UTC [100] LOG:  startup process (PID 102) exited with exit code 1',
  ].join('\n');

  it('names the FATAL that stopped recovery and restore_command\'s error, whatever refusals follow', () => {
    expect(why(log)).toBe('FATAL: could not restore file "000000010000000000000003" from archive: child process exited with exit code 200; restore_command: cluster=main/wal/000000010000000000000003.ab.zst.age: authentication failed at byte offset 184');
  });

  it('falls back to a refusal when it is the only FATAL line', () => {
    expect(why('2026-12-01 03:40:01.200 UTC [101] FATAL:  the database system is starting up\n')).toBe('FATAL: the database system is starting up');
  });
});
