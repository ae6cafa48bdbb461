#!/usr/bin/env bash
# koi-mdns benchmarks, koi vs Avahi in the same run, on a two-namespace lab (needs root, hyperfine,
# avahi-daemon, avahi-utils, dbus, a debug or release build of koi + koi-mdns):
#   1. announce → seen on the other host (20 trials each, hyperfine),
#   2. goodbye (Ctrl-C of the announcer) → removal seen on the other host (20 trials each),
#   3. RSS of koi + koi-mdns during a one-shot discover, and of an idle avahi-daemon.
# The observer on host B is the same for both tools: `koi mdns discover _bench._tcp --watch --json`.
# Usage: bench/mdns/run.sh [TARGET_DIR]   (default: target/debug). Results: $OUT (printed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${1:-$here/../../target/debug}"
koi="$(cd "$target" && pwd)/koi"
[ -x "$koi" ] && [ -x "$(dirname "$koi")/koi-mdns" ] || { echo "build first: cargo build -p koi-host -p koi-mdns" >&2; exit 1; }
runs="${RUNS:-20}"
# shellcheck source=lab.sh
source "$here/lab.sh"
trap lab_down EXIT
lab_up
avahi_up "$LAB_A" bench-a-avahi
dir="$LAB_DIR"
echo "$LAB_A" > "$dir/ns_a"; echo "$koi" > "$dir/koi"; avahi_env "$LAB_A" > "$dir/avahi_env"
mkdir -p "$dir/home-a" "$dir/home-b"
ip netns exec "$LAB_B" env KOI_HOME="$dir/home-b" "$koi" mdns discover _bench._tcp --watch --json > "$dir/watch.ndjson" 2>/dev/null &
sleep 1

hyperfine --style basic --runs "$runs" --warmup 1 --prepare "$here/stop.sh $dir" \
  -n koi "$here/announce.sh koi $dir" -n avahi "$here/announce.sh avahi $dir" \
  --export-json "$dir/announce.json"
"$here/stop.sh" "$dir"
for tool in koi avahi; do
  hyperfine --style basic --runs "$runs" --prepare "$here/prepare-removal.sh $tool $dir" \
    -n "$tool" "$here/removal.sh $dir" --export-json "$dir/removal-$tool.json"
done
"$here/stop.sh" "$dir"

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
koi_rss=(); plugin_rss=()
for _ in 1 2 3 4 5; do
  ip netns exec "$LAB_B" env KOI_HOME="$dir/home-b" "$koi" mdns discover _bench._tcp --timeout 3 > /dev/null 2>&1 &
  kpid=$!
  sleep 1.5
  ppid_plugin="$(pgrep -P "$kpid" -x koi-mdns || true)"
  koi_rss+=("$(rss "$kpid")"); plugin_rss+=("$(rss "${ppid_plugin:-0}")")
  wait "$kpid" || true
done
avahi_rss="$(rss "$(cat "$dir/avahi-$LAB_A/daemon.pid")")"
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

ms() { jq -r "$1" "$2" | awk '{printf "%.0f", $1*1000}'; }
a_koi=$(ms '.results[] | select(.command=="koi") | .median' "$dir/announce.json")
a_av=$(ms '.results[] | select(.command=="avahi") | .median' "$dir/announce.json")
a_koi_mean=$(ms '.results[] | select(.command=="koi") | .mean' "$dir/announce.json")
a_av_mean=$(ms '.results[] | select(.command=="avahi") | .mean' "$dir/announce.json")
r_koi=$(ms '.results[0].median' "$dir/removal-koi.json")
r_av=$(ms '.results[0].median' "$dir/removal-avahi.json")
k=$(median "${koi_rss[@]}"); p=$(median "${plugin_rss[@]}")
cat <<REPORT
RESULTS (medians of $runs trials)
announce_to_seen_ms koi=$a_koi avahi=$a_av (means koi=$a_koi_mean avahi=$a_av_mean) ratio=$(awk "BEGIN {printf \"%.2f\", $a_koi/$a_av}")
goodbye_to_removal_ms koi=$r_koi avahi=$r_av ratio=$(awk "BEGIN {printf \"%.2f\", $r_koi/$r_av}")
rss_kb koi=$k koi_mdns=$p total=$((k + p)) avahi_daemon_idle=$avahi_rss
REPORT
