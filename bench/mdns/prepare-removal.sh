#!/usr/bin/env bash
# --prepare of the removal benchmark: clean up the previous trial, then announce and wait until seen.
set -euo pipefail
tool="$1"; dir="$2"; here="$(dirname "$0")"
"$here/stop.sh" "$dir"
"$here/announce.sh" "$tool" "$dir"
