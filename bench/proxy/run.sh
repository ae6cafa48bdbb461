#!/usr/bin/env bash
# koi-proxy against nginx and Caddy (issue 13), on one machine, in one run, with the same backend,
# the same certificate and the same load generator:
#   backend   nginx serving a 1 KiB static file over plain HTTP on 127.0.0.1:18080 (1 worker);
#   nginx     TLS proxy on :18443 (2 workers, upstream keep-alive, http2 on, session cache, and
#             the server's cipher order AES-128-GCM first, as Caddy and koi-proxy have it);
#   caddy     TLS proxy on :18444 (reverse_proxy, certificate from the files, auto_https off);
#   koi       `koi daemon` with only koi-proxy (release, opt-level 3), entries on :18445;
#   koib      (only with KOI_B=path/to/another/koi-proxy) a second koi daemon running that binary
#             on :18446, for A/B runs of two koi-proxy builds in the same namespace and round.
# Certificate: one ECDSA P-256 leaf for grafana.lan and jellyfin.lan, from a test CA made by
# tests/tests/e2e/proxy/scripts/mkcert.sh, read by all from the same files.
# Figures (wrk -t2 -c50, DUR seconds each, default 10), in RUNS rounds (default 3), each round
# running every server in turn (the order rotates by one each round), medians printed:
#   keepalive   HTTPS keep-alive req/s, p99 latency and CPU per request;
#   newconn     a new TLS connection per request (`Connection: close`): the same three figures;
#   cpu/req     utime + stime (/proc/<pid>/stat) of the proxy's processes over the wrk run, divided
#               by the requests wrk completed: nginx's master and workers (not the backend),
#               Caddy's process, koi-proxy's process. The koi daemon host is measured apart
#               (`host_cpu_us_per_req`): it relays no traffic, so it should stay near 0. On a
#               shared machine req/s swings with the neighbours while CPU per request hardly
#               moves: it says which proxy does less work per request;
#   rotation    (once, after the rounds; ROTATION=0 skips it) failed requests (non-2xx + socket
#               errors) during a 20 s keep-alive run while the certificate is replaced 10 times:
#               nginx with `nginx -s reload` after each, Caddy with `caddy reload --force`,
#               koi-proxy with nothing (its file watch);
#   idle RSS    with 2 entries, after one request to each: nginx master + workers, Caddy,
#               koi-proxy (and the koi daemon host beside it, reported separately);
#   tls         what `openssl s_client -brief` negotiates with each (protocol, cipher suite, key
#               exchange group, signature): all must match for the handshake figures to compare.
#               wrk's OpenSSL asks for AES-256-GCM-SHA384 first; browsers ask for
#               AES-128-GCM-SHA256 first, and all three proxies choose it by their own order.
# Scheduling: every server runs in a session of its own, as nginx puts itself when it daemonizes;
# Caddy and koi are started under `setsid`. With the kernel's autogroup scheduling
# (/proc/sys/kernel/sched_autogroup_enabled) a session is a scheduling group that gets an equal
# share of the CPUs: started from this script, Caddy and koi shared wrk's group and got about half
# the CPU nginx got during their runs (and koi's keep-alive figure swung between 32k and 50k req/s).
# Isolation: everything runs in a network namespace made here (loopback only); `ip netns exec`
# bind-mounts /etc/netns/<ns>/hosts so grafana.lan resolves to 127.0.0.1 for wrk's SNI inside it
# only. The EXIT trap kills what runs in the namespace and deletes it, the hosts file and WORK.
# Needs root. Usage: bash bench/proxy/run.sh   (DUR=…, RUNS=…, REL=…, SERVERS="nginx caddy koi",
# KOI_B=…, ROTATION=0)  → JSON on stdout, wrk outputs and a summary table on stderr.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "bench/proxy needs root (network namespace)" >&2; exit 1; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REL="${REL:-$ROOT/target/release}"
DUR="${DUR:-10}"
RUNS="${RUNS:-3}"
ROTATION="${ROTATION:-1}"
KOI_B="${KOI_B:-}"
read -r -a SERVERS <<< "${SERVERS:-nginx caddy koi}"
[ -n "$KOI_B" ] && SERVERS+=(koib)
# Install step (bench-only tools).
for tool in nginx:nginx caddy:caddy wrk:wrk openssl:openssl; do
  command -v "${tool%%:*}" > /dev/null || apt-get install -y "${tool#*:}" >&2
done
for b in koi koi-proxy; do
  [ -x "$REL/$b" ] || { echo "$REL/$b is missing: cargo build --release -p koi-host -p koi-proxy" >&2; exit 1; }
done
[ -z "$KOI_B" ] || [ -x "$KOI_B" ] || { echo "KOI_B=$KOI_B is not an executable koi-proxy" >&2; exit 1; }
NS="koi-pxbench-$$"
WORK="$(mktemp -d /tmp/koi-proxy-bench.XXXXXX)"
chmod 755 "$WORK"
cleanup() {
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "/etc/netns/$NS" "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
mkdir -p "/etc/netns/$NS"
printf '127.0.0.1 localhost grafana.lan jellyfin.lan\n' > "/etc/netns/$NS/hosts"
on() { ip netns exec "$NS" "$@"; }

CERTS="$WORK/home/certs/bench"
rotate() { sh "$ROOT/tests/tests/e2e/proxy/scripts/mkcert.sh" "$CERTS" "$WORK/ca" grafana.lan jellyfin.lan; }
rotate

# The backend: nginx, static 1 KiB.
mkdir -p "$WORK/www" "$WORK/logs"
head -c 768 /dev/urandom | base64 -w0 | head -c 1024 > "$WORK/www/index.html"
cat > "$WORK/backend.conf" <<CONF
worker_processes 1;
pid $WORK/backend.pid;
error_log $WORK/logs/backend.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:18080; root $WORK/www; keepalive_requests 100000; }
}
CONF
on nginx -c "$WORK/backend.conf" -p "$WORK"

# nginx as the TLS proxy.
cat > "$WORK/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/logs/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:18080; keepalive 64; }
  ssl_certificate $CERTS/fullchain.pem;
  ssl_certificate_key $CERTS/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_prefer_server_ciphers on;
  ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
  server {
    listen 18443 ssl http2; server_name grafana.lan jellyfin.lan;
    keepalive_requests 100000;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
on nginx -c "$WORK/nginx.conf" -p "$WORK"

# Caddy as the TLS proxy.
cat > "$WORK/Caddyfile" <<CONF
{
  admin unix/$WORK/caddy-admin.sock
  auto_https off
  storage file_system $WORK/caddy-data
}
https://grafana.lan:18444, https://jellyfin.lan:18444 {
  tls $CERTS/fullchain.pem $CERTS/key.pem
  reverse_proxy 127.0.0.1:18080
}
CONF
on setsid env HOME="$WORK" XDG_DATA_HOME="$WORK/caddy-data" XDG_CONFIG_HOME="$WORK/caddy-config" \
  caddy start --config "$WORK/Caddyfile" --adapter caddyfile > "$WORK/logs/caddy.log" 2>&1

# koi daemon with koi-proxy only (and a second one with KOI_B's binary).
cp "$REL/koi" "$WORK/koi"
koi_env() { echo env -i PATH=/usr/bin:/bin HOME="$WORK" KOI_HOME="$WORK/$1" KOI_PLUGIN_PATH="$WORK/plugins-$1" KOI_REST_ENABLED=false; }
start_koi() {   # start_koi HOME-NAME PROXY-BINARY PORT
  local home=$1 bin=$2 port=$3
  mkdir -p "$WORK/plugins-$home" "$WORK/$home/certs"
  cp "$bin" "$WORK/plugins-$home/koi-proxy"
  [ "$home" = home ] || cp -r "$CERTS" "$WORK/$home/certs/bench"
  # shellcheck disable=SC2046
  on $(koi_env "$home") setsid "$WORK/koi" daemon > "$WORK/logs/koi-$home.log" 2>&1 &
  for _ in $(seq 100); do [ -S "$WORK/$home/run/koi.sock" ] && break; sleep 0.1; done
  for e in grafana jellyfin; do
    # shellcheck disable=SC2046
    on $(koi_env "$home") "$WORK/koi" proxy add "$e" --listen "$port" --backend http://127.0.0.1:18080 \
      --host "$e.lan" --cert-host bench --json > /dev/null
  done
  for _ in $(seq 100); do on curl -sfk -o /dev/null "https://grafana.lan:$port/" && break; sleep 0.1; done
}
start_koi home "$REL/koi-proxy" 18445
[ -z "$KOI_B" ] || start_koi homeb "$KOI_B" 18446
declare -A PORT=([nginx]=18443 [caddy]=18444 [koi]=18445 [koib]=18446)
for s in "${SERVERS[@]}"; do
  for h in grafana jellyfin; do
    on curl -sf --cacert "$WORK/ca/ca.pem" -o /dev/null "https://$h.lan:${PORT[$s]}/" \
      || { echo "$s does not serve $h.lan" >&2; exit 1; }
  done
done

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
nginx_master=$(cat "$WORK/nginx.pid")
nginx_rss=$(( $(rss_kb "$nginx_master") + $(for p in $(pgrep -P "$nginx_master"); do rss_kb "$p"; done | paste -sd+ | bc) ))
caddy_rss=$(for p in $(ip netns pids "$NS"); do if [ "$(cat "/proc/$p/comm")" = caddy ]; then rss_kb "$p"; fi; done | head -1)
plugin_pid() {   # plugin_pid HOME-NAME → koi-proxy's pid under that koi daemon
  # shellcheck disable=SC2046
  on $(koi_env "$1") "$WORK/koi" status --json | jq -r '.plugins[] | select(.name == "proxy") | .supervision.pid'
}
proxy_pid=$(plugin_pid home)
parent() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $2}'; }   # the koi daemon that runs a plugin
daemon_pid=$(parent "$proxy_pid")
proxy_rss=$(rss_kb "$proxy_pid")
daemon_rss=$(rss_kb "$daemon_pid")
caddy_pid=$(for p in $(ip netns pids "$NS"); do if [ "$(cat "/proc/$p/comm")" = caddy ]; then echo "$p"; fi; done | head -1)
declare -A HOST_PID=([koi]="$daemon_pid")
declare -A PROXY_PID=([koi]="$proxy_pid" [caddy]="$caddy_pid")
if [ -n "$KOI_B" ]; then
  PROXY_PID[koib]=$(plugin_pid homeb)
  HOST_PID[koib]=$(parent "${PROXY_PID[koib]}")
fi

# CPU ticks (utime + stime, fields 14 and 15 of /proc/<pid>/stat, after the command name) of a
# server's proxy processes; nginx's are its master and workers, looked up each time (a reload
# replaces the workers, and the rotation run comes after the measured runs).
ticks() { for p in "$@"; do [ -r "/proc/$p/stat" ] && sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}'; done | paste -sd+ | bc; }
proxy_pids() {
  if [ "$1" = nginx ]; then
    local m; m=$(cat "$WORK/nginx.pid"); echo "$m" $(pgrep -P "$m")
  else
    echo "${PROXY_PID[$1]}"
  fi
}
host_ticks() { if [ -n "${HOST_PID[$1]:-}" ]; then ticks "${HOST_PID[$1]}"; else echo 0; fi; }

wrk_run() {   # wrk_run NAME SERVER [wrk args…]  → NAME.txt (wrk) and NAME.cpu (proxy and host ticks)
  local name=$1 server=$2; shift 2
  local p0 h0 p1 h1
  # shellcheck disable=SC2046
  p0=$(ticks $(proxy_pids "$server")); h0=$(host_ticks "$server")
  on wrk -t2 -c50 -d"$DUR"s --latency "$@" "https://grafana.lan:${PORT[$server]}/" > "$WORK/$name.txt" 2>&1
  # shellcheck disable=SC2046
  p1=$(ticks $(proxy_pids "$server")); h1=$(host_ticks "$server")
  echo "$((p1 - p0)) $((h1 - h0)) $(getconf CLK_TCK)" > "$WORK/$name.cpu"
  { echo "== $name (load average: $(cut -d' ' -f1-3 /proc/loadavg))"; cat "$WORK/$name.txt"; } >&2
}
order=("${SERVERS[@]}")
for round in $(seq "$RUNS"); do
  echo "$round $(cut -d' ' -f1-3 /proc/loadavg)" >> "$WORK/rounds.txt"
  for s in "${order[@]}"; do wrk_run "keepalive-$s-$round" "$s"; done
  for s in "${order[@]}"; do wrk_run "newconn-$s-$round" "$s" -H "Connection: close"; done
  order=("${order[@]:1}" "${order[0]}")
done

# What each negotiates with a default OpenSSL client (wrk's library).
for s in "${SERVERS[@]}"; do
  echo | on openssl s_client -brief -connect "127.0.0.1:${PORT[$s]}" -servername grafana.lan 2>&1 \
    | grep -E '^(Protocol version|Ciphersuite|Signature type|Hash used|Server Temp Key)' \
    > "$WORK/tls-$s.txt" || true
done

rotation_run() {   # rotation_run SERVER RELOAD-COMMAND…
  local server=$1; shift
  on wrk -t2 -c50 -d20s --latency "https://grafana.lan:${PORT[$server]}/" > "$WORK/rotation-$server.txt" 2>&1 &
  local wrk_pid=$!
  for i in $(seq 10); do
    sleep 1.8
    rotate
    if [ "$#" -gt 0 ]; then "$@" >> "$WORK/logs/reload.log" 2>&1; fi
  done
  wait "$wrk_pid"
  cat "$WORK/rotation-$server.txt" >&2
}
if [ "$ROTATION" != 0 ]; then
  for s in "${SERVERS[@]}"; do
    case $s in
      nginx) rotation_run nginx on nginx -c "$WORK/nginx.conf" -p "$WORK" -s reload ;;
      caddy) rotation_run caddy on env HOME="$WORK" caddy reload --force --config "$WORK/Caddyfile" --adapter caddyfile --address "unix/$WORK/caddy-admin.sock" ;;
      koi) rotation_run koi ;;
    esac
  done
fi
last_serial=""
koi_serial=""
if [ "$ROTATION" != 0 ]; then
  last_serial=$(openssl x509 -noout -serial -in "$CERTS/cert.pem" | cut -d= -f2)
  for _ in $(seq 50); do   # up to 5 s: the last swap was written ~2 s before wrk ended
    koi_serial=$(echo | on timeout 5 openssl s_client -connect 127.0.0.1:18445 -servername grafana.lan 2>/dev/null \
      | openssl x509 -noout -serial 2>/dev/null | cut -d= -f2 || true)
    [ "$koi_serial" = "$last_serial" ] && break
    sleep 0.1
  done
fi

/usr/bin/python3 - "$WORK" "$RUNS" "$ROTATION" "${SERVERS[*]}" "$nginx_rss" "$caddy_rss" "$proxy_rss" "$daemon_rss" "$last_serial" "$koi_serial" <<'PY'
import json, os, re, statistics, sys
w, runs, rotation, servers, nginx_rss, caddy_rss, proxy_rss, daemon_rss, last, seen = sys.argv[1:11]
runs, servers = int(runs), servers.split()
def parse(name):
    t = open(f"{w}/{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", t)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else None
    total = int(re.search(r"(\d+) requests in", t).group(1))
    non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", t) or [0, 0])[1])
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    out = {"req_per_s": round(rps), "p99_ms": round(p99, 2) if p99 is not None else None,
           "requests": total, "failed": non2xx + errors}
    if os.path.exists(f"{w}/{name}.cpu"):
        proxy, host, hz = (int(x) for x in open(f"{w}/{name}.cpu").read().split())
        out["cpu_us_per_req"] = round(proxy * 1e6 / hz / max(total, 1), 1)
        if name.split("-")[1].startswith("koi"):
            out["host_cpu_us_per_req"] = round(host * 1e6 / hz / max(total, 1), 2)
    return out
def median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(vals), 2) if vals else None
loads = [l.split(None, 1)[1].strip() for l in open(f"{w}/rounds.txt")]
out = {"rounds": runs, "load_average_per_round": loads}
for s in servers:
    out[s] = {}
    for kind, prefix in (("keepalive", "keepalive"), ("new_connection", "newconn")):
        rows = [parse(f"{prefix}-{s}-{r}") for r in range(1, runs + 1)]
        keys = ["req_per_s", "p99_ms", "cpu_us_per_req"] + (["host_cpu_us_per_req"] if s.startswith("koi") else [])
        out[s][kind] = {"runs": rows, "median": {k: median(rows, k) for k in keys}}
    out[s]["tls"] = open(f"{w}/tls-{s}.txt").read().strip().splitlines()
    if rotation != "0" and s in ("nginx", "caddy", "koi"):
        out[s]["rotation"] = parse(f"rotation-{s}")
rss = {"nginx": nginx_rss, "caddy": caddy_rss, "koi": proxy_rss}
for s in servers:
    if s in rss:
        out[s]["idle_rss_kib"] = int(rss[s])
if "koi" in servers:
    out["koi"]["daemon_host_rss_kib"] = int(daemon_rss)
    if rotation != "0":
        out["koi"]["serves_last_serial_after_rotation"] = last == seen
print(json.dumps(out, indent=2))
# The summary: medians over the rounds.
print(f"\nmedians of {runs} rounds (load average per round: {'; '.join(loads)})", file=sys.stderr)
print(f"{'server':8} {'keep-alive req/s':>16} {'p99 ms':>7} {'cpu µs/req':>10}   {'new-conn req/s':>14} {'p99 ms':>7} {'cpu µs/req':>10}", file=sys.stderr)
for s in servers:
    k, n = out[s]["keepalive"]["median"], out[s]["new_connection"]["median"]
    print(f"{s:8} {k['req_per_s']:>16} {k['p99_ms']:>7} {k['cpu_us_per_req']:>10}   {n['req_per_s']:>14} {n['p99_ms']:>7} {n['cpu_us_per_req']:>10}", file=sys.stderr)
PY
