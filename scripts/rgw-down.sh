#!/usr/bin/env bash
# Stops a cluster started by scripts/rgw-up.sh DIR and removes DIR.
# Usage: scripts/rgw-down.sh [--keep] DIR     (--keep: stop daemons but keep DIR, e.g. for logs)
# Idempotent: a missing DIR or already-stopped daemons are fine; always exits 0 unless misused.
# Only processes whose command line names DIR/ceph.conf are signalled: pids from DIR/run/*.pid,
# plus a /proc scan for any daemon or admin tool of this cluster whose pid file is missing.
set -uo pipefail

keep=0
if [[ "${1:-}" == --keep ]]; then keep=1; shift; fi
[[ $# -eq 1 ]] || { echo "usage: $0 [--keep] DIR" >&2; exit 2; }
[[ -d "$1" ]] || exit 0
DIR=$(cd "$1" 2>/dev/null && pwd) || exit 0
[[ "$DIR" != / ]] || { echo "[rgw-down] refusing to act on /" >&2; exit 2; }
CONF=$DIR/ceph.conf

# Prints the command line of pid if it belongs to this cluster (zombies have none).
ours() {
  local cmd
  cmd=$( { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null) || return 1
  [[ " $cmd " == *" $CONF "* ]] && printf '%s' "$cmd"
}

find_pids() {
  local f p
  declare -A seen=()
  for f in "$DIR"/run/*.pid; do
    [[ -f "$f" ]] || continue
    p=$( { tr -dc '0-9' <"$f"; } 2>/dev/null)
    [[ -n "$p" ]] && ours "$p" >/dev/null && seen[$p]=1
  done
  for f in /proc/[0-9]*; do
    p=${f#/proc/}
    [[ -z "${seen[$p]:-}" ]] && ours "$p" >/dev/null && seen[$p]=1
  done
  echo "${!seen[@]}"
}

# stop GRACE PID... : SIGTERM, wait up to GRACE s, then SIGKILL and wait up to 5 s more.
stop() {
  local grace=$1; shift
  (($#)) || return 0
  local p left still deadline
  kill -TERM "$@" 2>/dev/null
  deadline=$(($(date +%s) + grace))
  while :; do
    left=()
    for p in "$@"; do ours "$p" >/dev/null && left+=("$p"); done
    ((${#left[@]})) || return 0
    (($(date +%s) < deadline)) || break
    sleep 0.05
  done
  echo "[rgw-down] SIGKILL to ${left[*]} (still running ${grace} s after SIGTERM)" >&2
  kill -KILL "${left[@]}" 2>/dev/null
  for _ in $(seq 1 100); do
    still=()
    for p in "${left[@]}"; do ours "$p" >/dev/null && still+=("$p"); done
    ((${#still[@]})) || return 0
    sleep 0.05
  done
  echo "[rgw-down] still running after SIGKILL: ${still[*]}" >&2
}

# radosgw and admin tools first (radosgw hangs in shutdown if the OSD is already gone), then
# the OSD (it waits up to 5 s for a mon that is gone), then the mon.
# radosgw gets a short grace: once lifecycle processing has run, its shutdown blocks joining
# the LC thread until its own 120 s alarm (RGW 16.2.15), and nothing of it is worth keeping.
RGW_GRACE=${RGW_DOWN_RGW_GRACE:-3}
mons=() osds=() others=()
for p in $(find_pids); do
  cmd=$(ours "$p") || continue
  case "$cmd" in
    ceph-mon\ *|*/ceph-mon\ *) mons+=("$p") ;;
    ceph-osd\ *|*/ceph-osd\ *) osds+=("$p") ;;
    *) others+=("$p") ;;
  esac
done
stop "$RGW_GRACE" "${others[@]}"
stop 10 "${osds[@]}"
stop 10 "${mons[@]}"

((keep)) && exit 0
# Only remove what looks like a cluster dir (or a still-empty one).
if [[ -f "$CONF" || -z "$(ls -A "$DIR" 2>/dev/null)" ]]; then
  rm -rf "$DIR" 2>/dev/null || { sleep 0.2; rm -rf "$DIR" 2>/dev/null; } || true
else
  echo "[rgw-down] $DIR has no ceph.conf; not removing it" >&2
fi
exit 0
