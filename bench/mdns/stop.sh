#!/usr/bin/env bash
# Withdraws the previous trial's announcement (Ctrl-C: goodbye packets) and waits until host B has
# seen it leave, so every trial starts from the same state.
set -uo pipefail
dir="$1"
[ -f "$dir/announcer.pid" ] || exit 0
pid="$(cat "$dir/announcer.pid")"; name="$(cat "$dir/name")"
kill -INT "$pid" 2>/dev/null
for _ in $(seq 1000); do grep -q "\"action\":\"-\".*\"instance\":\"$name\"" "$dir/watch.ndjson" && break; sleep 0.005; done
while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
rm -f "$dir/announcer.pid"
