#!/usr/bin/env bash
# Unlock time with the chosen Argon2id parameters (64 MiB, t=3, p=1), inside the CA's namespace:
#   daemon-unlock   `koi certmesh unlock --passphrase-file F` forwarded to `koi daemon`; hyperfine's
#                   --prepare (restart-daemon.sh, not timed) restarts the daemon before every run so
#                   each run finds the CA locked;
#   oneshot-unlock  `koi --no-daemon certmesh unlock --passphrase-file F` on a second CA (checks the
#                   passphrase and audits, keeps nothing open);
# then the core library's own figures (plugins/koi-certmesh-core/examples/measure.rs, built with
# the release profile): bare Argon2id, store unlock, leaf issue, audit append.
# O3=1 also builds that example with argon2 and blake2 at opt-level 3 (the release profile is
# opt-level "s") into target/certmesh-bench-o3 and runs it, to show what the profile costs.
# Usage: bash bench/certmesh/unlock.sh   (RUNS=…, REL=…, O3=1)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
lab_up
ca_create "$WORK/ca-oneshot"
ONESHOT_HOME="$CA_HOME"
ca_create "$WORK/ca-daemon"
DU="env KOI_HOME=$CA_HOME $KOI certmesh unlock --passphrase-file $PASS"
OU="env KOI_HOME=$ONESHOT_HOME $KOI --no-daemon certmesh unlock --passphrase-file $PASS"
# Check both once (the daemon one must say it stays unlocked).
on ca bash "$HERE/restart-daemon.sh" "$WORK" "$KOI" "$IP_A:$API_PORT"
on ca $DU --json | jq -e '.unlocked == true' > /dev/null || { echo "daemon unlock did not stay unlocked" >&2; exit 1; }
on ca $OU --json > /dev/null
cd "$WORK"
on ca "$HYPERFINE" -N --warmup 1 --runs "${RUNS:-10}" --export-json "$WORK/unlock.json" \
  --prepare "bash $HERE/restart-daemon.sh $WORK $KOI $IP_A:$API_PORT" -n daemon-unlock "$DU" \
  --prepare "true" -n oneshot-unlock "$OU" >&2

measure() {   # measure TARGET_DIR [cargo args…]: build (if needed) and run the measure example
  local dir="$1"; shift
  if [ ! -x "$dir/release/examples/measure" ] || [ "$#" -gt 0 ]; then
    (cd "$ROOT" && CARGO_TARGET_DIR="$dir" cargo build --release -q -p koi-certmesh-core --example measure "$@") >&2
  fi
  "$dir/release/examples/measure"
}
measure "$ROOT/target" > "$WORK/measure.txt"
cat "$WORK/measure.txt" >&2
if [ "${O3:-0}" = 1 ]; then
  measure "$ROOT/target/certmesh-bench-o3" --config 'profile.release.package.argon2.opt-level=3' \
    --config 'profile.release.package.blake2.opt-level=3' > "$WORK/measure-o3.txt"
  echo "(argon2 + blake2 at opt-level 3)" >&2; cat "$WORK/measure-o3.txt" >&2
fi
"$PY" - "$WORK/unlock.json" "$WORK/measure.txt" "$WORK/measure-o3.txt" <<'PY'
import json, os, re, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
ms = lambda x, k="median": round(x[k] * 1000, 1)
def parse(path):
    if not os.path.exists(path): return None
    t = open(path).read()
    grab = lambda pat: (lambda m: float(m.group(1)) if m else None)(re.search(pat, t))
    return {"argon2id_64MiB_t3_ms": grab(r"m=64 MiB t=3 p=1.*?([\d.]+) ms"),
            "argon2id_19MiB_t2_ms": grab(r"m=19 MiB t=2 p=1.*?([\d.]+) ms"),
            "store_unlock_ms": grab(r"Unlock CA store.*?: ([\d.]+) ms"),
            "issue_from_csr_ms": grab(r"from a CSR.*?: ([\d.]+) ms"),
            "issue_for_device_ms": grab(r"for a device.*?: ([\d.]+) ms"),
            "audit_append_ms": grab(r"audit entry.*?: ([\d.]+) ms")}
d, o = r["daemon-unlock"], r["oneshot-unlock"]
out = {"daemon_unlock_median_ms": ms(d), "daemon_unlock_min_ms": ms(d, "min"), "daemon_unlock_max_ms": ms(d, "max"),
       "oneshot_unlock_median_ms": ms(o), "oneshot_unlock_min_ms": ms(o, "min"), "oneshot_unlock_max_ms": ms(o, "max"),
       "core_measure_release_profile": parse(sys.argv[2]),
       "load_average_end": open("/proc/loadavg").read().split()[:3]}
o3 = parse(sys.argv[3])
if o3: out["core_measure_argon2_opt_level_3"] = o3
print(json.dumps(out, indent=2))
PY
