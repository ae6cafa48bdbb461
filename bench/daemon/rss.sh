#!/usr/bin/env bash
# Idle footprint of `koi daemon`: VmRSS summed over the daemon and every plugin process it runs,
# read from /proc after the daemon has served one call and then idled (IDLE seconds, default 5).
#  1. koi-hello only (no network namespace needed: nothing leaves loopback);
#  2. koi-mdns + koi-hello, inside two network namespaces created here and joined by a veth pair
#     (10.77.0.1/.2), so koi-mdns has a real multicast interface and every mDNS packet stays inside
#     them. Needs root for 2; without it only 1 runs. Target: ≤ 30 MB in total.
# The namespaces are deleted on exit, also on failure. Usage: bash bench/daemon/rss.sh
source "$(dirname "$0")/common.sh"
IDLE="${IDLE:-5}"
NS_A="koi-dbench-$$-a"
NS_B="koi-dbench-$$-b"
NETNS_UP=0
SYSCTL="$(PATH=/usr/sbin:/sbin:$PATH command -v sysctl)"
extra_cleanup() {
  [ "$NETNS_UP" = 1 ] || return 0
  for ns in "$NS_A" "$NS_B"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}

daemon_up
sleep "$IDLE"
echo "koi-hello only:" >&2
hello_kb="$(rss_tree_kb "$DAEMON_PID")"
daemon_down

mdns_kb=null
if [ "$(id -u)" = 0 ]; then
  [ -x "$REL/koi-mdns" ] || { echo "$REL/koi-mdns is missing: cargo build --release -p koi-mdns" >&2; exit 1; }
  cp "$REL/koi-mdns" "$WORK/plugins/koi-mdns"
  NETNS_UP=1
  for ns in "$NS_A" "$NS_B"; do
    ip netns add "$ns"
    ip netns exec "$ns" "$SYSCTL" -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    ip -n "$ns" link set lo up
  done
  ip link add veth0 netns "$NS_A" type veth peer name veth0 netns "$NS_B"
  ip -n "$NS_A" addr add 10.77.0.1/24 dev veth0
  ip -n "$NS_B" addr add 10.77.0.2/24 dev veth0
  ip -n "$NS_A" link set veth0 up
  ip -n "$NS_B" link set veth0 up
  rm -rf "$KOI_HOME"; mkdir -p "$KOI_HOME"
  REST_PORT=7240 daemon_up ip netns exec "$NS_A"
  sleep "$IDLE"
  echo "koi-mdns + koi-hello (in $NS_A):" >&2
  mdns_kb="$(rss_tree_kb "$DAEMON_PID")"
  daemon_down
else
  echo "not root: skipping the koi-mdns measurement (it must run in a network namespace)" >&2
fi
python3 - "$hello_kb" "$mdns_kb" <<'PY'
import json, sys
h = int(sys.argv[1]); m = None if sys.argv[2] == "null" else int(sys.argv[2])
mib = lambda kb: round(kb / 1024, 1)
out = {"idle_rss_hello_only_mib": mib(h)}
if m is not None:
    out.update({"idle_rss_mdns_and_hello_mib": mib(m), "target_mb": 30, "met": m * 1024 <= 30e6})
print(json.dumps(out, indent=2))
PY
