#!/usr/bin/env bash
# One-shot dispatch overhead: `koi hello greet Ada` against running the plugin binary directly
# (the same JSON-RPC frames piped in), and git dispatching an external `git-<x>` command against
# running that command directly, all in one hyperfine run. Overhead = dispatched − direct.
# Loopback only: nothing here touches the network. Usage: bench/dispatch.sh [RELEASE_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rel="${1:-$root/target/release}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/plugins" "$work/home" "$work/gitbin"
cp "$rel/examples/koi-hello" "$work/plugins/koi-hello"
cp "$rel/koi" "$work/koi"   # its own directory: only koi-hello is discovered
# The frames koi sends for `koi hello greet Ada`, for the direct run.
cat > "$work/frames.ndjson" <<'FRAMES'
{"id":1,"jsonrpc":"2.0","method":"initialize","params":{"features":["cancel","progress","user_interaction","plugin_calls","events","streams"],"host":{"name":"koi","version":"0.1.0"},"interactive":false,"koi_home":"/tmp","max_frame_bytes":16777216,"mode":"one_shot","protocol":{"major":1,"minor":0}}}
{"id":2,"jsonrpc":"2.0","method":"greet","params":{"name":"Ada"}}
{"id":3,"jsonrpc":"2.0","method":"shutdown"}
FRAMES
# git's external command: a trivial one, so git's own dispatch cost is what remains.
cp /usr/bin/true "$work/gitbin/git-noop"
export KOI_HOME="$work/home" KOI_PLUGIN_PATH="$work/plugins" KOI_PLUGIN_COOKIE=koi-stdio-jsonrpc
export PATH="$work/gitbin:$PATH" GIT_CONFIG_NOSYSTEM=1 HOME="$work/home"
cd "$work"
# hyperfine >= 1.16 is needed for --input (Debian 12 ships 1.15: `cargo install hyperfine`).
HYPERFINE="${HYPERFINE:-hyperfine}"
"$HYPERFINE" -N --warmup 50 --runs "${RUNS:-1000}" --export-json "$work/result.json" --input "$work/frames.ndjson" \
  -n koi-dispatch "$work/koi hello greet Ada" \
  -n plugin-direct "$work/plugins/koi-hello" \
  -n git-dispatch "git noop" \
  -n git-target-direct "$work/gitbin/git-noop" >&2
python3 - "$work/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
def med(name): return [x for x in r if x["command"] == name][0]["median"] * 1000
koi, direct, git, noop = med("koi-dispatch"), med("plugin-direct"), med("git-dispatch"), med("git-target-direct")
print(json.dumps({
  "koi_dispatch_ms": round(koi, 3), "plugin_direct_ms": round(direct, 3), "koi_overhead_ms": round(koi - direct, 3),
  "git_dispatch_ms": round(git, 3), "git_target_direct_ms": round(noop, 3), "git_overhead_ms": round(git - noop, 3),
  "ratio_koi_over_git_overhead": round((koi - direct) / (git - noop), 2)}, indent=2))
PY
