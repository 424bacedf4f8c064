#!/usr/bin/env bash
# The whole test suite, against real components: a throwaway PostgreSQL 15 cluster and a
# throwaway Ceph RADOS Gateway (S3), both started and removed by the test setup.
# Installs missing system packages when run as root (Debian/Ubuntu); otherwise says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/system-deps.sh

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "test: installing npm dependencies (npm ci)" >&2
  npm ci --no-audit --no-fund
fi

echo "test: type-checking and building" >&2
npx tsc -p tsconfig.json
npx tsc -p test/tsconfig.json --noEmit

echo "test: running the suite" >&2
# Coverage (COFFER_COVERAGE=0 turns it off): vitest's own for the in-process tests, and the raw
# V8 coverage of every CLI subprocess (test/harness/cli.ts passes NODE_V8_COVERAGE to them),
# merged by scripts/coverage.mjs into one per-folder table over src/. A run of the whole suite
# fails when line coverage of src/ is below scripts/coverage-threshold.json.
coverage="${COFFER_COVERAGE:-1}"
work="$(mktemp -d)"
report="$work/vitest.json"
coverage_args=()
if [ "$coverage" != 0 ]; then
  mkdir "$work/v8"
  export COFFER_TEST_V8_COVERAGE="$work/v8"
  coverage_args=(--coverage.enabled --coverage.reportsDirectory="$work/vitest-coverage")
fi
set +e
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "${coverage_args[@]}" "$@"
status=$?
coverage_status=0
if [ "$coverage" != 0 ]; then
  check=()
  [ $# -eq 0 ] && check=(--check) # the threshold is for the whole suite, not a chosen file
  mkdir -p coverage
  node scripts/coverage.mjs --vitest "$work/vitest-coverage/coverage-final.json" --v8 "$work/v8" \
    --out coverage/coverage-final.json "${check[@]}"
  coverage_status=$?
fi
set -e
# One plain closing line that any CI can read: "N passed, N failed, N skipped". It stays last.
if [ -s "$report" ]; then
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
    console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
  ' "$report"
fi
rm -rf "$work"
if [ "$status" -ne 0 ]; then exit "$status"; fi
exit "$coverage_status"
