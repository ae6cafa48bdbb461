#!/usr/bin/env bash
# Runs the three `koi daemon` benchmarks one after the other (forward.sh, rest.sh, rss.sh); each
# cleans up after itself. Build first: cargo build --release -p koi-host --bins &&
# cargo build --release -p koi-sdk --examples && cargo build --release -p koi-mdns --bins.
# Usage: bash bench/daemon/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for b in forward rest rss; do
  echo "== $b"
  bash "$here/$b.sh"
done
