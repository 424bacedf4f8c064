#!/bin/sh
# Starts SeaweedFS for coffer (the seaweedfs service of docker-compose.yml, profile "seaweedfs"):
#   - writes the S3 identities into a config file inside the container (mode 0400, owned by the
#     image's "seaweed" user; never in the repository, never in an image layer):
#       coffer-root                               all actions (SeaweedFS's "Admin", "Read", "List", "Tagging", "Write")
#       coffer-writer, coffer-reader, coffer-admin each with its one IAM policy, the very files
#                                                 minio/coffer-<role>.json (bucket name substituted),
#                                                 passed as "policies" and attached with "policyNames"
#     (format: SeaweedFS's S3ApiConfiguration, weed/pb/iam.proto; "policies"/"policyNames" as in
#     its test/s3/normal/s3_list_buckets_test.go);
#   - then runs `weed mini` (master, volume, filer and S3 in one process; S3 on :8333) through the
#     image's /entrypoint.sh, which fixes /data's ownership and drops root.
# The bucket itself is created by seaweedfs/setup.sh (service seaweedfs-init) once S3 answers.
set -eu

: "${SEAWEEDFS_ROOT_USER:?}" "${SEAWEEDFS_ROOT_PASSWORD:?}"
: "${COFFER_WRITER_SECRET:?}" "${COFFER_READER_SECRET:?}" "${COFFER_ADMIN_SECRET:?}"
BUCKET="${COFFER_BUCKET:-coffer}"
POLICIES="${COFFER_POLICY_DIR:-/coffer/minio}"
CONFIG="${COFFER_S3_CONFIG:-/etc/seaweedfs/coffer-s3.json}"
ENTRYPOINT="${SEAWEEDFS_ENTRYPOINT:-/entrypoint.sh}" # the image's; replaced by the tests

# Values are written into JSON strings as they are: refuse what would need escaping.
for pair in "SEAWEEDFS_ROOT_USER=$SEAWEEDFS_ROOT_USER" "SEAWEEDFS_ROOT_PASSWORD=$SEAWEEDFS_ROOT_PASSWORD" \
  "COFFER_WRITER_SECRET=$COFFER_WRITER_SECRET" "COFFER_READER_SECRET=$COFFER_READER_SECRET" \
  "COFFER_ADMIN_SECRET=$COFFER_ADMIN_SECRET"; do
  case "${pair#*=}" in
    *[\"\\]*) echo "seaweedfs/start.sh: ${pair%%=*} must not contain \" or \\" >&2; exit 2 ;;
  esac
done
case "$BUCKET" in
  *[!a-z0-9.-]*) echo "seaweedfs/start.sh: COFFER_BUCKET must be an S3 bucket name (a-z, 0-9, . and -)" >&2; exit 2 ;;
esac

# A policy file as one JSON string: bucket substituted, on one line, quotes and backslashes escaped.
policy_string() {
  sed "s/arn:aws:s3:::coffer/arn:aws:s3:::$BUCKET/g" "$POLICIES/coffer-$1.json" |
    tr '\t\r\n' '   ' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'
}

identity() { # name secret
  printf '    {"name": "%s", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "policyNames": ["%s"]}' \
    "$1" "$1" "$2" "$1"
}

umask 077
{
  printf '{\n  "identities": [\n'
  printf '    {"name": "coffer-root", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "List", "Tagging", "Write"]},\n' \
    "$SEAWEEDFS_ROOT_USER" "$SEAWEEDFS_ROOT_PASSWORD"
  identity coffer-writer "$COFFER_WRITER_SECRET"; printf ',\n'
  identity coffer-reader "$COFFER_READER_SECRET"; printf ',\n'
  identity coffer-admin "$COFFER_ADMIN_SECRET"; printf '\n'
  printf '  ],\n  "policies": [\n'
  sep=''
  for role in writer reader admin; do
    printf '%s    {"name": "coffer-%s", "content": "%s"}' "$sep" "$role" "$(policy_string "$role")"
    sep=',
'
  done
  printf '\n  ]\n}\n'
} > "$CONFIG.tmp"
mv "$CONFIG.tmp" "$CONFIG"
if [ "$(id -u)" = 0 ] && id seaweed >/dev/null 2>&1; then chown seaweed:seaweed "$CONFIG"; fi
chmod 0400 "$CONFIG"

# -s3.autoCreateBucket=false: a mistyped bucket name fails instead of creating a bucket without
# object lock. -webdav=false: coffer needs S3 only.
exec "$ENTRYPOINT" mini -dir=/data -s3.port=8333 -s3.config="$CONFIG" -s3.autoCreateBucket=false -webdav=false
