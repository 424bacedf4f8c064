#!/bin/sh
# Creates coffer's bucket on SeaweedFS (idempotent; run by the one-shot seaweedfs-init service of
# docker-compose.yml, which shares the seaweedfs service's network namespace):
#   - bucket $COFFER_BUCKET WITH object lock (SeaweedFS turns versioning on with it), through
#     `weed shell`'s s3.bucket.create -withLock;
# the users and their policies are already in place (seaweedfs/start.sh).
# Then, once, from the host with the coffer-admin keys:
#   coffer init --to s3://coffer/backups --s3-endpoint http://127.0.0.1:8333 --object-lock governance
set -eu

BUCKET="${COFFER_BUCKET:-coffer}"
MASTER="${SEAWEEDFS_MASTER:-localhost:9333}"
FILER="${SEAWEEDFS_FILER:-localhost:8888}"

shell() { printf '%s\nexit\n' "$1" | weed shell -master="$MASTER" -filer="$FILER"; }
# s3.bucket.list prints one line per bucket: "  <name>\tsize:…".
has_bucket() { shell s3.bucket.list | grep -Eq "(^|[[:space:]>])$BUCKET[[:space:]]+size:"; }

if has_bucket; then
  echo "coffer: bucket $BUCKET exists (object lock can only be set when a bucket is created)"
else
  shell "s3.bucket.create -name $BUCKET -withLock"
  has_bucket || { echo "coffer: could not create bucket $BUCKET" >&2; exit 1; }
fi
echo "coffer: bucket $BUCKET (object lock) and users coffer-writer, coffer-reader, coffer-admin are ready"
