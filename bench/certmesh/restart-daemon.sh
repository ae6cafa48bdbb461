#!/usr/bin/env bash
# hyperfine --prepare step for unlock.sh (runs inside the CA's namespace, KOI_HOME set): stops the
# `koi daemon` this script started last time (pid in WORK/restart.pid), starts a new one, and waits
# until its certmesh plugin serves the API again — so the next `koi certmesh unlock` finds the CA
# locked. Usage: restart-daemon.sh WORK KOI API_ADDR:PORT
set -euo pipefail
work="$1"; koi="$2"; api="$3"
if [ -s "$work/restart.pid" ]; then
  pid="$(cat "$work/restart.pid")"
  kids="$(ps -o pid= --ppid "$pid" 2>/dev/null || true)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$pid" $kids 2>/dev/null || true
fi
rm -f "$KOI_HOME/run/koi.sock"
"$koi" daemon > "$work/restart-daemon.log" 2>&1 < /dev/null &
echo $! > "$work/restart.pid"
disown
for _ in $(seq 200); do
  curl -sfk -o /dev/null "https://$api/v1/certmesh/health" && exit 0
  sleep 0.05
done
cat "$work/restart-daemon.log" >&2
echo "restart-daemon.sh: the certmesh API never answered" >&2
exit 1
