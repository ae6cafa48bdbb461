#!/usr/bin/env bash
# Push renewal round trip (issue 11 item 2) on the two-host lab network (see common.sh for the
# isolation), side by side with the pull renewal round trip against the same CA.
# A push only happens when a certificate is due, and short lifetimes exist only through the
# debug-build test clock (plugins/koi-certmesh/src/clock.rs), so this runs the DEBUG build by
# default (REL=target/debug; both figures below come from it, so they compare with each other, not
# with the release figures of renew.sh). One fresh CA under `koi daemon`, unlocked, signing
# 20-second leaves (KOI_TEST_CERT_LIFETIME_SECS=20: due 1.3 s after issue, with the 60 s back-dating);
# join_driver.py enrols the member (one CLI join); the member runs `koi daemon` with its own renewal off
# (KOI_TEST_NO_PULL_RENEWAL=1) and the CA pushes to it, about one push per 7 s (the hold the CA
# keeps after an accepted push: 1/12 of the 80 s lifetime). Round trip = the CA's `duration_ms` in
# each `cert_pushed` audit entry: connect, TLS, sign + roster save, the member's checks and
# journalled install, the answer. Then renew_driver.py times API pull renewals against the same
# CA (API=30, keep-key, mutual TLS).
# Usage: bash bench/certmesh/push.sh   (PUSHES=…, API=…, REL=…, RAW=FILE; DEBUG=1 prints the roster
# and the CA's push state every 2 s while waiting)
REL="${REL:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/debug}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PUSHES="${PUSHES:-20}"
lab_up
MEMBER_HOME="$WORK/member"
mkdir -p "$MEMBER_HOME"
MEMBER_DIR="$MEMBER_HOME/certs/bench-member"
ca_create "$WORK/ca"
rm -f "$CA_HOME/run/koi.sock"
on ca env KOI_LOG="${KOI_LOG:-warn}" KOI_TEST_CERT_LIFETIME_SECS=20 "$KOI" daemon > "$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 200); do
  ip netns exec "$NS_A" curl -sfk -o /dev/null "https://$IP_A:$API_PORT/v1/certmesh/health" && break
  sleep 0.05
done
on ca "$KOI" certmesh unlock --passphrase-file "$PASS" --json > /dev/null
: > "$WORK/push.ndjson"
on member env IP_B="$IP_B" "$PY" "$HERE/join_driver.py" --koi "$KOI" --ip "$IP_A" --port "$API_PORT" \
  --fingerprint "$CA_FP" --uri "$CA_URI" --ca-pem "$CA_HOME/certmesh/ca/ca.pem" \
  --plan cli --health 0 --floor 0 > /dev/null
rm -f "$MEMBER_HOME/run/koi.sock"
on member env KOI_TEST_NO_PULL_RENEWAL=1 "$KOI" daemon > "$WORK/member-daemon.log" 2>&1 &
MEMBER_DAEMON=$!
pushed() {
  on ca "$KOI" certmesh log --last 10000 --json \
    | jq -c '.entries[] | select(.event == "cert_pushed") | .details'
}
deadline=$(( $(date +%s) + PUSHES * 10 + 60 ))
while [ "$(pushed | wc -l)" -lt "$PUSHES" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || {
    cat "$WORK/daemon.log" "$WORK/member-daemon.log" >&2
    on ca "$KOI" certmesh status --json | jq .details.push >&2
    echo "fewer than $PUSHES pushes arrived in time" >&2; exit 1; }
  [ -z "${DEBUG:-}" ] || { date -u +%T >&2; jq -c ".members[] | {serial, issued_at, expires_at}" "$CA_HOME/certmesh/roster.json" >&2; on ca "$KOI" certmesh status --json | jq -c ".details.push, .details.daemon_services" >&2; }
  sleep 2
done
refused=$(on ca "$KOI" certmesh log --last 10000 --json | jq '[.entries[] | select(.event == "push_refused")] | length')
pushed | jq -c '{kind: "push", total_ms: .duration_ms}' >> "$WORK/push.ndjson"
kill -TERM "$MEMBER_DAEMON" 2>/dev/null || true
wait "$MEMBER_DAEMON" 2>/dev/null || true
# Pull renewals against the same CA, after the pushes (renew_driver's requests carry no
# addresses, so the roster entry it leaves has none and could not be pushed to).
on member "$PY" "$HERE/renew_driver.py" --koi "$KOI" --ip "$IP_A" --port "$API_PORT" \
  --ca-pem "$CA_HOME/certmesh/ca/ca.pem" --cert-dir "$MEMBER_DIR" --api "${API:-30}" --cli 0 \
  >> "$WORK/push.ndjson"
[ -z "${RAW:-}" ] || cp "$WORK/push.ndjson" "$RAW"
"$PY" - "$WORK/push.ndjson" "$refused" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
def pick(kind, key): return [r[key] for r in recs if r["kind"] == kind]
def stats(v):
    if not v: return None
    v = sorted(v)
    return {"n": len(v), "median": round(statistics.median(v), 2), "min": round(v[0], 2),
            "max": round(v[-1], 2), "mean": round(statistics.mean(v), 2)}
print(json.dumps({
  "push_round_trip_ms": stats(pick("push", "total_ms")),
  "push_refused": int(sys.argv[2]),
  "pull_renew_api_total_ms": stats(pick("renew_api", "total_ms")),
  "pull_renew_api_request_to_first_byte_ms": stats(pick("renew_api", "first_byte_ms")),
  "load_average_end": open("/proc/loadavg").read().split()[:3],
}, indent=2))
PY
