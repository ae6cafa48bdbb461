#!/usr/bin/env bash
# Pull-renewal round trip and hook latency on the two-host lab network (see common.sh for the
# isolation). Per ROUND: a fresh CA under `koi daemon`, unlocked; join_driver.py spends the three
# TOTP steps on PLAN (default api,api,cli: two bare API joins, then the member's CLI join, which
# leaves the member enrolled); renew_driver.py then times API renewals with the member's
# certificate (mutual TLS, keep-key CSR made before the timer) and one-shot CLI renewals (fresh
# key). So joins and renewals are measured side by side against the same CA.
# Then hook latency (once): the member runs `koi daemon` with the reload hook `date +%s%N >> F`;
# HOOKS × `koi certmesh renew --now` through the daemon; latency = the hook's start time − the
# ctime of the renamed cert.pem (the rename that puts the new certificate in place sets it).
# Targets: renewal round trip ≤ 50 ms median; hook latency ≤ 100 ms.
# Usage: bash bench/certmesh/renew.sh   (ROUNDS=…, API=…, CLI=…, HOOKS=…; REL=… for another build)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ROUNDS="${ROUNDS:-3}"
lab_up
MEMBER_HOME="$WORK/member"
mkdir -p "$MEMBER_HOME"
: > "$WORK/renew.ndjson"
MEMBER_DIR="$MEMBER_HOME/certs/bench-member"
for r in $(seq "$ROUNDS"); do
  ca_serving "$WORK/ca-$r"
  on member env IP_B="$IP_B" "$PY" "$HERE/join_driver.py" --koi "$KOI" --ip "$IP_A" --port "$API_PORT" \
    --fingerprint "$CA_FP" --uri "$CA_URI" --ca-pem "$CA_HOME/certmesh/ca/ca.pem" \
    --plan "${PLAN:-api,api,cli}" --health 0 --floor 0 --round "$r" >> "$WORK/renew.ndjson"
  on member "$PY" "$HERE/renew_driver.py" --koi "$KOI" --ip "$IP_A" --port "$API_PORT" \
    --ca-pem "$CA_HOME/certmesh/ca/ca.pem" --cert-dir "$MEMBER_DIR" --api "${API:-30}" \
    --cli "${CLI:-10}" --round "$r" >> "$WORK/renew.ndjson"
  [ "$r" = "$ROUNDS" ] || daemon_down
  echo "round $r/$ROUNDS done" >&2
done
# Hook latency, against the last CA (still up).
HOOK_TIMES="$WORK/hook.times"
: > "$HOOK_TIMES"
on member "$KOI" certmesh set-hook --reload "date +%s%N >> $HOOK_TIMES" --json > /dev/null
rm -f "$MEMBER_HOME/run/koi.sock"
on member "$KOI" daemon > "$WORK/member-daemon.log" 2>&1 &
MEMBER_DAEMON=$!
for _ in $(seq 200); do [ -S "$MEMBER_HOME/run/koi.sock" ] && break; sleep 0.05; done
sleep 1
: > "$WORK/hook.pairs"
for i in $(seq "${HOOKS:-20}"); do
  before=$(wc -l < "$HOOK_TIMES")
  on member "$KOI" certmesh renew --now --json > /dev/null
  for _ in $(seq 200); do
    [ "$(wc -l < "$HOOK_TIMES")" -gt "$before" ] && break
    sleep 0.02
  done
  ctime_ns="$("$PY" -c 'import os,sys; print(os.stat(sys.argv[1]).st_ctime_ns)' "$MEMBER_DIR/cert.pem")"
  echo "$ctime_ns $(tail -1 "$HOOK_TIMES")" >> "$WORK/hook.pairs"
done
kill -TERM "$MEMBER_DAEMON" 2>/dev/null || true
wait "$MEMBER_DAEMON" 2>/dev/null || true
[ -z "${RAW:-}" ] || cp "$WORK/renew.ndjson" "$RAW"
"$PY" - "$WORK/renew.ndjson" "$WORK/hook.pairs" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
def pick(kind, key): return [r[key] for r in recs if r["kind"] == kind]
def stats(v):
    if not v: return None
    v = sorted(v)
    return {"n": len(v), "median": round(statistics.median(v), 2), "min": round(v[0], 2),
            "max": round(v[-1], 2), "mean": round(statistics.mean(v), 2)}
hooks = []
for line in open(sys.argv[2]):
    parts = line.split()
    if len(parts) == 2:
        hooks.append((int(parts[1]) - int(parts[0])) / 1e6)
renew = stats(pick("renew_api", "total_ms"))
hook = stats(hooks)
print(json.dumps({
  "renew_api_total_ms": renew,
  "renew_api_tls_handshake_ms": stats(pick("renew_api", "tls_ms")),
  "renew_api_request_to_first_byte_ms": stats(pick("renew_api", "first_byte_ms")),
  "join_api_total_ms": stats(pick("api", "total_ms")),
  "join_api_tls_handshake_ms": stats(pick("api", "tls_ms")),
  "join_api_request_to_first_byte_ms": stats(pick("api", "first_byte_ms")),
  "renew_cli_oneshot_ms": stats(pick("renew_cli", "ms")),
  "join_cli_ms": stats(pick("cli", "ms")),
  "hook_latency_ms": hook,
  "load_average_end": open("/proc/loadavg").read().split()[:3],
  "targets": {"renew_api_median_ms": 50, "hook_latency_median_ms": 100},
  "met": {"renew": bool(renew and renew["median"] <= 50), "hook": bool(hook and hook["median"] <= 100)},
}, indent=2))
PY
