# Stopping a `koi daemon` started by a benchmark, shared by bench/daemon/common.sh and
# bench/certmesh/common.sh (sourced; they set DAEMON_PID when they start one).

# Every descendant pid of $1.
descendants() {
  local kids
  kids="$(ps -o pid= --ppid "$1" 2>/dev/null || true)"
  for k in $kids; do echo "$k"; descendants "$k"; done
}

# SIGTERM, up to 5 s for a clean exit, then SIGKILL for the daemon and any plugin it left behind.
daemon_down() {
  [ -n "$DAEMON_PID" ] || return 0
  local kids; kids="$(descendants "$DAEMON_PID")"
  kill -TERM "$DAEMON_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$DAEMON_PID" 2>/dev/null || true
  for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=""
}
