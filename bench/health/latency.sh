#!/usr/bin/env bash
# Detection latency, machine killed → down (issue 14): two network namespaces joined by a veth pair
# (10.77.60.1/.2, created here, deleted on exit), each with its own UTS host name. A runs a koi
# daemon with koi-mdns and koi-health (KOI_HEALTH_THRESHOLD=THRESHOLD, default 10 s;
# KOI_MDNS_RECHECK_SECS=PERIOD, default 3), B a koi daemon with koi-mdns announcing one service.
# Each of RUNS (default 5) runs: wait until A has B up, note the time, SIGKILL every process in B's
# namespace (stopped first, then killed, so no goodbye), poll A's `koi health state` every 100 ms until B is down, report the
# latency; then start B again. Multicast stays inside the two namespaces.
# Usage: bash bench/health/latency.sh   (RUNS=…, THRESHOLD=…, PERIOD=…, REL=…)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "needs root (network and UTS namespaces)" >&2; exit 1; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REL="${REL:-$ROOT/target/release}"
for b in koi koi-health koi-mdns; do
  [ -x "$REL/$b" ] || { echo "$REL/$b is missing: cargo build --release -p koi-host -p koi-health -p koi-mdns" >&2; exit 1; }
done
command -v jq bc > /dev/null || apt-get install -y --no-install-recommends jq bc >&2
RUNS="${RUNS:-5}"; THRESHOLD="${THRESHOLD:-10}"; PERIOD="${PERIOD:-3}"
A="koi-hbench-$$-a"; B="koi-hbench-$$-b"
WORK="$(mktemp -d /tmp/koi-health-latency.XXXXXX)"
cleanup() {
  for ns in "$A" "$B"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
for ns in "$A" "$B"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add veth0 netns "$A" type veth peer name veth0 netns "$B"
ip -n "$A" addr add 10.77.60.1/24 dev veth0; ip -n "$B" addr add 10.77.60.2/24 dev veth0
ip -n "$A" link set veth0 up; ip -n "$B" link set veth0 up
for side in a b; do
  mkdir -p "$WORK/$side/plugins" "$WORK/$side/home"
  cp "$REL/koi" "$WORK/$side/koi"
  cp "$REL/koi-mdns" "$WORK/$side/plugins/koi-mdns"
done
cp "$REL/koi-health" "$WORK/a/plugins/koi-health"
# on SIDE NS HOSTNAME ARGS...: koi in that namespace, host name and home.
on() {
  local side=$1 ns=$2 name=$3; shift 3
  ip netns exec "$ns" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$name" \
    env -i PATH=/usr/bin:/bin HOME="$WORK/$side" KOI_HOME="$WORK/$side/home" \
    KOI_PLUGIN_PATH="$WORK/$side/plugins" KOI_REST_ENABLED=false \
    KOI_HEALTH_THRESHOLD="${THRESHOLD}s" KOI_MDNS_RECHECK_SECS="$PERIOD" "$WORK/$side/koi" "$@"
}
start_daemon() {   # start_daemon SIDE NS NAME
  on "$1" "$2" "$3" daemon > "$WORK/$1/daemon.log" 2>&1 &
  for _ in $(seq 200); do [ -S "$WORK/$1/home/run/koi.sock" ] && break; sleep 0.05; done
  sleep 0.5
}
state_of_b() {
  on a "$A" bench-a health state --json 2>/dev/null \
    | jq -r '.machines[] | select(.name == "bench-b") | .state' 2>/dev/null || true
}
start_daemon a "$A" bench-a
for run in $(seq "$RUNS"); do
  rm -f "$WORK/b/home/run/koi.sock"
  start_daemon b "$B" bench-b
  on b "$B" bench-b mdns announce web _http._tcp 8080 > /dev/null
  for _ in $(seq 600); do [ "$(state_of_b)" = up ] && break; sleep 0.1; done
  sleep "$((PERIOD * 2))"
  [ "$(state_of_b)" = up ] || { echo "run $run: B not up on A" >&2; exit 1; }
  killed=$(date +%s.%N)
  # Stop everything first, then kill: killed one by one, koi-mdns could see its daemon's pipe close
  # and send goodbyes in between.
  pids=$(ip netns pids "$B")
  kill -STOP $pids 2>/dev/null || true
  kill -KILL $pids 2>/dev/null || true
  for _ in $(seq 1200); do [ "$(state_of_b)" = down ] && break; sleep 0.1; done
  down=$(date +%s.%N)
  reason=$(on a "$A" bench-a health log --name bench-b --last 1 --json | jq -r '.transitions[0].reason')
  echo "run $run: down $(echo "$down - $killed" | bc | xargs printf '%.1f') s after the kill (threshold ${THRESHOLD} s, re-check every ${PERIOD} s): $reason"
done
