#!/bin/sh
# Sets up MinIO for coffer (idempotent; run by the one-shot minio-init service of
# docker-compose.yml, or by hand with mc installed):
#   - bucket $COFFER_BUCKET created WITH object lock (which also turns on versioning);
#   - IAM policies coffer-writer, coffer-reader, coffer-admin from the JSON files next to this script
#     (written for bucket "coffer", repository prefix "backups/"; the bucket name is substituted);
#   - users coffer-writer, coffer-reader, coffer-admin, each with its one policy.
# Then, once, from the host with the coffer-admin keys:
#   coffer init --to s3://coffer/backups --s3-endpoint http://127.0.0.1:9000 --object-lock governance
set -eu

: "${MINIO_URL:?}" "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${COFFER_WRITER_SECRET:?}" "${COFFER_READER_SECRET:?}" "${COFFER_ADMIN_SECRET:?}"
BUCKET="${COFFER_BUCKET:-coffer}"
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

mc alias set coffer "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing --with-lock "coffer/$BUCKET"

for role in writer reader admin; do
  case "$role" in
    writer) secret="$COFFER_WRITER_SECRET" ;;
    reader) secret="$COFFER_READER_SECRET" ;;
    admin) secret="$COFFER_ADMIN_SECRET" ;;
  esac
  sed "s/arn:aws:s3:::coffer/arn:aws:s3:::$BUCKET/g" "$HERE/coffer-$role.json" > "$WORK/coffer-$role.json"
  mc admin policy create coffer "coffer-$role" "$WORK/coffer-$role.json"
  mc admin user add coffer "coffer-$role" "$secret"
  if ! mc admin user info coffer "coffer-$role" --json | grep -Eq "\"policyName\": *\"([^\"]*,)?coffer-$role(,|\")"; then
    mc admin policy attach coffer "coffer-$role" --user "coffer-$role"
  fi
done
echo "coffer: bucket $BUCKET (object lock) and users coffer-writer, coffer-reader, coffer-admin are ready"
