#!/usr/bin/env bash
# Failover time (issue 11, benchmark row "primary killed → standby advertises primary ≤ grace +
# 5 s"), on a three-host lab of its own: A, B, C on one bridge (a switch namespace), 10.77.60.1-3,
# each koi a COPY of the release `koi` with koi-certmesh and koi-mdns in a private plugin
# directory and its own KOI_HOME, inside its namespace under its own UTS host name (bench-fo-a,
# -b, -c). mDNS multicast stays on the bridge; nothing leaves the namespaces. The EXIT trap kills
# every process in the namespaces (by pid), deletes them and the temp directory. Needs root.
#
# A creates the mesh under `koi daemon` (unlocked); B joins, is promoted (`koi certmesh promote`)
# and unlocked; C runs koi-mdns and watches `_certmesh._tcp` (`koi mdns discover --watch`). Each
# round: t0 = A's interface goes down and every process of A is killed with SIGKILL (no goodbye
# reaches the link); the figure is t0 → the first line of C's watch showing B's advertisement
# with role=primary. The next round brings the dead machine back (it steps down to a standby of
# the new primary, which is unlocked), waits until it is a synced standby watching the primary,
# and kills the primary: the roles alternate (term 2, 3, 4 …), so later rounds also prove a
# takeover BY a former primary (the term-3 path).
#
# Production settings: the default grace (60 s) and koi-mdns's default re-check (20 s), release
# build, heartbeat every 5 min. GRACE=… sets KOI_CERTMESH_FAILOVER_GRACE_SECS (at least 10) and
# RECHECK=… KOI_MDNS_RECHECK_SECS on every host.
# Usage: bash bench/certmesh/failover.sh   (ROUNDS=3; REL=… for another build)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "the failover benchmark needs root (network and UTS namespaces)" >&2; exit 1; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REL="${REL:-$ROOT/target/release}"
for b in koi koi-certmesh koi-mdns; do
  [ -x "$REL/$b" ] || { echo "$REL/$b is missing: cargo build --release --workspace" >&2; exit 1; }
done
ROUNDS="${ROUNDS:-3}"
GRACE="${GRACE:-60}"
RECHECK="${RECHECK:-20}"
WORK="$(mktemp -d "${BENCH_TMP:-/tmp}/koi-certmesh-failover.XXXXXX")"
chmod 755 "$WORK"
mkdir -p "$WORK/plugins"
cp "$REL/koi" "$WORK/koi"
cp "$REL/koi-certmesh" "$REL/koi-mdns" "$WORK/plugins/"
TAG="koi-fobench-$$"
SW="$TAG-sw"
NETNS_UP=0
SYSCTL="$(PATH=/usr/sbin:/sbin:$PATH command -v sysctl)"

cleanup() {
  if [ "$NETNS_UP" = 1 ]; then
    for ns in "$TAG-a" "$TAG-b" "$TAG-c" "$SW"; do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NETNS_UP=1
ip netns add "$SW"
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 type bridge mcast_snooping 0
ip -n "$SW" link set br0 up
i=0
for h in a b c; do
  i=$((i + 1))
  ns="$TAG-$h"
  ip netns add "$ns"
  ip netns exec "$ns" "$SYSCTL" -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  ip -n "$SW" link add "p$h" type veth peer name veth0 netns "$ns"
  ip -n "$SW" link set "p$h" master br0
  ip -n "$SW" link set "p$h" up
  ip -n "$ns" addr add "10.77.60.$i/24" dev veth0
  ip -n "$ns" link set veth0 up
  ip -n "$ns" link set lo up
  mkdir -p "$WORK/home-$h"
done

/usr/bin/python3 "$HERE/failover_driver.py" --work "$WORK" --tag "$TAG" --rounds "$ROUNDS" \
  --grace "$GRACE" --recheck "$RECHECK"
