#!/usr/bin/env bash
# koi-proxy against nginx and Caddy (issue 13), on one machine, in one run, with the same backend,
# the same certificate and the same load generator:
#   backend   nginx serving a 1 KiB static file over plain HTTP on 127.0.0.1:18080 (1 worker);
#   nginx     TLS proxy on :18443 (2 workers, upstream keep-alive, http2 on, session cache);
#   caddy     TLS proxy on :18444 (reverse_proxy, certificate from the files, auto_https off);
#   koi       `koi daemon` with only koi-proxy (release, opt-level 3), entries on :18445.
# Certificate: one ECDSA P-256 leaf for grafana.lan and jellyfin.lan, from a test CA made by
# tests/tests/e2e/proxy/scripts/mkcert.sh, read by all three from the same files.
# Figures (wrk -t2 -c50, DUR seconds each, default 10):
#   keepalive   HTTPS keep-alive req/s and p99 latency;
#   newconn     a new TLS connection per request (`Connection: close`) req/s and p99;
#   rotation    failed requests (non-2xx + socket errors) during a 20 s keep-alive run while the
#               certificate is replaced 10 times: nginx with `nginx -s reload` after each, Caddy
#               with `caddy reload --force`, koi-proxy with nothing (its file watch);
#   idle RSS    with 2 entries, after one request to each: nginx master + workers, Caddy,
#               koi-proxy (and the koi daemon host beside it, reported separately).
# Isolation: everything runs in a network namespace made here (loopback only); `ip netns exec`
# bind-mounts /etc/netns/<ns>/hosts so grafana.lan resolves to 127.0.0.1 for wrk's SNI inside it
# only. The EXIT trap kills what runs in the namespace and deletes it, the hosts file and WORK.
# Needs root. Usage: bash bench/proxy/run.sh   (DUR=…, REL=…)  → JSON on stdout, details on stderr.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "bench/proxy needs root (network namespace)" >&2; exit 1; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REL="${REL:-$ROOT/target/release}"
DUR="${DUR:-10}"
# Install step (bench-only tools).
for tool in nginx:nginx caddy:caddy wrk:wrk openssl:openssl; do
  command -v "${tool%%:*}" > /dev/null || apt-get install -y "${tool#*:}" >&2
done
for b in koi koi-proxy; do
  [ -x "$REL/$b" ] || { echo "$REL/$b is missing: cargo build --release -p koi-host -p koi-proxy" >&2; exit 1; }
done
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
on env HOME="$WORK" XDG_DATA_HOME="$WORK/caddy-data" XDG_CONFIG_HOME="$WORK/caddy-config" \
  caddy start --config "$WORK/Caddyfile" --adapter caddyfile > "$WORK/logs/caddy.log" 2>&1

# koi daemon with koi-proxy only.
mkdir -p "$WORK/plugins"
cp "$REL/koi" "$WORK/koi"
cp "$REL/koi-proxy" "$WORK/plugins/koi-proxy"
KOI_ENV=(env -i PATH=/usr/bin:/bin HOME="$WORK" KOI_HOME="$WORK/home" KOI_PLUGIN_PATH="$WORK/plugins" KOI_REST_ENABLED=false)
on "${KOI_ENV[@]}" "$WORK/koi" daemon > "$WORK/logs/koi.log" 2>&1 &
for _ in $(seq 100); do [ -S "$WORK/home/run/koi.sock" ] && break; sleep 0.1; done
koi() { on "${KOI_ENV[@]}" "$WORK/koi" "$@"; }
koi proxy add grafana --listen 18445 --backend http://127.0.0.1:18080 --host grafana.lan --cert-host bench --json > /dev/null
koi proxy add jellyfin --listen 18445 --backend http://127.0.0.1:18080 --host jellyfin.lan --cert-host bench --json > /dev/null
for _ in $(seq 100); do on curl -sfk -o /dev/null https://grafana.lan:18445/ && break; sleep 0.1; done

declare -A PORT=([nginx]=18443 [caddy]=18444 [koi]=18445)
for s in nginx caddy koi; do
  for h in grafana jellyfin; do
    on curl -sf --cacert "$WORK/ca/ca.pem" -o /dev/null "https://$h.lan:${PORT[$s]}/" \
      || { echo "$s does not serve $h.lan" >&2; exit 1; }
  done
done

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
nginx_master=$(cat "$WORK/nginx.pid")
nginx_rss=$(( $(rss_kb "$nginx_master") + $(for p in $(pgrep -P "$nginx_master"); do rss_kb "$p"; done | paste -sd+ | bc) ))
caddy_rss=$(for p in $(ip netns pids "$NS"); do if [ "$(cat "/proc/$p/comm")" = caddy ]; then rss_kb "$p"; fi; done | head -1)
koi_status=$(koi status --json)
proxy_pid=$(jq -r '.plugins[] | select(.name == "proxy") | .supervision.pid' <<< "$koi_status")
daemon_pid=$(pgrep -f "^$WORK/koi daemon" | head -1)
proxy_rss=$(rss_kb "$proxy_pid")
daemon_rss=$(rss_kb "$daemon_pid")

wrk_run() {   # wrk_run NAME SERVER [wrk args…]
  local name=$1 server=$2; shift 2
  on wrk -t2 -c50 -d"$DUR"s --latency "$@" "https://grafana.lan:${PORT[$server]}/" > "$WORK/$name.txt" 2>&1
  cat "$WORK/$name.txt" >&2
}
for s in nginx caddy koi; do
  wrk_run "keepalive-$s" "$s"
  wrk_run "newconn-$s" "$s" -H "Connection: close"
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
rotation_run nginx on nginx -c "$WORK/nginx.conf" -p "$WORK" -s reload
rotation_run caddy on env HOME="$WORK" caddy reload --force --config "$WORK/Caddyfile" --adapter caddyfile --address "unix/$WORK/caddy-admin.sock"
rotation_run koi
last_serial=$(openssl x509 -noout -serial -in "$CERTS/cert.pem" | cut -d= -f2)
koi_serial=""
for _ in $(seq 50); do   # up to 5 s: the last swap was written ~2 s before wrk ended
  koi_serial=$(echo | on timeout 5 openssl s_client -connect 127.0.0.1:18445 -servername grafana.lan 2>/dev/null \
    | openssl x509 -noout -serial 2>/dev/null | cut -d= -f2 || true)
  [ "$koi_serial" = "$last_serial" ] && break
  sleep 0.1
done

/usr/bin/python3 - "$WORK" "$nginx_rss" "$caddy_rss" "$proxy_rss" "$daemon_rss" "$last_serial" "$koi_serial" <<'PY'
import json, re, sys
w, nginx_rss, caddy_rss, proxy_rss, daemon_rss, last, seen = sys.argv[1:8]
def parse(name):
    t = open(f"{w}/{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", t)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else None
    total = int(re.search(r"(\d+) requests in", t).group(1))
    non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", t) or [0, 0])[1])
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    return {"req_per_s": round(rps), "p99_ms": round(p99, 2) if p99 is not None else None,
            "requests": total, "failed": non2xx + errors}
out = {}
for s in ("nginx", "caddy", "koi"):
    out[s] = {"keepalive": parse(f"keepalive-{s}"), "new_connection": parse(f"newconn-{s}"),
              "rotation": parse(f"rotation-{s}")}
out["nginx"]["idle_rss_kib"] = int(nginx_rss)
out["caddy"]["idle_rss_kib"] = int(caddy_rss)
out["koi"]["idle_rss_kib"] = int(proxy_rss)
out["koi"]["daemon_host_rss_kib"] = int(daemon_rss)
out["koi"]["serves_last_serial_after_rotation"] = last == seen
print(json.dumps(out, indent=2))
PY
