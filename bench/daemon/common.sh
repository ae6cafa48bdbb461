#!/usr/bin/env bash
# Shared set-up for the `koi daemon` benchmarks, sourced by forward.sh, rest.sh and rss.sh: a temp
# directory holding a COPY of the release `koi` (so the plugins next to target/release/koi — koi-mdns
# among them — are never discovered) and only the plugins asked for in KOI_PLUGIN_PATH, its own
# KOI_HOME, PATH=/usr/bin:/bin, and a REST port picked free on loopback. `daemon_up` starts the
# daemon and waits for its socket; the EXIT trap stops every process started here, by pid, and
# deletes the temp directory. Nothing here sends anything but loopback traffic.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
REL="${REL:-$ROOT/target/release}"
WORK="$(mktemp -d /tmp/koi-daemon-bench.XXXXXX)"
DAEMON_PID=""
# shellcheck source=../daemon-process.sh
source "$(dirname "${BASH_SOURCE[0]}")/../daemon-process.sh"
mkdir -p "$WORK/plugins" "$WORK/home"
cp "$REL/koi" "$WORK/koi"
cp "$REL/examples/koi-hello" "$WORK/plugins/koi-hello"
export KOI_HOME="$WORK/home" KOI_PLUGIN_PATH="$WORK/plugins" PATH=/usr/bin:/bin HOME="$WORK/home"
KOI="$WORK/koi"
HYPERFINE="${HYPERFINE:-$( [ -x /opt/hyperfine/bin/hyperfine ] && echo /opt/hyperfine/bin/hyperfine || echo hyperfine )}"

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Sum of VmRSS (kB) over $1 and its descendants; prints "total_kb" and, on stderr, one line each.
rss_tree_kb() {
  local total=0 pid kb comm
  for pid in "$1" $(descendants "$1"); do
    kb="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || echo '?')"
    echo "  pid $pid $comm: ${kb} kB" >&2
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

# Starts `koi daemon` (optionally prefixed by a command such as `ip netns exec NS`) with REST on
# 127.0.0.1:$REST_PORT, waits until the control socket exists and every plugin is up.
daemon_up() {
  REST_PORT="${REST_PORT:-$(free_port)}"
  KOI_REST_BIND="127.0.0.1:$REST_PORT" "$@" "$KOI" daemon > "$WORK/daemon.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 200); do [ -S "$KOI_HOME/run/koi.sock" ] && break; sleep 0.05; done
  [ -S "$KOI_HOME/run/koi.sock" ] || { cat "$WORK/daemon.log" >&2; echo "koi daemon did not start" >&2; exit 1; }
  # The daemon refuses a forwarded command until the plugin's first handshake (it does not wait),
  # so retry until `koi hello greet Ada` answers through it.
  for _ in $(seq 100); do "$@" "$KOI" hello greet Ada > /dev/null 2>&1 && return 0; sleep 0.1; done
  cat "$WORK/daemon.log" >&2; echo "koi daemon never answered koi hello greet" >&2; exit 1
}

cleanup() {
  daemon_down
  if declare -F extra_cleanup > /dev/null; then extra_cleanup; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
