/** The options of `coffer restore --physical` (a restore into a new data directory), declared once here and spread into `restore`'s; run/restore-physical.ts runs it. */
import { choice, cluster, database, text } from '../../config/parsers.js';
import { flag, value } from '../../config/options.js';

/** Declared once here, spread into `restore`'s options. */
export const physicalRestoreOptions = {
  physical: flag('--physical', 'restore a physical backup of a cluster (--cluster) into a new data directory (--to-dir)'),
  cluster: value('--cluster <name>', 'with --physical: the cluster whose backups to use', cluster),
  toDir: value('--to-dir <dir>', 'with --physical: the new (or empty) data directory to unpack into', text),
  targetTime: value('--target-time <time>', 'with --physical: replay archived WAL up to this time (ISO 8601 with a zone)', text),
  targetLsn: value('--target-lsn <lsn>', 'with --physical: replay archived WAL up to this LSN', text),
  targetName: value('--target-name <name>', 'with --physical: replay archived WAL up to this restore point (pg_create_restore_point)', text),
  targetTimeline: value('--target-timeline <tl>', 'with --physical: the timeline to follow: current (the backup\'s), latest, or a number (default: the newest timeline forked from the backup\'s after its end, else its own)', text),
  targetAction: value('--target-action <action>', 'with --physical: at the target, promote (default), pause or shutdown', choice, { choices: ['promote', 'pause', 'shutdown'] }),
  verify: flag('--verify', 'with --physical: start the directory once on a private socket, wait for recovery, run --smoke, stop it'),
  // Not --owner: commander would read pg_restore's --no-owner as its negation.
  dirOwner: value('--dir-owner <user>', 'with --physical, as root: the OS user to own the directory (default: its owner, else postgres)', text),
  attachmentsDir: value('--attachments-dir <dir>', 'with --physical: write the files stored with the backup (--attach) here', text),
  smokeDb: value('--smoke-db <name>', 'with --physical --verify: the database --smoke queries run in (default postgres)', database),
};
