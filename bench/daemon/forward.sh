#!/usr/bin/env bash
# A CLI call forwarded through a running `koi daemon` against the same call one-shot
# (`--no-daemon`: start koi-hello, handshake, call, shut down), in one hyperfine run:
# `koi hello greet Ada`. Target: forwarded ≥ 3× faster. `koi --version` (no plugin, no daemon) runs
# in the same hyperfine run as the floor: what starting the koi process alone costs, so
# forwarded − floor is the daemon round trip. Loopback only (Unix socket and pipes).
# Usage: bash bench/daemon/forward.sh   (RUNS=… to change the trial count; REL=… for another build)
source "$(dirname "$0")/common.sh"
daemon_up
cd "$WORK"
"$HYPERFINE" -N --warmup 30 --runs "${RUNS:-500}" --export-json "$WORK/forward.json" \
  -n forwarded "$KOI hello greet Ada" \
  -n one-shot "$KOI --no-daemon hello greet Ada" \
  -n koi-floor "$KOI --version" >&2
python3 - "$WORK/forward.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
f, o, z = r["forwarded"], r["one-shot"], r["koi-floor"]
print(json.dumps({
  "koi_floor_median_ms": round(z["median"] * 1000, 3),
  "forwarded_minus_floor_ms": round((f["median"] - z["median"]) * 1000, 3),
  "forwarded_median_ms": round(f["median"] * 1000, 3), "forwarded_mean_ms": round(f["mean"] * 1000, 3),
  "one_shot_median_ms": round(o["median"] * 1000, 3), "one_shot_mean_ms": round(o["mean"] * 1000, 3),
  "speedup_median": round(o["median"] / f["median"], 2), "target": ">= 3",
  "met": o["median"] / f["median"] >= 3}, indent=2))
PY
