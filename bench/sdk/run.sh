#!/usr/bin/env bash
# The SDK issue's three measurements (issue 15, docs/benchmarks.md "SDK (issue 15)"), one table:
#  1. kept-alive round trip: `rpc-bench koi-hello hello CALLS`, RUNS times (median, p90, p99 each);
#     the same runs give koi-hello's RSS after the handshake and 100 calls (one-shot mode) and the
#     publisher's own ceiling (20 000 `publish` events to a host that answers at once, no bus);
#  2. koi-hello's RSS under a daemon: VmRSS from /proc after the handshake and 100 forwarded
#     `koi hello greet` calls;
#  3. event delivery through the daemon to one subscriber: `koi hello publish --count EVENTS
#     --size 1024` forwarded to a daemon running koi-hello and koi-benchsub (bench-subscriber),
#     RUNS times; the publisher's rate (EVENTS / the publish call's wall time), the rate the
#     subscriber received them (first to last event), out-of-order and dropped events (the
#     subscriber's count and the daemon's own `dropped` counter).
# Daemons run from a temp directory holding a copy of `koi` and only koi-hello and koi-benchsub,
# with their own KOI_HOME (bench/daemon/common.sh): koi-mdns is never started, nothing leaves
# loopback. Build first: cargo build --release -p koi-host --bins -p koi-sdk --examples -p koi-bench
# Usage: bash bench/sdk/run.sh   (env: REL=target/release RUNS=3 CALLS=20000 EVENTS=100000
#        SIZE=1024 PARALLEL=1 — PARALLEL>1 runs that many publish calls at once, a probe of the
#        bus and subscriber beyond one sequential publisher; out-of-order is then meaningless)
source "$(dirname "$0")/../daemon/common.sh"
RUNS="${RUNS:-3}"
CALLS="${CALLS:-20000}"
EVENTS="${EVENTS:-100000}"
SIZE="${SIZE:-1024}"
PARALLEL="${PARALLEL:-1}"
for f in "$REL/rpc-bench" "$REL/bench-subscriber"; do
  [ -x "$f" ] || { echo "$f is missing: cargo build --release -p koi-bench" >&2; exit 1; }
done
OUT="$WORK/out"
mkdir -p "$OUT"

echo "== round trip (rpc-bench, $RUNS runs of $CALLS calls)" >&2
for i in $(seq "$RUNS"); do
  "$REL/rpc-bench" "$REL/examples/koi-hello" hello "$CALLS" > "$OUT/rpc-$i.json"
done

echo "== daemon: koi-hello + koi-benchsub" >&2
cp "$REL/bench-subscriber" "$WORK/plugins/koi-benchsub"
daemon_up
# daemon_up waited for koi-hello; wait for the subscriber's handshake too.
for _ in $(seq 100); do "$KOI" benchsub reset > /dev/null 2>&1 && break; sleep 0.1; done
"$KOI" benchsub reset > /dev/null
for _ in $(seq 100); do "$KOI" hello greet Ada > /dev/null; done
hello_pid="$(pgrep -P "$DAEMON_PID" -x koi-hello | head -n1)"
[ -n "$hello_pid" ] || { echo "no koi-hello child of the daemon (pid $DAEMON_PID)" >&2; exit 1; }
awk '/^VmRSS:/ {print $2}' "/proc/$hello_pid/status" > "$OUT/daemon-hello-rss-kib"
sub_pid="$(pgrep -P "$DAEMON_PID" -x koi-benchsub | head -n1)"
awk '/^VmRSS:/ {print $2}' "/proc/$sub_pid/status" > "$OUT/daemon-sub-rss-kib"

now_ns() { date +%s%N; }
# utime and stime (clock ticks) of the daemon, koi-hello and koi-benchsub, on one line.
cpu_ticks() {
  for pid in "$DAEMON_PID" "$hello_pid" "$sub_pid"; do awk '{printf "%d %d ", $14, $15}' "/proc/$pid/stat"; done
  echo
}
for i in $(seq "$RUNS"); do
  echo "== events: run $i, $PARALLEL x $EVENTS events of $SIZE bytes" >&2
  "$KOI" benchsub reset > /dev/null
  "$KOI" --json status > "$OUT/status-before-$i.json"
  cpu_ticks > "$OUT/cpu-before-$i"
  start="$(now_ns)"
  pids=()
  for p in $(seq "$PARALLEL"); do
    "$KOI" --json hello publish --count "$EVENTS" --size "$SIZE" > "$OUT/publish-$i-$p.json" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  end="$(now_ns)"
  cpu_ticks > "$OUT/cpu-publish-$i"
  # Wait until the subscriber has stopped receiving (no change for 1 s, at most 60 s).
  prev=""
  for _ in $(seq 60); do
    sleep 1
    cur="$("$KOI" --json benchsub stats)"
    [ "$cur" = "$prev" ] && break
    prev="$cur"
  done
  echo "$cur" > "$OUT/stats-$i.json"
  cpu_ticks > "$OUT/cpu-after-$i"
  "$KOI" --json status > "$OUT/status-after-$i.json"
  echo "$start $end" > "$OUT/publish-time-$i"
  rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$sub_pid/status")"
  echo "$rss" > "$OUT/sub-rss-after-$i-kib"
done

python3 - "$OUT" "$RUNS" "$EVENTS" "$SIZE" "$PARALLEL" "$(cat /proc/loadavg)" <<'PY'
import json, sys, os
out, runs, events, size, parallel, load = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
rd = lambda p: open(os.path.join(out, p)).read()
rows = []
def row(what, figure, goal="", met=""):
    rows.append((what, figure, goal, met))
rpc = [json.loads(rd(f"rpc-{i}.json")) for i in range(1, runs + 1)]
for i, r in enumerate(rpc, 1):
    rt = r["round_trip"]
    row(f"round trip, run {i} (n={rt['n']})", f"median {rt['median_us']:.1f} µs, p90 {rt['p90_us']:.1f}, p99 {rt['p99_us']:.1f}",
        "median ≤ 61 µs", "yes" if rt["median_us"] <= 61 else "no")
for i, r in enumerate(rpc, 1):
    m = r["plugin_rss_after_handshake_and_100_calls"]
    row(f"koi-hello RSS, one-shot, after handshake + 100 calls (run {i})",
        f"{m['vm_rss_kib']} KiB ({m['vm_rss_kib']/1024:.2f} MiB), HWM {m['vm_hwm_kib']} KiB", "≤ before + 1 MiB", "")
for i, r in enumerate(rpc, 1):
    p = r.get("publisher_alone") or {}
    if p:
        row(f"publisher alone (host answers at once, no bus), run {i}",
            ", ".join(f"{k.split('_')[1]} B: {v['events_per_s']:,.0f} ev/s ({v['us_per_event']:.1f} µs/event)" for k, v in p.items()))
kib = int(rd("daemon-hello-rss-kib"))
row("koi-hello RSS under the daemon, after 100 forwarded greets", f"{kib} KiB ({kib/1024:.2f} MiB)", "≤ before + 1 MiB", "")
sub_kib = int(rd("daemon-sub-rss-kib"))
row("koi-benchsub RSS under the daemon, idle", f"{sub_kib} KiB ({sub_kib/1024:.2f} MiB)")
def dropped(status):
    for e in status.get("daemon", {}).get("events", []):
        if e["subscriber"] == "benchsub":
            return e["dropped"], e["delivered"]
    return 0, 0
for i in range(1, runs + 1):
    s = json.loads(rd(f"stats-{i}.json"))
    s = s.get("result", s)
    start, end = map(int, rd(f"publish-time-{i}").split())
    total = events * parallel
    pub_rate = total / ((end - start) / 1e9)
    d0, dl0 = dropped(json.loads(rd(f"status-before-{i}.json")))
    d1, dl1 = dropped(json.loads(rd(f"status-after-{i}.json")))
    latency_ms = (s["last_ns"] - end) / 1e6 if s["last_ns"] else float("nan")
    rss = int(rd(f"sub-rss-after-{i}-kib"))
    hz = os.sysconf("SC_CLK_TCK")
    c0, _, c2 = (list(map(int, rd(f"cpu-{w}-{i}").split())) for w in ("before", "publish", "after"))
    # (user+sys, of which sys) µs per event of process k (0 daemon, 1 koi-hello, 2 koi-benchsub).
    def per_event(a, b, k):
        u, y = (b[2 * k] - a[2 * k]) / hz * 1e6 / total, (b[2 * k + 1] - a[2 * k + 1]) / hz * 1e6 / total
        return f"{u + y:.1f} (sys {y:.1f})"
    row(f"events run {i}: {parallel}×{events} × {size} B published", f"publisher {pub_rate:,.0f} ev/s ({(end-start)/1e9:.2f} s)")
    row(f"events run {i}: received by the subscriber",
        f"{s['received']:,} of {total:,} at {s['rate_per_s']:,.0f} ev/s (first→last); out of order {s['out_of_order']:,}; "
        f"dropped: daemon {d1-d0:,}, subscriber told {s['missed']:,} (gaps {s['gaps']}); last event {latency_ms:+.0f} ms after publish returned; "
        f"subscriber RSS after {rss/1024:.1f} MiB",
        "≥ 50,000 ev/s", "yes" if s["rate_per_s"] >= 50000 and s["received"] == total else "no")
    row(f"events run {i}: CPU µs per event, user+sys (/proc, until drained)",
        f"daemon {per_event(c0, c2, 0)}, koi-hello {per_event(c0, c2, 1)}, koi-benchsub {per_event(c0, c2, 2)}; "
        f"wall {(end-start)/1e3/total:.1f} µs per event")
row("load average at the end (1, 5, 15 min)", " ".join(load.split()[:3]))
print("| What | Figure | Goal | Met? |")
print("|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
PY
