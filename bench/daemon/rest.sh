#!/usr/bin/env bash
# REST throughput of `koi daemon` (koi-hello only) with wrk on loopback: GET /v1/status and
# GET /v1/hello/greet?name=Ada, each a bounded run (default `wrk -t2 -c32 -d10s`, override with
# WRK_ARGS). Both are checked with curl first. Usage: bash bench/daemon/rest.sh
source "$(dirname "$0")/common.sh"
daemon_up
base="http://127.0.0.1:$REST_PORT"
for path in /v1/status "/v1/hello/greet?name=Ada"; do
  code="$(curl -s -o "$WORK/body" -w '%{http_code}' "$base$path")"
  echo "GET $path -> $code $(head -c 200 "$WORK/body")" >&2
  [ "$code" = 200 ] || { echo "GET $path failed" >&2; exit 1; }
done
read -r -a args <<< "${WRK_ARGS:--t2 -c32 -d10s}"
results=()
for path in /v1/status "/v1/hello/greet?name=Ada"; do
  wrk "${args[@]}" --latency "$base$path" > "$WORK/wrk.txt"
  cat "$WORK/wrk.txt" >&2
  rps="$(awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk.txt")"
  p50="$(awk '$1 == "50%" {print $2}' "$WORK/wrk.txt")"
  p99="$(awk '$1 == "99%" {print $2}' "$WORK/wrk.txt")"
  errs="$(awk '/Non-2xx|Socket errors/' "$WORK/wrk.txt" | tr '\n' ' ')"
  results+=("{\"path\": \"$path\", \"requests_per_sec\": $rps, \"p50\": \"$p50\", \"p99\": \"$p99\", \"errors\": \"${errs% }\"}")
done
wrk_args="${args[*]}"
( IFS=,; echo "{\"wrk\": \"$wrk_args\", \"results\": [${results[*]}]}" ) | python3 -m json.tool
