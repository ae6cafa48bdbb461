#!/usr/bin/env python3
"""Standby CA driver for bench/certmesh/standby.sh. Runs on the member host (its namespace, host
name and KOI_HOME), against a freshly created, unlocked CA under `koi daemon`.

One TOTP burst (three steps, as join_driver.py's Codes hands them out):
  join      `koi certmesh join … --no-trust --json`, spawn to exit (the anchor: our own join);
  promote   `koi certmesh promote --code … --passphrase-file … --json`, spawn to exit, twice (the
            second replaces the first standby): code check, sealed transfer, Argon2id sealing.
Then, repeatable (no code), each on a new connection with the member's certificate (mutual TLS):
  roster    GET  /v1/certmesh/roster          (the heartbeat's route: the floor of a sync)
  manifest  GET  /v1/certmesh/standby/roster  (the CA signs a manifest now)
  audit     POST /v1/certmesh/standby/audit {"offset": 0}  (the whole log)
and `unlock`: `koi certmesh unlock --passphrase-file …` on the standby, one-shot (Argon2id).
One JSON object per line on stdout: {"kind", "ms"} (HTTP kinds add "bytes").
"""
import argparse
import json
import os
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from join_driver import Codes, api, emit  # noqa: E402


def timed(cmd):
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    ms = round((time.perf_counter() - t) * 1000, 3)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} failed ({p.returncode}): {p.stderr.strip()}")
    json.loads(p.stdout)
    return ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--koi", required=True)
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fingerprint", required=True)
    ap.add_argument("--uri", required=True)
    ap.add_argument("--ca-pem", required=True)
    ap.add_argument("--standby-pass", required=True)
    ap.add_argument("--n", type=int, default=30)
    args = ap.parse_args()
    home = os.environ["KOI_HOME"]
    codes = Codes(args.uri)
    emit({"kind": "join", "ms": timed([args.koi, "certmesh", "join", "--ca", f"{args.ip}:{args.port}",
                                       "--fingerprint", args.fingerprint, "--code", codes.next(),
                                       "--no-trust", "--json"])})
    for _ in range(2):
        emit({"kind": "promote", "ms": timed([args.koi, "certmesh", "promote", "--code", codes.next(),
                                              "--passphrase-file", args.standby_pass, "--json"])})
    certs = os.path.join(home, "certs", "bench-member")
    ctx = ssl.create_default_context(cafile=args.ca_pem)
    ctx.load_cert_chain(os.path.join(certs, "fullchain.pem"), os.path.join(certs, "key.pem"))
    api(args, ctx, "GET", "/v1/certmesh/roster")          # warm-up, not recorded
    for kind, method, path, body in [
        ("roster", "GET", "/v1/certmesh/roster", b""),
        ("manifest", "GET", "/v1/certmesh/standby/roster", b""),
        ("audit", "POST", "/v1/certmesh/standby/audit", b'{"offset": 0}'),
    ]:
        for _ in range(args.n):
            r, answer = api(args, ctx, method, path, body)
            if r["http"] != 200:
                sys.exit(f"{method} {path} answered {r['http']}: {answer[:300]!r}")
            emit({"kind": kind, "ms": r["total_ms"], "bytes": len(answer)})
    for _ in range(3):
        emit({"kind": "unlock", "ms": timed([args.koi, "certmesh", "unlock", "--passphrase-file",
                                             args.standby_pass, "--json"])})


if __name__ == "__main__":
    main()
