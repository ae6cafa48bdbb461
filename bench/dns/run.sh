#!/usr/bin/env bash
# koi-dns benchmarks (issue 12), koi-dns vs dnsmasq vs Unbound in one run, on loopback only:
# the same 1000 local names (host0001.lan … host1000.lan) served by each, high ports on
# 127.0.0.1 (nothing binds 53, no packet leaves the machine), Unbound with 2 threads, koi-dns with
# 2 workers and the rate limit off. Measures
#   1. local-zone qps: dnsperf, SECS per server, 2 client threads, 200 outstanding;
#   2. local-zone latency p50/p99 at a fixed 10k qps (dnsperf -v, every query's latency);
#   3. forwarding overhead: p50 of names outside the zone through koi-dns (upstream: the Unbound
#      instance) minus p50 of the same names asked of Unbound directly, at 2k qps;
#   4. idle RSS with the 1000 names loaded.
# ROUNDS (default 3) rounds interleave the servers; qps is the median, latencies pool all rounds.
# Usage: sudo bench/dns/run.sh [SECS]   (default 10; builds koi and koi-dns in release first)
set -euo pipefail
SECS="${1:-10}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
command -v dnsperf >/dev/null || apt-get install -y dnsperf
command -v dnsmasq >/dev/null || apt-get install -y dnsmasq-base
command -v unbound >/dev/null || apt-get install -y unbound
(cd "$root" && cargo build --release -q -p koi-host -p koi-dns)
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d /tmp/koi-dns-bench.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
KOI=5301 DNSMASQ=5302 UNBOUND=5303

# The 1000 names, in each server's format.
python3 - "$work" <<'PY'
import json, sys, os
w = sys.argv[1]
names = [(f"host{i:04d}", f"10.1.{i // 250}.{i % 250 + 1}") for i in range(1, 1001)]
os.makedirs(f"{w}/home/dns", mode=0o700)
json.dump({"version": 1, "data": {"entries": {n: [ip] for n, ip in names}}}, open(f"{w}/home/dns/static.json", "w"))
open(f"{w}/hosts", "w").write("".join(f"{ip} {n}.lan\n" for n, ip in names))
open(f"{w}/unbound-local.conf", "w").write("".join(f'  local-data: "{n}.lan. 300 IN A {ip}"\n' for n, ip in names))
open(f"{w}/local.txt", "w").write("".join(f"{n}.lan A\n" for n, _ in names))
open(f"{w}/remote.txt", "w").write("".join(f"{n}.example.test A\n" for n, _ in names))
PY
cat > "$work/unbound.conf" <<CONF
server:
  interface: 127.0.0.1@$UNBOUND
  num-threads: 2
  so-reuseport: yes
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "$work"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  local-zone: "lan." static
  local-zone: "example.test." static
  local-data: "example.test. 300 IN SOA ns.example.test. h.example.test. 1 3600 600 86400 30"
$(cat "$work/unbound-local.conf")
$(sed 's/\.lan A$//; s/.*/  local-data: "&.example.test. 300 IN A 10.9.0.1"/' "$work/local.txt")
remote-control:
  control-enable: no
CONF
unbound -d -c "$work/unbound.conf" >"$work/unbound.log" 2>&1 & pids+=($!)
dnsmasq --no-daemon --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 --port=$DNSMASQ \
  --addn-hosts="$work/hosts" --local=/lan/ --pid-file= --log-facility=- >"$work/dnsmasq.log" 2>&1 & pids+=($!)
mkdir -p "$work/plugins" && ln -s "$bin/koi-dns" "$work/plugins/koi-dns"
KOI_HOME="$work/home" KOI_PLUGIN_PATH="$work/plugins" "$bin/koi" dns serve --listen 127.0.0.1:$KOI \
  --upstream 127.0.0.1:$UNBOUND --rate-limit 0 --workers 2 >"$work/koi.log" 2>&1 & pids+=($!)
for port in $KOI $DNSMASQ $UNBOUND; do
  for _ in $(seq 100); do dig +short +tries=1 +time=1 @127.0.0.1 -p $port host0001.lan | grep -q 10.1 && break; sleep 0.1; done
done

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
koi_pid="$(pgrep -n -f "^$bin/koi-dns|/plugins/koi-dns" || true)"
dnsmasq_pid="$(pgrep -n -x dnsmasq)"
unbound_pid="$(pgrep -n -x unbound)"

ROUNDS="${ROUNDS:-3}"
qps() { dnsperf -s 127.0.0.1 -p "$1" -d "$work/local.txt" -l "$SECS" -T 2 -c 4 -q 200 2>/dev/null | awk '/Queries per second/ {print int($4)}'; }
# Every query's latency (seconds) from dnsperf -v at a fixed rate, into file $4 (processed later,
# so no parser competes with the servers for the CPU).
lat() { dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$SECS" -Q "$3" -v 2>/dev/null | awk '$1 == ">" {print $NF}' > "$4"; }
# p50 and p99 in ms of the latency files given.
pct() { cat "$@" | sort -g | awk '{a[NR]=$1} END {if (NR) printf "%.3f %.3f\n", a[int(NR*0.5)+1]*1000, a[int(NR*0.99)]*1000}'; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A Q IDLE
servers="koi-dns:$KOI dnsmasq:$DNSMASQ unbound:$UNBOUND"
for s in $servers; do IFS=: read -r name port <<<"$s"; Q[$name]=""; done
IDLE[koi-dns]="$(rss "$koi_pid")"; IDLE[dnsmasq]="$(rss "$dnsmasq_pid")"; IDLE[unbound]="$(rss "$unbound_pid")"
# Rounds interleave the servers, so a burst of load from elsewhere hits them alike; medians.
for r in $(seq "$ROUNDS"); do
  for s in $servers; do
    IFS=: read -r name port <<<"$s"
    Q[$name]="${Q[$name]} $(qps "$port")"
    lat "$port" "$work/local.txt" 10000 "$work/lat-$name-$r"
  done
  lat $UNBOUND "$work/remote.txt" 2000 "$work/fwd-direct-$r"
  lat $KOI "$work/remote.txt" 2000 "$work/fwd-koi-$r"
done

echo "| server | local-zone qps (median of $ROUNDS × ${SECS} s) | p50 ms @10k qps | p99 ms @10k qps | idle RSS KiB, 1000 names |"
echo "|---|---|---|---|---|"
for s in $servers; do
  IFS=: read -r name port <<<"$s"
  read -r p50 p99 <<<"$(pct "$work"/lat-"$name"-*)"
  echo "| $name | $(echo "${Q[$name]}" | median) (runs:${Q[$name]}) | $p50 | $p99 | ${IDLE[$name]} |"
done
read -r d50 _ <<<"$(pct "$work"/fwd-direct-*)"
read -r f50 _ <<<"$(pct "$work"/fwd-koi-*)"
echo
echo "forwarding @2k qps, names outside the zone: Unbound asked directly p50 ${d50} ms, through koi-dns p50 ${f50} ms, overhead $(python3 -c "print(f'{$f50 - $d50:.3f}')") ms"
echo "load average during the run: $(cut -d' ' -f1-3 /proc/loadavg)"
