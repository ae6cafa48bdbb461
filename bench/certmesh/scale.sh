#!/usr/bin/env bash
# 500 members renewing within one minute (issue 11), simulated clients, on the two-host lab of
# common.sh (namespaces, no koi-mdns, nothing leaves them).
#
# Set-up: a fresh CA (`koi certmesh create`, one-shot); then, with no daemon running,
# `certmesh-enroll` (bench/src/certmesh_enroll.rs) opens the CA with its passphrase and enrolls
# MEMBERS simulated members through koi-certmesh's own enrollment functions (no TOTP code: see
# that file), writing each one's key and certificate under $WORK/members; `koi certmesh log
# --verify` then checks the log and the roster's anchor. The member namespace gets ADDRS extra
# addresses (10.77.50.10 …), and member i connects from address i mod ADDRS, so the CA's
# per-address connection limit sees a LAN of machines, not one.
# The run: `koi daemon` on the CA, unlocked; per ROUND, scale_driver.py sends one `POST
# /v1/certmesh/renew` per member (new connection, mutual TLS with the member's own certificate,
# a fresh key's CSR made before the run): first `uniform` (arrivals uniform random over WINDOW s),
# then `burst` (all at once through a pool of POOL clients); the renewed files are installed
# after each run, so every run renews every member's current certificate. Every answer is checked
# (chain to the root, names, key). Each run gets a fresh daemon; after its unlock the peak RSS of
# koi-certmesh and koi is reset (`echo 5 > /proc/PID/clear_refs`; the unlock's Argon2id alone
# takes 64 MiB), and read after the run (VmHWM). At the end the log verifies again, through the daemon and one-shot after it stopped.
# Targets: CA p99 ≤ 100 ms, no failures, CA RSS under 40 MB.
# Usage: bash bench/certmesh/scale.sh   (MEMBERS=500 ROUNDS=2 WINDOW=60 POOL=32 ADDRS=240
#        RAW=FILE BENCH_TMP=/dev/shm; REL=… for another build)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MEMBERS="${MEMBERS:-500}"
ROUNDS="${ROUNDS:-2}"
WINDOW="${WINDOW:-60}"
POOL="${POOL:-32}"
ADDRS="${ADDRS:-240}"
ENROLL="$REL/certmesh-enroll"
[ -x "$ENROLL" ] || { echo "$ENROLL is missing: cargo build --release -p koi-bench --bin certmesh-enroll" >&2; exit 1; }
[ "$ADDRS" -ge 1 ] && [ "$ADDRS" -le 240 ] || { echo "ADDRS must be 1..240" >&2; exit 1; }
lab_up
src=()
for i in $(seq 10 $((9 + ADDRS))); do
  ip -n "$NS_B" addr add "10.77.50.$i/24" dev veth0
  src+=("10.77.50.$i")
done
SRC="$(IFS=,; echo "${src[*]}")"
MEMBER_HOME="$WORK/member"          # unused by this bench; `on member` needs it set
mkdir -p "$MEMBER_HOME"
ca_create "$WORK/ca"
CA_PEM="$CA_HOME/certmesh/ca/ca.pem"
"$ENROLL" "$CA_HOME" "$PASS" "$MEMBERS" "$WORK/members" > "$WORK/enroll.json"
echo "enrolled: $(cat "$WORK/enroll.json")" >&2
on ca "$KOI" certmesh log --verify --json > "$WORK/verify-enrolled.json" \
  || { cat "$WORK/verify-enrolled.json" >&2; echo "the log does not verify after enrollment" >&2; exit 1; }
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
# serving: `koi daemon` on the CA, unlocked; sets CM_PID (its koi-certmesh) and LIFETIME_HWM_CM
# (start-up + unlock: the Argon2id of the unlock alone takes 64 MiB), then resets both peaks.
serving() {
  daemon_up
  on ca "$KOI" certmesh unlock --passphrase-file "$PASS" --json > /dev/null
  CM_PID=""
  for _ in $(seq 100); do
    for k in $(descendants "$DAEMON_PID"); do
      [ "$(cat "/proc/$k/comm" 2>/dev/null)" = koi-certmesh ] && CM_PID="$k"
    done
    [ -n "$CM_PID" ] && break
    sleep 0.05
  done
  [ -n "$CM_PID" ] || { echo "no koi-certmesh process under the daemon" >&2; exit 1; }
  LIFETIME_HWM_CM="$(kb "$CM_PID" VmHWM)"
  echo 5 > "/proc/$CM_PID/clear_refs"
  echo 5 > "/proc/$DAEMON_PID/clear_refs"
}
: > "$WORK/runs.ndjson"
for r in $(seq "$ROUNDS"); do
  for mode in uniform burst; do
    # A fresh daemon per run, so each run's peak is its own (not the previous run's heap).
    serving
    before="$(kb "$CM_PID" VmRSS)"
    load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
    on member "$PY" "$HERE/scale_driver.py" --members "$WORK/members" --ca-pem "$CA_PEM" \
      --ip "$IP_A" --port "$API_PORT" --addrs "$SRC" --mode "$mode" --window "$WINDOW" \
      --pool "$POOL" --seed "$r" > "$WORK/run.json"
    "$PY" - "$WORK/run.json" "$r" "$before" "$(kb "$CM_PID" VmHWM)" "$(kb "$CM_PID" VmRSS)" \
      "$(kb "$DAEMON_PID" VmHWM)" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" \
      "$(ls -l "$CA_HOME/certmesh/roster.json" | awk '{print $5}')" \
      "$(ls -l "$CA_HOME/certmesh/audit.log" | awk '{print $5}')" "$LIFETIME_HWM_CM" \
      >> "$WORK/runs.ndjson" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
run.update({"round": int(sys.argv[2]), "certmesh_rss_before_kb": int(sys.argv[3]),
            "certmesh_vmhwm_kb": int(sys.argv[4]), "certmesh_rss_after_kb": int(sys.argv[5]),
            "koi_vmhwm_kb": int(sys.argv[6]), "load_start": sys.argv[7], "load_end": sys.argv[8],
            "roster_bytes": int(sys.argv[9]), "audit_bytes": int(sys.argv[10]),
            "certmesh_vmhwm_after_unlock_kb": int(sys.argv[11])})
print(json.dumps(run))
PY
    echo "round $r $mode: $(tail -1 "$WORK/runs.ndjson" | jq -c '{total_ms, failures, certmesh_vmhwm_kb}')" >&2
    [ "$r$mode" = "${ROUNDS}burst" ] || daemon_down
  done
done
on ca "$KOI" certmesh log --verify --json > "$WORK/verify-daemon.json" \
  || { cat "$WORK/verify-daemon.json" >&2; echo "the log does not verify after the runs (daemon)" >&2; exit 1; }
daemon_down
on ca "$KOI" certmesh log --verify --json > "$WORK/verify-after.json" \
  || { cat "$WORK/verify-after.json" >&2; echo "the log does not verify after the runs" >&2; exit 1; }
on ca "$KOI" certmesh members --json > "$WORK/members.json" 2>/dev/null || true
[ -z "${RAW:-}" ] || cp "$WORK/runs.ndjson" "$RAW"
"$PY" - "$WORK/runs.ndjson" "$WORK/enroll.json" "$WORK/verify-enrolled.json" \
  "$WORK/verify-daemon.json" "$WORK/verify-after.json" "$(fsync_probe)" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
verify = [json.load(open(p)) for p in sys.argv[3:6]]
out = {"enroll": json.load(open(sys.argv[2])),
       "verify": [v.get("verified") for v in verify],
       "fsync_probe_median_ms": float(sys.argv[6]),
       "runs": [{k: r.get(k) for k in ("round", "mode", "members", "elapsed_s", "rate_per_s",
                                       "total_ms", "request_to_first_byte_ms", "tls_handshake_ms",
                                       "arrival_lateness_ms", "failures", "failure_samples",
                                       "source_addresses", "certmesh_vmhwm_kb",
                                       "certmesh_rss_before_kb", "certmesh_rss_after_kb",
                                       "certmesh_vmhwm_after_unlock_kb",
                                       "koi_vmhwm_kb", "load_start", "load_end", "roster_bytes",
                                       "audit_bytes")} for r in runs]}
uni = [r for r in runs if r["mode"] == "uniform"]
out["targets"] = {"p99_ms": 100, "failures": 0, "certmesh_rss_mb": 40}
out["met"] = {
    "p99": all(r["total_ms"] and r["total_ms"]["p99"] <= 100 for r in uni),
    "failures": all(r["failures"] == 0 for r in runs),
    "rss": all(r["certmesh_vmhwm_kb"] < 40 * 1024 for r in runs),
}
print(json.dumps(out, indent=2))
PY
