#!/usr/bin/env bash
# The audit log at scale (issue 9, finding 2), inside the CA's namespace:
#   unlock-empty    `koi certmesh unlock` forwarded to a freshly restarted `koi daemon` (so the CA
#                   is locked) on a mesh whose log holds only create's entries;
#   unlock-100k     the same on a mesh whose log holds about ENTRIES (default 100,000) more
#                   entries, written by plugins/koi-certmesh-core/examples/audit_fill.rs (the CA's
#                   own AuditLog::append, so a signed checkpoint every 256 entries, as in real use);
#                   the count is rounded to leave 255 entries after the last checkpoint: the most
#                   an unlock can meet. Before every run the mesh's log, checkpoint and roster are restored
#                   from a copy (an unlock writes a fresh checkpoint), and the daemon restarted;
#   log-last-20     `koi certmesh log --last 20 --json` on the big mesh, through the daemon;
#   log-verify      `koi certmesh log --verify` on the big mesh (every line, every signature),
#                   VERIFY_RUNS runs (default 1), with the plugin's peak RSS (VmHWM, reset
#                   before) — the cost the old unlock paid twice (torn-tail check + open).
# OLD_CERTMESH=path/to/koi-certmesh (a release build of commit 3c6df58) adds unlock-100k-old:
# the same unlock with the plugin from before incremental verification (OLD_RUNS runs, default 2).
# Usage: bash bench/certmesh/audit.sh   (ENTRIES=…, RUNS=…, REL=…, OLD_CERTMESH=…, OLD_RUNS=…)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# 256 = CHECKPOINT_EVERY (plugins/koi-certmesh-core/src/checkpoint.rs).
N=$(( ${ENTRIES:-100000} / 256 * 256 + 255 ))
lab_up
ca_create "$WORK/ca-empty"
EMPTY_HOME="$CA_HOME"
ca_create "$WORK/ca-big"
BIG_HOME="$CA_HOME"
(cd "$ROOT" && cargo build --release -q -p koi-certmesh-core --example audit_fill) >&2
fill_start=$(date +%s.%N)
"$ROOT/target/release/examples/audit_fill" "$BIG_HOME/certmesh" "$PASS" "$N"
fill_s=$(echo "$(date +%s.%N) - $fill_start" | bc)
log_bytes=$(stat -c %s "$BIG_HOME/certmesh/audit.log")
log_lines=$(wc -l < "$BIG_HOME/certmesh/audit.log")
mkdir -p "$WORK/pristine"
cp -a "$BIG_HOME/certmesh/audit.log" "$BIG_HOME/certmesh/audit.log.checkpoint" \
  "$BIG_HOME/certmesh/roster.json" "$WORK/pristine/"
RESTART="bash $HERE/restart-daemon.sh $WORK $KOI $IP_A:$API_PORT"
# sync: the restored log (tens of MB) must not be written back inside the timed unlock's first fsync.
printf 'cp -a %q/pristine/. %q/certmesh/\nsync\nexec %s\n' "$WORK" "$BIG_HOME" "$RESTART" \
  > "$WORK/prepare-big.sh"
UNLOCK="$KOI certmesh unlock --passphrase-file $PASS"
cd "$WORK"

unlock_bench() {   # unlock_bench NAME HOME [WARMUP RUNS]
  local prepare="$RESTART"
  [ "$2" = "$BIG_HOME" ] && prepare="bash $WORK/prepare-big.sh"
  CA_HOME="$2" on ca $prepare
  CA_HOME="$2" on ca $UNLOCK --json | jq -e '.unlocked == true' > /dev/null \
    || { echo "$1: unlock did not stay unlocked" >&2; exit 1; }
  CA_HOME="$2" on ca "$HYPERFINE" -N --warmup "${3:-1}" --runs "${4:-${RUNS:-10}}" --export-json "$WORK/$1.json" \
    --prepare "$prepare" -n "$1" "$UNLOCK" >&2
}
unlock_bench unlock-empty "$EMPTY_HOME"
unlock_bench unlock-100k "$BIG_HOME"
# The daemon on the big mesh is unlocked now; `log` goes through it.
CA_HOME="$BIG_HOME" on ca "$HYPERFINE" -N --warmup 3 --runs 30 --export-json "$WORK/log-last.json" \
  -n log-last-20 "$KOI certmesh log --last 20 --json" >&2
CA_HOME="$BIG_HOME" on ca $KOI certmesh log --last 20 --json | jq -e '.entries | length == 20' > /dev/null
pid=$(CA_HOME="$BIG_HOME" on ca $KOI status --json | jq -r '.plugins[] | select(.name == "certmesh") | .supervision.pid')
echo 5 > "/proc/$pid/clear_refs"
CA_HOME="$BIG_HOME" on ca "$HYPERFINE" -N --runs "${VERIFY_RUNS:-1}" --export-json "$WORK/log-verify.json" \
  -n log-verify "$KOI certmesh log --verify --last 1" >&2
verify_peak_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
if [ -n "${OLD_CERTMESH:-}" ]; then
  cp --remove-destination "$OLD_CERTMESH" "$WORK/plugins/koi-certmesh"
  # Each old unlock verifies the whole chain twice (≈ 100 s here): OLD_RUNS runs, no warm-up.
  unlock_bench unlock-100k-old "$BIG_HOME" 0 "${OLD_RUNS:-2}"
fi
"$PY" - "$WORK" "$N" "$fill_s" "$log_bytes" "$verify_peak_kib" "$log_lines" <<'PY'
import json, os, sys
w, n, fill_s, size, peak, lines = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def res(name):
    p = os.path.join(w, name + ".json")
    return json.load(open(p))["results"][0] if os.path.exists(p) else None
ms = lambda r, k="median": round(r[k] * 1000, 1)
e, b, l, v, o = (res(x) for x in ("unlock-empty", "unlock-100k", "log-last", "log-verify", "unlock-100k-old"))
out = {"entries_added": n, "audit_log_entries": lines, "fill_seconds": round(fill_s, 1), "audit_log_bytes": size,
       "unlock_empty_median_ms": ms(e), "unlock_empty_min_max_ms": [ms(e, "min"), ms(e, "max")],
       "unlock_100k_median_ms": ms(b), "unlock_100k_min_max_ms": [ms(b, "min"), ms(b, "max")],
       "unlock_ratio_100k_over_empty": round(b["median"] / e["median"], 2),
       "unlock_target_under_2x": b["median"] < 2 * e["median"],
       "log_last_20_median_ms": ms(l), "log_last_20_min_max_ms": [ms(l, "min"), ms(l, "max")],
       "log_last_20_target_under_50ms": l["median"] < 0.05,
       "log_verify_full_median_ms": ms(v), "log_verify_plugin_peak_rss_kib": peak,
       "load_average_end": open("/proc/loadavg").read().split()[:3]}
if o:
    out["unlock_100k_old_median_ms"] = ms(o)
    out["unlock_100k_old_min_max_ms"] = [ms(o, "min"), ms(o, "max")]
print(json.dumps(out, indent=2))
PY
