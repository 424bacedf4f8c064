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
exec npx vitest run "$@"
