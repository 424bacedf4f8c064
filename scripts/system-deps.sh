#!/usr/bin/env bash
# Checks (and, as root on Debian, installs) the system programs coffer's tests need:
# PostgreSQL 15 server + client, age, zstd, a single-node Ceph (mon, osd, radosgw), and
# systemd-analyze (package systemd: test/config/deploy.test.ts verifies the example units), and
# promtool (test/ops/dashboards.test.ts checks and unit-tests deploy/prometheus/coffer-alerts.yml),
# and Chromium (test/ops/report.test.ts opens coffer report's HTML page in it, headless).
set -euo pipefail

PACKAGES="postgresql-15 postgresql-client-15 age zstd ceph-mon ceph-osd radosgw ceph-common uuid-runtime util-linux procps systemd chromium"

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
[ -x /usr/lib/postgresql/15/bin/pg_dump ] || missing+=(postgresql-client-15)
have age || missing+=(age)
have age-keygen || missing+=(age)
have zstd || missing+=(zstd)
have ceph-mon || missing+=(ceph-mon)
have ceph-osd || missing+=(ceph-osd)
have radosgw || missing+=(radosgw)
have ceph || missing+=(ceph-common)
have uuidgen || missing+=(uuid-runtime)
have runuser || missing+=(util-linux)
have systemd-analyze || missing+=(systemd)
[ -x /usr/bin/chromium ] || missing+=(chromium)
id postgres >/dev/null 2>&1 || missing+=(postgresql-15)
need_promtool=0
have promtool || need_promtool=1

if [ ${#missing[@]} -eq 0 ] && [ "$need_promtool" = 0 ]; then
  exit 0
fi

# promtool comes from Debian's prometheus package (about 19 MB), which is downloaded and unpacked
# but not installed: installing it would start a Prometheus server on a systemd machine. promtool
# is one static Go binary, so copying it out is enough.
fetch_promtool() {
  local tmp
  tmp=$(mktemp -d)
  # As root into a root-owned directory: apt's download sandbox user (_apt) could not write there.
  (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root prometheus >/dev/null)
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -m 0755 "$tmp/root/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$tmp"
  echo "system-deps: promtool $(/usr/local/bin/promtool --version 2>&1 | head -n 1 | awk '{print $3}') installed in /usr/local/bin (from Debian's prometheus package, not installed)" >&2
}

if [ "$(id -u)" = 0 ] && have apt-get; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    uniq=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
    echo "system-deps: installing: $uniq" >&2
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $uniq >/dev/null
    # Debian's postgresql package starts its own 'main' cluster on 5432; the tests never use it.
  fi
  if [ "$need_promtool" = 1 ]; then fetch_promtool; fi
  exit 0
fi
if [ "$need_promtool" = 1 ]; then
  # Not fatal here: the alert rules' tests skip without it (and fail when CI=true).
  echo "system-deps: promtool is missing: the alert rules' tests will be skipped. Copy it out of Debian's prometheus package without installing it (that would start a server):" >&2
  echo "system-deps:   cd \"\$(mktemp -d)\" && apt-get download prometheus && dpkg-deb -x prometheus_*.deb . && sudo install -m 0755 usr/bin/promtool /usr/local/bin/" >&2
fi
if [ ${#missing[@]} -gt 0 ]; then
  uniq=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  echo "system-deps: missing system packages: $uniq" >&2
  echo "system-deps: install them with: sudo apt-get install --no-install-recommends $PACKAGES" >&2
  exit 2
fi
exit 0
