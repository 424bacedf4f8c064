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
report="$(mktemp -d)/vitest.json"
set +e
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
status=$?
set -e
# One plain closing line that any CI can read: "N passed, N failed, N skipped".
if [ -s "$report" ]; then
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
    console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
  ' "$report"
fi
rm -rf "$(dirname "$report")"
exit $status
