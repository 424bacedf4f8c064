#!/usr/bin/env bash
# `npm run demo`: coffer on an embedded default. Needs Node 20, PostgreSQL 15 server binaries
# and zstd (installed when run as root on Debian; otherwise says what to install).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql-15)
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v age >/dev/null 2>&1 || missing+=(age)
id postgres >/dev/null 2>&1 || missing+=(postgresql-15)
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "demo: installing $pkgs" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  else
    echo "demo: missing system packages: $pkgs; install them with: sudo apt-get install $pkgs" >&2
    exit 2
  fi
fi
cd "$root"
[ -d node_modules ] || npm ci --no-audit --no-fund
npx tsc -p tsconfig.json
exec node dist/cli/main.js --log-format "${COFFER_LOG_FORMAT:-text}" demo "$@"
