#!/usr/bin/env bash
# One trial, timed by hyperfine: start an announcement of a fresh instance on host A with TOOL
# (koi | avahi) and return as soon as host B's watcher has seen it. The announcer keeps running;
# the next trial's --prepare (stop.sh) withdraws it.
set -euo pipefail
tool="$1"; dir="$2"
name="bench-$tool-$(date +%s%N)"
echo "$name" > "$dir/name"
case "$tool" in
  koi) ip netns exec "$(cat "$dir/ns_a")" env KOI_HOME="$dir/home-a" "$(cat "$dir/koi")" mdns announce "$name" _bench._tcp 9 --host bench-a >/dev/null 2>&1 & ;;
  avahi) ip netns exec "$(cat "$dir/ns_a")" env "$(cat "$dir/avahi_env")" avahi-publish -s "$name" _bench._tcp 9 >/dev/null 2>&1 & ;;
esac
echo $! > "$dir/announcer.pid"
until grep -q "\"action\":\"+\".*\"instance\":\"$name\"" "$dir/watch.ndjson"; do sleep 0.002; done
