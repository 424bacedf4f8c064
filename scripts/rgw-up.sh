#!/usr/bin/env bash
# Brings up a throwaway single-node Ceph cluster (1 mon on msgr2, 1 BlueStore OSD in a sparse
# file, 1 radosgw with the beast frontend) entirely under DIR, on 127.0.0.1, for tests and
# benchmarks. See /work/shared/notes/s3-test-server.md for the recipe this follows.
#
# Usage: scripts/rgw-up.sh DIR [PORT]
#   DIR   an empty (or missing) directory that will hold everything: conf, keyrings, data,
#         sockets, pid files, logs. Stop and clean up with scripts/rgw-down.sh DIR.
#   PORT  HTTP port for radosgw (default: a free one).
# Env:
#   RGW_USERS        space-separated extra S3 users to create (e.g. "writer reader other")
#   RGW_OSD_SIZE_GB  size of the sparse BlueStore file (default 10)
#   RGW_UP_TIMEOUT   overall deadline in seconds (default 90)
#
# On success prints shell-sourceable lines on stdout:
#   RGW_ENDPOINT=… RGW_REGION=… RGW_ADMIN_ACCESS_KEY=… RGW_ADMIN_SECRET_KEY=…
#   RGW_USER_<NAME>_ACCESS_KEY=… RGW_USER_<NAME>_SECRET_KEY=… (NAME upper-cased, [^A-Z0-9] -> _)
#   RGW_DIR=…
# Everything else goes to stderr. On failure: tail of the relevant log, daemons stopped, exit 1.
set -euo pipefail

# stdout is reserved for the result lines; all chatter (ours and the tools') goes to stderr.
exec 3>&1 1>&2
trap '' PIPE
START_NS=$(date +%s%N)

# Never fails (a closed stderr must not abort the bring-up or the cleanup).
log() { printf '[rgw-up +%sms] %s\n' "$(( ($(date +%s%N) - START_NS) / 1000000 ))" "$*" >&2 || true; }
die() { log "ERROR: $*"; exit 1; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 DIR [PORT]"
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEADLINE=$(($(date +%s) + ${RGW_UP_TIMEOUT:-90}))

# --- prerequisites -------------------------------------------------------------------------
missing=()
for b in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool uuidgen timeout setsid; do
  command -v "$b" >/dev/null 2>&1 || missing+=("$b")
done
if ((${#missing[@]})); then
  die "missing binaries: ${missing[*]}. Install them with:
  apt-get install --no-install-recommends ceph-mon ceph-osd radosgw ceph-common uuid-runtime"
fi

USERS=()
for u in ${RGW_USERS:-}; do
  [[ "$u" =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]] || die "bad user name in RGW_USERS: '$u'"
  [[ "$u" != coffer-admin ]] || die "RGW_USERS must not contain coffer-admin"
  USERS+=("$u")
done

# --- ports ---------------------------------------------------------------------------------
port_busy() { (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Below the usual ephemeral range (32768+) so outgoing connections do not collide.
pick_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    [[ "$p" == "${MON_PORT:-}" ]] && continue
    port_busy "$p" || { echo "$p"; return 0; }
  done
  die "no free port found"
}
MON_PORT=$(pick_port)
if [[ $# -ge 2 ]]; then
  RGW_PORT=$2
  [[ "$RGW_PORT" =~ ^[0-9]+$ ]] || die "bad PORT: $RGW_PORT"
  ! port_busy "$RGW_PORT" || die "port $RGW_PORT is already in use"
else
  RGW_PORT=$(pick_port)
fi
[[ "$RGW_PORT" != "$MON_PORT" ]] || MON_PORT=$(pick_port)

mkdir -p "$1"
DIR=$(cd "$1" && pwd)
[[ -z "$(ls -A "$DIR")" ]] || die "$DIR is not empty"
# Unix socket paths are limited to 107 bytes.
((${#DIR} <= 60)) || die "DIR path too long for admin sockets (max 60 chars): $DIR"

RGW_ID=a
CONF=$DIR/ceph.conf
KEYRING=$DIR/keyring
OSD_DIR=$DIR/osd/ceph-0
MON_DIR=$DIR/mon/ceph-a
mkdir -p "$DIR"/{run,log,crash,rgw,osd,mon} "$OSD_DIR"

# --- failure handling -----------------------------------------------------------------------
OK=0
FAIL_LOG=""   # logs whose tails are most relevant to the step in progress
show_tail() {
  log "---- tail of $1 ----"
  if [[ "$1" == *.log ]]; then
    # Daemon logs: only timestamped lines (skips RocksDB's multi-line statistics dumps), no audit.
    grep -a -E '^[0-9]{4}-[0-9]{2}-[0-9]{2}T' "$1" | grep -v ' : audit ' | tail -n 25 | cut -c1-400 >&2 || true
  else
    tail -n 25 "$1" | cut -c1-400 >&2 || true
  fi
}
on_exit() {
  local rc=$?
  ((OK)) && return 0
  ((rc)) || rc=1
  log "bring-up failed (exit $rc) in $DIR"
  local f
  for f in $FAIL_LOG; do
    [[ -s "$f" ]] && show_tail "$f"
  done
  log "stopping daemons"
  "$SCRIPT_DIR/rgw-down.sh" --keep "$DIR" || true
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

check_deadline() { (($(date +%s) < DEADLINE)) || die "timed out ($*)"; }
alive() { [[ -f "$DIR/run/$1.pid" ]] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null; }
# Start a daemon in the foreground mode (-f) in its own session, outputs to files, and record
# its pid ourselves (setsid does not fork in a non-interactive shell, so $! is the daemon).
# 3>&-: the daemon must not hold our stdout (fd 3) open, or a caller reading it never sees EOF.
start_daemon() {
  local name=$1; shift
  setsid "$@" -f </dev/null >>"$DIR/log/$name.out" 2>&1 3>&- &
  echo $! >"$DIR/run/$name.pid"
}
ceph_cli() { timeout "${CEPH_CLI_TIMEOUT:-30}" ceph -c "$CONF" --connect-timeout 25 "$@"; }

# --- configuration --------------------------------------------------------------------------
FSID=$(uuidgen)
OSD_UUID=$(uuidgen)
OSD_SIZE=$(( ${RGW_OSD_SIZE_GB:-10} * 1024 * 1024 * 1024 ))

cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $KEYRING
run dir = $DIR/run
crash dir = $DIR/crash
mon cluster log file = $DIR/log/ceph.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
osd objectstore = bluestore

[mon]
mon data = $MON_DIR
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
paxos propose interval = 0.01
paxos min wait = 0.01

[osd]
osd data = $DIR/osd/\$cluster-\$id
keyring = $DIR/osd/\$cluster-\$id/keyring
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
bluestore block create = true
bluestore block size = $OSD_SIZE
bluestore fsck on mkfs = false
bluestore fsck on mount = false
osd memory target = 1073741824
# Each op shard costs ~0.3 s at start-up (default 5); one shard is plenty for tests.
osd op num shards = 1
osd op num threads per shard = 4

[client]
admin socket =
log file =

[client.rgw.$RGW_ID]
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw lc debug interval = 10
rgw lifecycle work time = 00:00-24:00
# With several LC workers contending for shard locks, radosgw sits out a sleep(5) on SIGTERM.
rgw lc max worker = 1
# radosgw starts before the OSD is up; its objecter would notice only on its next 5 s tick.
objecter tick interval = 0.2
EOF

# --- keys ------------------------------------------------------------------------------------
OSD_KEY=$(ceph-authtool --gen-print-key)
ceph-authtool --create-keyring "$KEYRING" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$KEYRING" --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool "$KEYRING" --gen-key -n "client.rgw.$RGW_ID" --cap mon 'allow rw' --cap osd 'allow rwx' >/dev/null
# osd.0 goes into the mon's initial auth database too, so no secret has to be passed later.
ceph-authtool "$KEYRING" --add-key "$OSD_KEY" -n osd.0 \
  --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
ceph-authtool --create-keyring "$OSD_DIR/keyring" -n osd.0 --add-key "$OSD_KEY" >/dev/null

# --- mon -------------------------------------------------------------------------------------
log "mon on v2:127.0.0.1:$MON_PORT, rgw on 127.0.0.1:$RGW_PORT, dir $DIR"
FAIL_LOG="$DIR/log/mon.out $DIR/log/mon.a.log"
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$DIR/monmap" >/dev/null
timeout 30 ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$KEYRING" >>"$DIR/log/mon.out" 2>&1 \
  || die "ceph-mon --mkfs failed"
start_daemon mon ceph-mon -c "$CONF" -i a

# OSD mkfs (BlueStore creates its sparse block file) does not need the mon: overlap it.
( timeout 60 ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$OSD_UUID" --no-mon-config \
    >>"$DIR/log/osd-mkfs.out" 2>&1 || { echo "ceph-osd --mkfs failed" >>"$DIR/log/osd-mkfs.out"; exit 1; } ) &
MKFS_PID=$!

# One CLI session (commands on stdin): register the OSD, create and tag RGW's pools. The CLI
# waits for the mon to answer by itself (--connect-timeout), so no separate polling is needed.
POOLS=(.rgw.root default.rgw.control default.rgw.meta default.rgw.log
       default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec)
{
  echo "osd new $OSD_UUID 0"
  for p in "${POOLS[@]}"; do echo "osd pool create $p"; done
  for p in "${POOLS[@]}"; do echo "osd pool application enable $p rgw"; done
} >"$DIR/bootstrap.cmds"
log "mon started; bootstrap commands"
ceph_cli <"$DIR/bootstrap.cmds" >>"$DIR/log/bootstrap.out" 2>&1 &
CLI_PID=$!
while kill -0 "$CLI_PID" 2>/dev/null; do
  alive mon || die "ceph-mon exited"
  sleep 0.05
done
wait "$CLI_PID" || { FAIL_LOG="$DIR/log/bootstrap.out $FAIL_LOG"; die "cluster bootstrap commands failed"; }

FAIL_LOG="$DIR/log/osd-mkfs.out $DIR/log/osd.0.log"
log "bootstrap done; waiting for osd mkfs"
wait "$MKFS_PID" || die "ceph-osd --mkfs failed"
log "osd mkfs done; starting osd and radosgw"
start_daemon osd ceph-osd -c "$CONF" -i 0

# --- radosgw ---------------------------------------------------------------------------------
# Start it right away: it waits for the OSD and its PGs by itself.
FAIL_LOG="$DIR/log/client.rgw.$RGW_ID.log $DIR/log/rgw.out $DIR/log/ceph.log"
start_daemon rgw radosgw -c "$CONF" -n "client.rgw.$RGW_ID"

http_up() {
  local line
  { exec 8<>"/dev/tcp/127.0.0.1/$RGW_PORT"; } 2>/dev/null || return 1
  printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&8 || { exec 8<&-; return 1; }
  IFS= read -r -t 2 line <&8 || line=""
  exec 8<&- 8>&-
  [[ "$line" == HTTP/* ]]
}
until http_up; do
  alive osd || { FAIL_LOG="$DIR/log/osd.out $DIR/log/osd.0.log"; die "ceph-osd exited"; }
  alive rgw || { FAIL_LOG="$DIR/log/client.rgw.$RGW_ID.log $DIR/log/rgw.out"; die "radosgw exited"; }
  alive mon || { FAIL_LOG="$DIR/log/mon.out $DIR/log/mon.a.log"; die "ceph-mon exited"; }
  check_deadline "waiting for radosgw on port $RGW_PORT"
  sleep 0.1
done
log "radosgw answers after $(( ($(date +%s%N) - START_NS) / 1000000 )) ms"

# --- users -----------------------------------------------------------------------------------
rand() { LC_ALL=C tr -dc "$1" </dev/urandom | head -c "$2" || true; }
declare -A AK SK
ALL_USERS=(coffer-admin "${USERS[@]}")
FAIL_LOG="$DIR/log/users.out $DIR/log/client.rgw.$RGW_ID.log"
pids=()
for u in "${ALL_USERS[@]}"; do
  AK[$u]=$(rand 'A-Z0-9' 20)
  SK[$u]=$(rand 'A-Za-z0-9' 40)
  timeout 60 radosgw-admin -c "$CONF" user create --uid "$u" --display-name "$u" \
    --access-key "${AK[$u]}" --secret-key "${SK[$u]}" >/dev/null 2>>"$DIR/log/users.out" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || die "radosgw-admin user create failed"; done

log "ready in $(( ($(date +%s%N) - START_NS) / 1000000 )) ms"
envname() { local n=${1^^}; echo "${n//[^A-Z0-9]/_}"; }
{
  echo "RGW_ENDPOINT=http://127.0.0.1:$RGW_PORT"
  echo "RGW_REGION=us-east-1"
  echo "RGW_ADMIN_ACCESS_KEY=${AK[coffer-admin]}"
  echo "RGW_ADMIN_SECRET_KEY=${SK[coffer-admin]}"
  for u in "${USERS[@]}"; do
    echo "RGW_USER_$(envname "$u")_ACCESS_KEY=${AK[$u]}"
    echo "RGW_USER_$(envname "$u")_SECRET_KEY=${SK[$u]}"
  done
  echo "RGW_DIR=$DIR"
} >&3
OK=1
