#!/usr/bin/env bash
# The standby CA (koi certmesh promote, roster and audit sync) on the two-host lab network (see
# common.sh for the isolation): a CA under `koi daemon`, unlocked; the member joins and is promoted
# with the one-shot CLI (standby_driver.py). Side by side in one run:
#   join       the member's `koi certmesh join` (the anchor: the same code check and round trip);
#   promote    `koi certmesh promote` (code check, X25519 + AES-256-GCM transfer of key, secret,
#              signed manifest and audit log, Argon2id m=64 MiB sealing, directory swap), twice;
#   roster     GET /v1/certmesh/roster with the member's certificate (the heartbeat's request);
#   manifest   GET /v1/certmesh/standby/roster (the CA signs the manifest; the standby's sync);
#   audit      POST /v1/certmesh/standby/audit from offset 0 (the whole log);
#   unlock     `koi certmesh unlock` on the standby, one-shot (Argon2id).
# Usage: bash bench/certmesh/standby.sh   (N=… HTTP samples per kind; REL=… for another build)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
N="${N:-30}"
lab_up
ca_serving "$WORK/ca"
MEMBER_HOME="$WORK/member"
mkdir -p "$MEMBER_HOME"
STANDBY_PASS="$WORK/standby-passphrase"
printf 'standby passphrase for the bench\n' > "$STANDBY_PASS"
chmod 600 "$STANDBY_PASS"
OUT="$WORK/standby.ndjson"
on member "$PY" "$HERE/standby_driver.py" --koi "$KOI" --ip "$IP_A" --port "$API_PORT" \
  --fingerprint "$CA_FP" --uri "$CA_URI" --ca-pem "$CA_HOME/certmesh/ca/ca.pem" \
  --standby-pass "$STANDBY_PASS" --n "$N" > "$OUT"
[ "$(jq -r '.details.role' < <(on member "$KOI" certmesh status --json))" = standby ] \
  || { echo "the member is not a standby after the run" >&2; exit 1; }
"$PY" - "$OUT" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
def stats(kind):
    v = sorted(r["ms"] for r in recs if r["kind"] == kind)
    if not v: return None
    p95 = v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]
    out = {"n": len(v), "median": round(statistics.median(v), 2), "p95": round(p95, 2),
           "min": round(v[0], 2), "max": round(v[-1], 2)}
    sizes = [r["bytes"] for r in recs if r["kind"] == kind and "bytes" in r]
    if sizes: out["bytes"] = max(sizes)
    return out
print(json.dumps({k + "_ms": stats(k) for k in ["join", "promote", "roster", "manifest", "audit", "unlock"]}
                 | {"load_average_end": open("/proc/loadavg").read().split()[:3]}, indent=2))
PY
