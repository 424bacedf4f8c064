import { cluster, database, repository } from '../../config/parsers.js';
import { resolveS3Settings } from '../../config/settings.js';
import { flag, value } from '../../config/options.js';
import { defineCommand } from '../command.js';
import { DEFAULT_REPOSITORY, REPOSITORY, s3Options, trustedSignersOption } from '../option-groups.js';

export const list = defineCommand({
  name: 'list',
  summary: 'list completed backups, newest first',
  options: {
    from: value('--from <repository>', 's3://bucket/prefix, file:///path or a directory', repository, { default: DEFAULT_REPOSITORY, aliases: [REPOSITORY] }),
    db: value('--db <name>', 'only this database', database),
    cluster: value('--cluster <name>', "only this cluster's physical backups", cluster),
    json: flag('--json', 'print a JSON array on stdout'),
    verifySignatures: flag('--verify-signatures', "check each backup's manifest signature and each database's chain against --trusted-signers (a SIGNATURE column); exit 5 if anything is wrong"),
    ...trustedSignersOption,
    ...s3Options,
  },
  run: async (v, ctx) =>
    (await import('../run/list.js')).listRepository(v.from, resolveS3Settings(v, ctx.env), { database: v.db, cluster: v.cluster, json: v.json, verifySignatures: v.verifySignatures, trustedSigners: v.trustedSigners }, ctx),
});
