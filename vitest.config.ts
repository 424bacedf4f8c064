import { defineConfig } from 'vitest/config';

// Real components only: a throwaway Ceph RGW (S3) and a throwaway PostgreSQL 15 cluster are
// started once per run by test/harness/global-setup.ts and torn down afterwards.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/harness/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 180_000,
    teardownTimeout: 60_000,
    // 2-core machines: files run in parallel workers but not too many at once.
    maxWorkers: 2,
    pool: 'forks',
    reporters: ['default'],
    // The SDK's Node 22 notice would be printed by every test process.
    env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
    // Off unless asked (`--coverage.enabled`): scripts/test.sh turns it on and merges this
    // in-process report with the CLI subprocesses' raw V8 coverage (scripts/coverage.mjs).
    coverage: {
      provider: 'v8',
      include: ['src/**/*.ts'],
      reporter: ['json'],
      reportOnFailure: true,
    },
  },
});
