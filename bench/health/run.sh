#!/usr/bin/env bash
# koi-health benchmarks (issue 14); the results are in docs/benchmarks.md, "koi-health (issue 14)".
#   load     CHECKS (default 1000) HTTP checks every 10 s against a loopback nginx (`return 200`),
#            after a WARMUP (default 30 s): CPU % of one core (utime+stime from /proc over WINDOW s,
#            default 60) and RSS of koi-health and of the koi daemon; then monit (Debian's) running
#            the same checks (`set daemon 10`, one `check host … if failed port … protocol http
#            request …` per check), measured the same way, with nginx alone as the floor.
#   status   `koi health state --json` answered by the daemon holding those checks (hyperfine;
#            the whole `koi` command, process start included; nothing is re-run).
#   latency  machine killed → down (latency.sh): two namespaces, RUNS kills.
# Isolation: a temp directory holds a COPY of the release `koi` (so the plugins beside
# target/release/koi are not discovered) and a plugin directory with koi-health only; koi gets its
# own KOI_HOME, the REST API off, PATH=/usr/bin:/bin. No koi-mdns here, so nothing is multicast;
# every check goes to 127.0.0.1. The EXIT trap stops what was started here, by pid.
# Usage: bash bench/health/run.sh   (CHECKS=…, WINDOW=…, WARMUP=…, REL=…)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REL="${REL:-$ROOT/target/release}"
for b in koi koi-health; do
  [ -x "$REL/$b" ] || { echo "$REL/$b is missing: cargo build --release -p koi-host -p koi-health" >&2; exit 1; }
done
# Bench-only tools (not needed by the tests): installed here when missing.
if ! command -v nginx monit hyperfine jq curl bc > /dev/null; then
  apt-get install -y --no-install-recommends nginx-light monit hyperfine jq curl bc >&2
fi
CHECKS="${CHECKS:-1000}"; WINDOW="${WINDOW:-60}"; WARMUP="${WARMUP:-30}"
WORK="$(mktemp -d /tmp/koi-health-bench.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/plugins" "$WORK/home" "$WORK/nginx"
cp "$REL/koi" "$WORK/koi"
cp "$REL/koi-health" "$WORK/plugins/koi-health"
KOI=(env -i PATH=/usr/bin:/bin HOME="$WORK" KOI_HOME="$WORK/home" KOI_PLUGIN_PATH="$WORK/plugins" KOI_REST_ENABLED=false "$WORK/koi")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TICK=$(getconf CLK_TCK)

cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$PORT; location / { return 200 "ok\n"; } }
}
CONF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
PIDS+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/" > /dev/null && break; sleep 0.05; done

# cpu_rss PID...: "cpu% rss_kib" summed over the pids, over WINDOW seconds.
ticks() { local t=0; for p in "$@"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") )); done; echo "$t"; }
rss() { local r=0; for p in "$@"; do r=$(( r + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status") )); done; echo "$r"; }
cpu_rss() {
  local t0 t1; t0=$(ticks "$@"); local start; start=$(date +%s.%N)
  sleep "$WINDOW"
  t1=$(ticks "$@"); local secs; secs=$(echo "$(date +%s.%N) - $start" | bc)
  echo "$(echo "scale=2; 100 * ($t1 - $t0) / $TICK / $secs" | bc) $(rss "$@")"
}

# --- koi-health ---
"${KOI[@]}" daemon > "$WORK/daemon.log" 2>&1 &
DAEMON=$!; PIDS+=("$DAEMON")
for _ in $(seq 200); do [ -S "$WORK/home/run/koi.sock" ] && break; sleep 0.05; done
sleep 1
for i in $(seq "$CHECKS"); do
  "${KOI[@]}" health add "c$i" --http "http://127.0.0.1:$PORT/c/$i" --interval 10s --timeout 5s > /dev/null
done
HEALTH=$("${KOI[@]}" status --json | jq -r '.plugins[] | select(.name == "health") | .supervision.pid')
sleep "$WARMUP"
read -r koi_cpu koi_rss < <(cpu_rss "$HEALTH")
read -r host_cpu host_rss < <(cpu_rss "$DAEMON")
up=$("${KOI[@]}" health state --json | jq '[.services[] | select(.state == "up")] | length')
hyperfine -N --warmup 3 --runs 30 --export-json "$WORK/status.json" \
  -n "koi health state (${CHECKS} checks)" "${KOI[*]} health state --json" >&2
status_ms=$(jq '.results[0].mean * 1000 | . * 10 | round / 10' "$WORK/status.json")
status_max=$(jq '.results[0].max * 1000 | . * 10 | round / 10' "$WORK/status.json")
kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true

# --- monit, the same checks ---
{
  echo "set daemon 10"
  echo "set logfile $WORK/monit.log"
  echo "set idfile $WORK/monit.id"
  echo "set statefile $WORK/monit.state"
  echo "set pidfile $WORK/monit.pid"
  for i in $(seq "$CHECKS"); do
    echo "check host c$i with address 127.0.0.1"
    echo "  if failed port $PORT protocol http request \"/c/$i\" with timeout 5 seconds then alert"
  done
} > "$WORK/monitrc"
chmod 600 "$WORK/monitrc"
monit -c "$WORK/monitrc" -I > /dev/null 2>&1 &
MONIT=$!; PIDS+=("$MONIT")
sleep "$WARMUP"
read -r monit_cpu monit_rss < <(cpu_rss "$MONIT")
NGINX_WORKERS=$(pgrep -P "$(cat "$WORK/nginx/nginx.pid")" | tr '\n' ' ')
read -r nginx_cpu _ < <(cpu_rss $NGINX_WORKERS)
kill "$MONIT"; wait "$MONIT" 2>/dev/null || true

cat <<OUT
checks: $CHECKS HTTP every 10 s, loopback nginx; window ${WINDOW}s after ${WARMUP}s warm-up
koi-health: ${koi_cpu}% of one core, RSS ${koi_rss} KiB (checks up: $up)
koi daemon (host): ${host_cpu}% of one core, RSS ${host_rss} KiB
monit:      ${monit_cpu}% of one core, RSS ${monit_rss} KiB
nginx worker while monit ran: ${nginx_cpu}%
koi health state --json: mean ${status_ms} ms, max ${status_max} ms (hyperfine, 30 runs)
OUT
