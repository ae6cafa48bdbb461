#!/usr/bin/env bash
# One trial, timed by hyperfine: Ctrl-C the announcer started by the --prepare step and return when
# host B's watcher reports the removal (`-`).
set -uo pipefail
dir="$1"
pid="$(cat "$dir/announcer.pid")"; name="$(cat "$dir/name")"
kill -INT "$pid"
until grep -q "\"action\":\"-\".*\"instance\":\"$name\"" "$dir/watch.ndjson"; do sleep 0.002; done
