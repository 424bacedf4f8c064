import { DEFAULT_CONFIG_FILE } from '../../config/config-file.js';
import { effectiveConfig, type EffectiveSetting } from '../../config/layers.js';
import { flag } from '../../config/options.js';
import { defineCommand } from '../command.js';

/** What `coffer config show --json` prints. */
export interface ConfigShowOutput {
  /** Absolute path of the file in use, or null when there is none. */
  configFile: string | null;
  /** Per command (`backup`, `retention check`…): setting key → value and where it came from. */
  commands: Record<string, Record<string, EffectiveSetting>>;
}

/**
 * `coffer config show`: the effective configuration of every command as it would run with no
 * further flags (environment, file, defaults), with its source. Secrets are shown as `***`,
 * passwords inside connection strings and URLs likewise.
 */
export const configShow = defineCommand({
  name: 'config show',
  summary: 'print the effective configuration of every command (file, environment, defaults), secrets redacted',
  options: {
    json: flag('--json', 'print it as JSON on stdout'),
  },
  run: (flags, ctx, { file, env, layout }): ConfigShowOutput => {
    // `env` is the full environment (ctx.env has the secrets removed for children).
    const out: ConfigShowOutput = { configFile: file?.path ?? null, commands: effectiveConfig(layout, env, file, ctx.cwd) };
    if (flags.json) {
      ctx.stdout(`${JSON.stringify(out, null, 2)}\n`);
      return out;
    }
    ctx.stdout(`config file: ${file ? file.path : `none (no --config, COFFER_CONFIG or ./${DEFAULT_CONFIG_FILE})`}\n`);
    for (const [name, rows] of Object.entries(out.commands)) {
      const entries = Object.entries(rows);
      if (entries.length === 0) continue;
      ctx.stdout(`\n${name}:\n`);
      const width = Math.max(...entries.map(([k]) => k.length));
      for (const [key, { value, source }] of entries) {
        const shown = Array.isArray(value) ? value.join(', ') : String(value);
        ctx.stdout(`  ${key.padEnd(width)}  ${shown}  (${source})\n`);
      }
    }
    return out;
  },
});
