import { flag } from '../../config/options.js';
import { defineCommand } from '../command.js';
import { sourceOptions } from '../option-groups.js';

export const showOptions = {
  ...sourceOptions,
  tocOnly: flag('--toc-only', 'read only the head of the backup (its table of contents): no data sizes, no whole-backup check'),
  json: flag('--json', 'print the contents as JSON on stdout'),
};

export const show = defineCommand({
  name: 'show',
  summary: "list a backup's contents: schemas, tables with their data sizes, other objects by kind",
  options: showOptions,
  run: async (values, ctx) => (await import('../run/show.js')).runShowCommand(values, ctx),
});
