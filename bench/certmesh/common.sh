#!/usr/bin/env bash
# Shared set-up for the koi-certmesh benchmarks, sourced by join.sh, issue.sh and unlock.sh.
#
# Isolation: a temp directory holds a COPY of the release `koi` (so the plugins next to
# target/release/koi — koi-mdns among them — are never discovered) and a plugin directory with
# koi-certmesh only (KOI_PLUGIN_PATH); every koi gets its own KOI_HOME, PATH=/usr/bin:/bin, and runs
# inside one of two network namespaces created here (joined by a veth pair, 10.77.50.1/.2) under
# its own UTS namespace and host name (`bench-ca` on A, `bench-member` on B: the CA refuses a
# member whose host name equals its own). No koi-mdns is installed, so nothing is multicast, and
# nothing leaves the namespaces. The EXIT trap stops every process started here, by pid, deletes
# the namespaces and the temp directory. Needs root (ip netns, unshare).
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "the certmesh benchmarks need root (network and UTS namespaces)" >&2; exit 1; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REL="${REL:-$ROOT/target/release}"
for b in koi koi-certmesh; do
  [ -x "$REL/$b" ] || { echo "$REL/$b is missing: cargo build --release --workspace" >&2; exit 1; }
done
HYPERFINE="${HYPERFINE:-$( [ -x /opt/hyperfine/bin/hyperfine ] && echo /opt/hyperfine/bin/hyperfine || echo hyperfine )}"
PY=/usr/bin/python3
# BENCH_TMP=/dev/shm puts every KOI_HOME, CAROOT and output on tmpfs (fsync costs nothing there):
# a diagnostic for how much of a figure is the disk.
WORK="$(mktemp -d "${BENCH_TMP:-/tmp}/koi-certmesh-bench.XXXXXX")"
chmod 755 "$WORK"
mkdir -p "$WORK/plugins"
cp "$REL/koi" "$WORK/koi"
cp "$REL/koi-certmesh" "$WORK/plugins/koi-certmesh"
KOI="$WORK/koi"
PASS="$WORK/passphrase"
printf 'correct horse battery staple\n' > "$PASS"
chmod 600 "$PASS"
NS_A="koi-cmbench-$$-a"     # the CA
NS_B="koi-cmbench-$$-b"     # the member
IP_A=10.77.50.1
IP_B=10.77.50.2
API_PORT=5641
NETNS_UP=0
DAEMON_PID=""
# shellcheck source=../daemon-process.sh
source "$(dirname "${BASH_SOURCE[0]}")/../daemon-process.sh"
SYSCTL="$(PATH=/usr/sbin:/sbin:$PATH command -v sysctl)"

lab_up() {
  NETNS_UP=1
  for ns in "$NS_A" "$NS_B"; do
    ip netns add "$ns"
    ip netns exec "$ns" "$SYSCTL" -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    ip -n "$ns" link set lo up
  done
  ip link add veth0 netns "$NS_A" type veth peer name veth0 netns "$NS_B"
  ip -n "$NS_A" addr add "$IP_A/24" dev veth0
  ip -n "$NS_B" addr add "$IP_B/24" dev veth0
  ip -n "$NS_A" link set veth0 up
  ip -n "$NS_B" link set veth0 up
}

# fsync_probe: median ms of 20 × (write 1.5 KB, fsync it, fsync its directory) in $WORK — the unit
# of koi-certmesh's atomic writes. It moves with other processes' disk writes (ext4 journal).
fsync_probe() {
  "$PY" - "$WORK" <<'PY'
import os, statistics, sys, time
d = sys.argv[1]; p = os.path.join(d, ".fsync-probe"); v = []
for _ in range(20):
    t = time.perf_counter()
    f = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600); os.write(f, b"x" * 1500); os.fsync(f); os.close(f)
    f = os.open(d, os.O_RDONLY); os.fsync(f); os.close(f)
    v.append((time.perf_counter() - t) * 1000)
os.unlink(p); print(round(statistics.median(v), 2))
PY
}

# on ca|member CMD...: runs CMD in that host's namespace, under its host name, with its KOI_HOME
# ($CA_HOME / $MEMBER_HOME, set by the caller) and the isolated plugin path. Execs all the way
# down, so `on ca "$KOI" daemon &` leaves $! = the koi daemon's pid.
on() {
  local who="$1"; shift
  local ns name home
  case "$who" in
    ca) ns="$NS_A"; name=bench-ca; home="$CA_HOME" ;;
    member) ns="$NS_B"; name=bench-member; home="$MEMBER_HOME" ;;
    *) echo "on: unknown host $who" >&2; return 2 ;;
  esac
  ip netns exec "$ns" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$name" \
    env KOI_HOME="$home" HOME="$home" KOI_PLUGIN_PATH="$WORK/plugins" PATH=/usr/bin:/bin \
    KOI_REST_BIND=127.0.0.1:7240 KOI_CERTMESH_API_BIND="$IP_A:$API_PORT" "$@"
}

# ca_create DIR: a fresh CA in KOI_HOME=DIR (one-shot, no daemon). Sets CA_HOME, CA_FP, CA_URI.
ca_create() {
  CA_HOME="$1"
  mkdir -p "$CA_HOME"
  on ca "$KOI" certmesh create --entropy system --passphrase-file "$PASS" --no-trust --json \
    > "$CA_HOME.create.json" 2> "$CA_HOME.create.err" || { cat "$CA_HOME.create.err" >&2; exit 1; }
  CA_FP="$(jq -r .mesh.ca_fingerprint "$CA_HOME.create.json")"
  CA_URI="$(jq -r .otpauth_uri "$CA_HOME.create.json")"
}

# daemon_up: `koi daemon` on the CA (KOI_HOME=$CA_HOME); waits until its certmesh plugin serves
# the API (GET /v1/certmesh/health answers; the CA is still locked then).
daemon_up() {
  rm -f "$CA_HOME/run/koi.sock"
  on ca "$KOI" daemon > "$WORK/daemon.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 200); do
    ip netns exec "$NS_A" curl -sfk -o /dev/null "https://$IP_A:$API_PORT/v1/certmesh/health" && return 0
    sleep 0.05
  done
  cat "$WORK/daemon.log" >&2; echo "the certmesh API never answered under koi daemon" >&2; exit 1
}

# ca_serving DIR: a fresh CA in DIR (ca_create), its daemon up (daemon_up) and the CA unlocked.
ca_serving() {
  ca_create "$1"
  daemon_up
  on ca "$KOI" certmesh unlock --passphrase-file "$PASS" --json > /dev/null
}

cleanup() {
  daemon_down
  if [ "$NETNS_UP" = 1 ]; then
    for ns in "$NS_A" "$NS_B"; do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
