import { database, duration, objectLockMode, recipient, repository, text } from '../../config/parsers.js';
import { flag, list, value } from '../../config/options.js';
import { defineCommand } from '../command.js';
import { DEFAULT_REPOSITORY, REPOSITORY, keepOptions, s3Options, signingKeyOption } from '../option-groups.js';

export const rekeyOptions = {
  from: value('--from <repository>', 's3://bucket/prefix, file:///path or a directory', repository, { default: DEFAULT_REPOSITORY, aliases: [REPOSITORY] }),
  db: value('--db <name>', 'database whose backups to rekey (needed with latest when the repository holds several)', database),
  // Per run, not per configuration: command line only.
  backup: value('--backup <id>', 'backup id, latest (the newest full backup) or all (every backup not already replaced)', text, { configurable: false }),
  addRecipient: list('--add-recipient <age1…>', 'recipient to add (public key); repeatable', recipient, { configurable: false }),
  addRecipientsFile: list('--add-recipients-file <file>', 'file of recipients to add, one per line; repeatable', text, { configurable: false }),
  removeRecipient: list('--remove-recipient <age1…>', 'recipient to remove; repeatable', recipient, { configurable: false }),
  identity: list('-i, --identity <file>', 'age identity file (private key) of a current recipient, to unwrap the file key; repeatable', text, { aliases: [{ key: '', env: 'COFFER_IDENTITY_FILE' }] }),
  identityFile: list('--identity-file <file>', 'the same as --identity', text, { configurable: false }),
  dryRun: flag('--dry-run', 'print which backups would change and their recipients before and after; write nothing'),
  deleteOld: flag('--delete-old', 'delete the replaced backup (manifest, then objects and signature) once its replacement is committed; needs delete permission (admin credentials)'),
  wait: value('--wait <duration>', 'if another run holds the lock of the database (a rekey or a backup on this host), wait up to this long (default: exit 6 at once)', duration),
  lockDir: value('--lock-dir <dir>', 'host lock directory, the one backups use (default $XDG_RUNTIME_DIR/coffer, /run/lock/coffer-<uid> or TMPDIR/coffer-locks-<uid>)', text),
  objectLockMode: value('--object-lock-mode <mode>', "write the new objects with S3 object-lock retention (governance or compliance) until the end of the tier's keep period, counted from the backup's original time", objectLockMode),
  ...keepOptions,
  json: flag('--json', 'print the result as JSON on stdout'),
  // A signed backup's replacement is signed too, and chained (src/trust/).
  ...signingKeyOption,
  ...s3Options,
};

export const rekey = defineCommand({
  name: 'rekey',
  summary: 'add or remove recipients of existing backups: a new age header, the data copied server-side (no re-upload)',
  options: rekeyOptions,
  run: async (values, ctx) => (await import('../run/rekey.js')).runRekeyCommand(values, ctx),
});
