#!/usr/bin/env bash
# certmesh for other plugins (members, request-names) on the two-host lab network (see common.sh
# for the isolation): a CA under `koi daemon`, unlocked, and a member joined with the CLI running
# its own `koi daemon` (its first heartbeat fetches the roster `members` answers from). Side by
# side in one run, each timed from spawn to exit of the `koi` CLI through the daemon
# (names_driver.py):
#   floor          `koi status --json` on the CA: the CLI → daemon round trip every command pays;
#   members        `koi certmesh members --json` on the CA (its roster) and on the member (the
#                  roster its heartbeat kept);
#   accept (CA)    `request-names` of a new name for the CA's own machine: checks, a signed
#                  `names_requested` audit entry, the roster saved (fsync);
#   accept (member) the same on the member, forwarded to the CA over mutual TLS;
#   noop           the same name again (answered `already`, nothing written), on both;
#   renew          then `koi certmesh renew --now` on the member with its N names pending: the
#                  renewal that certifies them (one sample per run; the certificate is checked).
# Usage: bash bench/certmesh/names.sh   (N=… names per kind, at most 30; REL=… for another build)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
N="${N:-30}"
[ "$N" -le 30 ] || { echo "N is at most 30 (32 names may be pending per machine)" >&2; exit 1; }
lab_up
ca_serving "$WORK/ca"
MEMBER_HOME="$WORK/member"
mkdir -p "$MEMBER_HOME"
on member env IP_B="$IP_B" "$PY" "$HERE/join_driver.py" --koi "$KOI" --ip "$IP_A" --port "$API_PORT" \
  --fingerprint "$CA_FP" --uri "$CA_URI" --ca-pem "$CA_HOME/certmesh/ca/ca.pem" \
  --plan cli --health 0 --floor 0 > /dev/null
rm -f "$MEMBER_HOME/run/koi.sock"
on member "$KOI" daemon > "$WORK/member-daemon.log" 2>&1 &
MEMBER_DAEMON=$!
for _ in $(seq 200); do
  on member "$KOI" certmesh members --json 2>/dev/null | jq -e '.members | length == 2' > /dev/null && break
  sleep 0.1
done
on member "$KOI" certmesh members --json | jq -e '.members | length == 2' > /dev/null \
  || { cat "$WORK/member-daemon.log" >&2; echo "the member never fetched the roster" >&2; exit 1; }
OUT="$WORK/names.ndjson"
: > "$OUT"
drive() { local who="$1"; shift; on "$who" "$PY" "$HERE/names_driver.py" --koi "$KOI" --where "$who" "$@" >> "$OUT"; }
drive ca --kind floor --n "$N"
drive ca --kind members --n "$N"
drive member --kind members --n "$N"
drive ca --kind accept --prefix ca --n "$N"
drive member --kind accept --prefix m --n "$N"
drive ca --kind noop --prefix ca --n "$N"
drive member --kind noop --prefix m --n "$N"
start=$(date +%s%N)
on member "$KOI" certmesh renew --now --json > "$WORK/renew.json"
renew_ms=$(( ($(date +%s%N) - start) / 1000000 ))
sans=$(openssl x509 -noout -ext subjectAltName -in "$MEMBER_HOME/certs/bench-member/cert.pem" | grep -o 'DNS:m[0-9]*\.lan' | wc -l)
[ "$sans" = "$N" ] || { echo "the renewed certificate holds $sans of the $N requested names" >&2; exit 1; }
kill -TERM "$MEMBER_DAEMON" 2>/dev/null || true
wait "$MEMBER_DAEMON" 2>/dev/null || true
"$PY" - "$OUT" "$renew_ms" "$N" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
def stats(kind, where):
    v = sorted(r["ms"] for r in recs if r["kind"] == kind and r["where"] == where)
    if not v: return None
    p95 = v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]
    return {"n": len(v), "median": round(statistics.median(v), 2), "p95": round(p95, 2),
            "min": round(v[0], 2), "max": round(v[-1], 2)}
print(json.dumps({
  "floor_koi_status_ca_ms": stats("floor", "ca"),
  "members_ca_ms": stats("members", "ca"),
  "members_member_ms": stats("members", "member"),
  "request_names_accept_ca_ms": stats("accept", "ca"),
  "request_names_accept_member_ms": stats("accept", "member"),
  "request_names_noop_ca_ms": stats("noop", "ca"),
  "request_names_noop_member_ms": stats("noop", "member"),
  "renew_now_with_%s_pending_names_ms" % sys.argv[3]: int(sys.argv[2]),
  "load_average_end": open("/proc/loadavg").read().split()[:3],
}, indent=2))
PY
