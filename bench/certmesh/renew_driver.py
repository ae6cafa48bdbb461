#!/usr/bin/env python3
"""Renewal driver for bench/certmesh/renew.sh. Runs on the member host (inside its network
namespace, under its host name and KOI_HOME), after the member joined an unlocked CA.

Records, one JSON object per line on stdout:
  renew_api  POST /v1/certmesh/renew on a new connection, presenting the member's current
             certificate (mutual TLS), with a CSR for the member's key made once before the timer
             (keep-key): TCP connect, TLS handshake, request → first byte, total. The client
             context (with the newest certificate) is built before the timer, as in join_driver.py.
  renew_cli  the member's one-shot `koi certmesh renew --now --json` (a fresh key each time),
             wall time from spawn to exit.
"""
import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from join_driver import api, emit  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--koi", required=True)
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca-pem", required=True)
    ap.add_argument("--cert-dir", required=True)
    ap.add_argument("--api", type=int, default=30)
    ap.add_argument("--cli", type=int, default=10)
    ap.add_argument("--round", type=int, default=0)
    args = ap.parse_args()
    key = os.path.join(args.cert_dir, "key.pem")
    csr = subprocess.run(["openssl", "req", "-new", "-key", key, "-subj", "/CN=bench-member"],
                         capture_output=True, text=True, check=True).stdout
    body = json.dumps({"csr_pem": csr}).encode()
    tmp = tempfile.mkdtemp(prefix="koi-cm-renew-")
    chain = os.path.join(tmp, "chain.pem")
    with open(os.path.join(args.cert_dir, "fullchain.pem")) as f:
        current = f.read()
    for i in range(args.api + 1):
        with open(chain, "w") as f:
            f.write(current)
        ctx = ssl.create_default_context(cafile=args.ca_pem)
        ctx.load_cert_chain(chain, key)
        r, answer = api(args, ctx, "POST", "/v1/certmesh/renew", body)
        if r["http"] != 200:
            sys.exit(f"POST /v1/certmesh/renew answered {r['http']}: {answer[:300]!r}")
        issued = json.loads(answer)
        current = issued["cert_pem"] + issued["ca_pem"]
        if i > 0:                                     # the first is a warm-up
            emit({"kind": "renew_api", "round": args.round, **r})
    # The CLI renews from the files on disk: put the newest certificate there (same key).
    for name, text in (("cert.pem", issued["cert_pem"]), ("fullchain.pem", current)):
        with open(os.path.join(args.cert_dir, name), "w") as f:
            f.write(text)
    for _ in range(args.cli):
        t = time.perf_counter()
        p = subprocess.run([args.koi, "certmesh", "renew", "--now", "--json"],
                           capture_output=True, text=True)
        ms = round((time.perf_counter() - t) * 1000, 3)
        if p.returncode != 0:
            sys.exit(f"koi certmesh renew failed ({p.returncode}): {p.stderr.strip()}")
        json.loads(p.stdout)
        emit({"kind": "renew_cli", "round": args.round, "ms": ms})


if __name__ == "__main__":
    main()
