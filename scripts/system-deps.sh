#!/usr/bin/env bash
# Checks (and, as root on Debian, installs) the system programs coffer's tests need:
# PostgreSQL 15 server + client, age, zstd, a single-node Ceph (mon, osd, radosgw), and
# systemd-analyze (package systemd: test/config/deploy.test.ts verifies the example units).
set -euo pipefail

PACKAGES="postgresql-15 postgresql-client-15 age zstd ceph-mon ceph-osd radosgw ceph-common uuid-runtime util-linux procps systemd"

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
id postgres >/dev/null 2>&1 || missing+=(postgresql-15)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
uniq=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" = 0 ] && have apt-get; then
  echo "system-deps: installing: $uniq" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $uniq >/dev/null
  # Debian's postgresql package starts its own 'main' cluster on 5432; the tests never use it.
  exit 0
fi
echo "system-deps: missing system packages: $uniq" >&2
echo "system-deps: install them with: sudo apt-get install --no-install-recommends $PACKAGES" >&2
exit 2
