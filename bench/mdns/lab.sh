#!/usr/bin/env bash
# The two-host lab for the mDNS benchmarks, sourced by run.sh. Every mDNS packet stays inside
# the two network namespaces created here (names carry this shell's pid); `lab_down` deletes them.
set -euo pipefail
LAB_A="koi-bench-$$-a"
LAB_B="koi-bench-$$-b"
LAB_DIR="$(mktemp -d /tmp/koi-mdns-bench.XXXXXX)"

lab_up() {
  for ns in "$LAB_A" "$LAB_B"; do
    ip netns add "$ns"
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    ip -n "$ns" link set lo up
  done
  ip link add veth0 netns "$LAB_A" type veth peer name veth0 netns "$LAB_B"
  ip -n "$LAB_A" addr add 10.77.0.1/24 dev veth0
  ip -n "$LAB_B" addr add 10.77.0.2/24 dev veth0
  ip -n "$LAB_A" link set veth0 up
  ip -n "$LAB_B" link set veth0 up
}

# A private Avahi in namespace $1 (own dbus-daemon, own /run via unshare -m), host name $2.
avahi_up() {
  local ns="$1" name="$2" dir="$LAB_DIR/avahi-$1"
  mkdir -p "$dir/run"
  cat > "$dir/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path=$dir/bus</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/></policy></busconfig>
CONF
  printf '[server]\nhost-name=%s\nallow-interfaces=veth0\n[wide-area]\nenable-wide-area=no\n[publish]\npublish-hinfo=no\npublish-workstation=no\n' "$name" > "$dir/avahi.conf"
  ip netns exec "$ns" dbus-daemon --config-file="$dir/bus.conf" --nofork --nopidfile 2>/dev/null &
  echo $! >> "$LAB_DIR/pids"
  for _ in $(seq 100); do [ -S "$dir/bus" ] && break; sleep 0.02; done
  DBUS_SYSTEM_BUS_ADDRESS="unix:path=$dir/bus" ip netns exec "$ns" unshare -m --propagation private \
    sh -c "mount --bind $dir/run /run && mkdir -p /run/avahi-daemon && exec avahi-daemon -f $dir/avahi.conf --no-drop-root --no-chroot --no-rlimits" \
    > "$dir/daemon.log" 2>&1 &
  echo $! > "$dir/daemon.pid"
  echo $! >> "$LAB_DIR/pids"
  for _ in $(seq 200); do grep -q "Server startup complete" "$dir/daemon.log" && break; sleep 0.05; done
}

avahi_env() { echo "DBUS_SYSTEM_BUS_ADDRESS=unix:path=$LAB_DIR/avahi-$1/bus"; }

lab_down() {
  for ns in "$LAB_A" "$LAB_B"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$LAB_DIR"
}
