#!/usr/bin/env bash
# Issue one device certificate + key from the CLI, koi vs `mkcert -ecdsa`, in one hyperfine run
# (-N, no shell), all inside the CA's network namespace under host name bench-ca:
#   koi-daemon   `koi certmesh issue printer.lan --ip 10.77.50.9 --out DIR` forwarded to a running
#                `koi daemon` whose CA was unlocked beforehand (the like-for-like case: mkcert's CA
#                key sits unencrypted on disk, koi's is already open in the daemon);
#   koi-oneshot  the same with --no-daemon --passphrase-file F on a second CA (no daemon on it):
#                includes opening the vault (Argon2id, 64 MiB, t=3);
#   mkcert       `mkcert -ecdsa -cert-file … -key-file … printer.lan 10.77.50.9`, CAROOT in the temp
#                dir (created before the run; never -install, so no trust store is touched).
#   koi-floor    `koi --version`: starting the koi process alone (no plugin, no daemon).
# Every command is started through `env VAR=…` (KOI_HOME or CAROOT), so all pay the same exec.
# Target: koi (daemon) ≤ 0.5× mkcert. Usage: bash bench/certmesh/issue.sh   (RUNS=…, REL=…)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
command -v mkcert > /dev/null || { echo "mkcert is missing: apt-get install -y mkcert" >&2; exit 1; }
lab_up
ca_create "$WORK/ca-oneshot"
ONESHOT_HOME="$CA_HOME"
ca_serving "$WORK/ca-daemon"
mkdir -p "$WORK/caroot" "$WORK/mk-home" "$WORK/out-mkcert"
MK=(env CAROOT="$WORK/caroot" HOME="$WORK/mk-home" mkcert -ecdsa -cert-file "$WORK/out-mkcert/cert.pem"
    -key-file "$WORK/out-mkcert/key.pem" printer.lan 10.77.50.9)
on ca "${MK[@]}" > /dev/null 2>&1   # creates mkcert's CA (not timed)
# Each koi command is checked once before timing.
KD="env KOI_HOME=$CA_HOME $KOI certmesh issue printer.lan --ip 10.77.50.9 --out $WORK/out-daemon"
KO="env KOI_HOME=$ONESHOT_HOME $KOI --no-daemon certmesh issue printer.lan --ip 10.77.50.9 --out $WORK/out-oneshot --passphrase-file $PASS"
on ca $KD > /dev/null
on ca $KO > /dev/null
cd "$WORK"
PROBE_BEFORE="$(fsync_probe)"
on ca "$HYPERFINE" -N --warmup 3 --runs "${RUNS:-60}" --export-json "$WORK/issue.json" \
  -n koi-daemon "$KD" -n koi-oneshot "$KO" -n mkcert "${MK[*]}" \
  -n koi-floor "env KOI_HOME=$CA_HOME $KOI --version" >&2
PROBE_AFTER="$(fsync_probe)"
for f in out-daemon out-oneshot out-mkcert; do
  openssl x509 -in "$WORK/$f/cert.pem" -noout -ext subjectAltName > /dev/null \
    || { echo "$f/cert.pem is not a certificate" >&2; exit 1; }
done
"$PY" - "$WORK/issue.json" "$PROBE_BEFORE" "$PROBE_AFTER" "$WORK" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
ms = lambda x, k="median": round(x[k] * 1000, 2)
d, o, m, f = r["koi-daemon"], r["koi-oneshot"], r["mkcert"], r["koi-floor"]
print(json.dumps({
  "koi_daemon_median_ms": ms(d), "koi_daemon_mean_ms": ms(d, "mean"),
  "koi_oneshot_median_ms": ms(o), "koi_oneshot_mean_ms": ms(o, "mean"),
  "mkcert_median_ms": ms(m), "mkcert_mean_ms": ms(m, "mean"),
  "koi_floor_median_ms": ms(f), "koi_daemon_minus_floor_ms": round((d["median"] - f["median"]) * 1000, 2),
  "ratio_koi_daemon_over_mkcert": round(d["median"] / m["median"], 2),
  "ratio_koi_oneshot_over_mkcert": round(o["median"] / m["median"], 2),
  "load_average_end": open("/proc/loadavg").read().split()[:3],
  "fsync_probe_ms_before_after": [float(sys.argv[2]), float(sys.argv[3])], "work_dir": sys.argv[4],
  "target": "koi <= 0.5x mkcert", "met": d["median"] <= 0.5 * m["median"]}, indent=2))
PY
