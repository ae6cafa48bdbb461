#!/usr/bin/env bash
# Runs the koi-certmesh benchmarks one after the other — join.sh (join round trip on the lab
# network), issue.sh (issue one leaf, koi vs mkcert), unlock.sh (Argon2id unlock) — then join.sh
# again with QUICKACK=1 as a diagnostic (see docs/benchmarks.md), and prints a summary. Each
# script cleans up after itself (namespaces, daemons, temp files). Needs root, hyperfine ≥ 1.16,
# mkcert, curl, jq, openssl, python3. Build first: cargo build --release --workspace.
# Usage: bash bench/certmesh/run.sh   (full JSON results in $OUT, default a temp directory;
# BENCH_TMP=/dev/shm runs it all on tmpfs, a diagnostic for what the disk costs)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$(mktemp -d /tmp/koi-certmesh-results.XXXXXX)}"
mkdir -p "$OUT"
for b in join issue unlock; do
  echo "== $b (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  bash "$here/$b.sh" | tee "$OUT/$b.json"
done
echo "== join, QUICKACK=1 diagnostic (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
ROUNDS="${QUICKACK_ROUNDS:-4}" QUICKACK=1 bash "$here/join.sh" | tee "$OUT/join-quickack.json"
/usr/bin/python3 - "$OUT" <<'PY'
import json, sys, os
d = sys.argv[1]
j, i, u, q = (json.load(open(os.path.join(d, f + ".json"))) for f in ("join", "issue", "unlock", "join-quickack"))
yn = lambda b: "met" if b else "MISSED"
c = j["cli_join_ms"]
print(f"""
SUMMARY (koi-certmesh, {os.cpu_count()} cores; results in {d})
disk probe (write+fsync+dir fsync)   join {j['fsync_probe_ms_before_after']} ms, issue {i['fsync_probe_ms_before_after']} ms (before, after)
join, member CLI (n={c['n']})        median {c['median']} ms (min {c['min']}, max {c['max']}; {j['cli_join_stalled']} stalled by ~40 ms)   target <= 100 ms: {yn(j['met'])}
join, API round trip (n={j['api_join_total_ms']['n']})     median {j['api_join_total_ms']['median']} ms (TLS handshake {j['api_join_tls_handshake_ms']['median']}, request -> first byte {j['api_join_request_to_first_byte_ms']['median']})
health, API round trip (n={j['api_health_total_ms']['n']})  median {j['api_health_total_ms']['median']} ms
member one-shot floor                median {j['member_floor_koi_certmesh_status_ms']['median']} ms (koi certmesh status)
join, member CLI, quickack diag      median {q['cli_join_ms']['median']} ms (min {q['cli_join_ms']['min']}, max {q['cli_join_ms']['max']}; {q['cli_join_stalled']} stalled)
issue, koi via daemon                median {i['koi_daemon_median_ms']} ms
issue, koi one-shot (Argon2id)       median {i['koi_oneshot_median_ms']} ms
issue, mkcert -ecdsa                 median {i['mkcert_median_ms']} ms
koi --version (process floor)        median {i['koi_floor_median_ms']} ms
issue ratio koi(daemon)/mkcert       {i['ratio_koi_daemon_over_mkcert']}   target <= 0.5: {yn(i['met'])}   (one-shot: {i['ratio_koi_oneshot_over_mkcert']})
unlock via daemon                    median {u['daemon_unlock_median_ms']} ms (min {u['daemon_unlock_min_ms']}, max {u['daemon_unlock_max_ms']})
unlock one-shot check                median {u['oneshot_unlock_median_ms']} ms
core: Argon2id 64 MiB t=3            {u['core_measure_release_profile']['argon2id_64MiB_t3_ms']} ms; store unlock {u['core_measure_release_profile']['store_unlock_ms']} ms""")
PY
