#!/usr/bin/env python3
"""Join driver for bench/certmesh/join.sh. Runs on the member host (inside its network namespace,
under its host name and KOI_HOME, started by join.sh), against one freshly created, unlocked CA.

Per CA it makes at most three successful enrollments, with TOTP codes for steps now-1, now and
now+1 (the CA accepts a step only once and only if it is later than the last one accepted, within
±1 step of now; so one CA allows a burst of three, then one per 30 s). It never sends a wrong code
(three in a row would lock enrollment for 5 minutes): it stays clear of step boundaries and stops
at the first refusal.

Records, one JSON object per line on stdout:
  health  GET /v1/certmesh/health (no code needed, repeatable) on a new connection: TCP connect,
          TLS handshake, request → first response byte, total — the API's floor.
  api     POST /v1/certmesh/join on a new connection, with a valid code and a fresh CSR (key +
          CSR made with openssl before the timer): the enrollment round trip on the wire.
The HTTP client is Python's ssl (OpenSSL) with its context built once, so per-process TLS
library set-up is not counted (curl's time_appconnect includes ≈ 6 ms of it).
  cli     the member's `koi certmesh join --ca … --fingerprint … --code … --no-trust --json`,
          wall time from spawn to exit (the member's certmesh state is removed before each run,
          outside the timer, so every run is a first join).
  floor   `koi certmesh status --json` on the member (one-shot: koi + plugin start, no network).
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse

STEP = 30


def totp(secret: bytes, step: int) -> str:
    h = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    o = h[-1] & 15
    return "%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1_000_000)


class Codes:
    """Hands out codes for strictly increasing steps that the CA accepts right now."""

    def __init__(self, uri: str):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
        s = q["secret"][0].upper()
        self.secret = base64.b32decode(s + "=" * (-len(s) % 8))
        self.last = None

    def next(self) -> str:
        while True:
            now = time.time()
            cur, into = int(now // STEP), now % STEP
            if into > STEP - 1.5:           # too close to a boundary: a cur-1 code could expire
                time.sleep(STEP - into + 0.2)
                continue
            step = cur - 1 if self.last is None else max(self.last + 1, cur - 1)
            if step > cur + 1:              # used up: the next step becomes valid at the boundary
                print(f"waiting {STEP - into + 0.2:.1f} s for the next TOTP step", file=sys.stderr)
                time.sleep(STEP - into + 0.2)
                continue
            self.last = step
            return totp(self.secret, step)


def api(args, ctx, method, path, body=b""):
    """One HTTPS request on a new connection (as the member's client does): TCP connect, TLS
    handshake (TLS 1.3, the CA root verified, host name bench-ca.local: the default scope has no bare names), request, whole response."""
    t0 = time.perf_counter()
    raw = socket.create_connection((args.ip, args.port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # as the member's client
    t1 = time.perf_counter()
    tls = ctx.wrap_socket(raw, server_hostname="bench-ca.local")
    t2 = time.perf_counter()
    head = f"{method} {path} HTTP/1.1\r\nHost: bench-ca.local:{args.port}\r\nConnection: close\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    tls.sendall(head.encode() + b"\r\n" + body)             # one write, one TLS record
    data = tls.recv(65536)
    t3 = time.perf_counter()
    while b"\r\n\r\n" not in data:
        data += tls.recv(65536)
    header, rest = data.split(b"\r\n\r\n", 1)
    length = next((int(l.split(b":", 1)[1]) for l in header.split(b"\r\n")
                   if l.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        rest += tls.recv(65536)
    t4 = time.perf_counter()
    tls.close()
    ms = lambda a, b: round((b - a) * 1000, 3)
    return {"http": int(header.split(b" ", 2)[1]), "tcp_ms": ms(t0, t1), "tls_ms": ms(t1, t2),
            "first_byte_ms": ms(t2, t3), "total_ms": ms(t0, t4)}, rest


def emit(rec):
    print(json.dumps(rec), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--koi", required=True)
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fingerprint", required=True)
    ap.add_argument("--uri", required=True)
    ap.add_argument("--ca-pem", required=True)
    ap.add_argument("--plan", default="cli,api,cli", help="at most three: one TOTP step each")
    ap.add_argument("--health", type=int, default=20)
    ap.add_argument("--floor", type=int, default=5)
    ap.add_argument("--round", type=int, default=0)
    args = ap.parse_args()
    home = os.environ["KOI_HOME"]
    base = f"https://bench-ca:{args.port}/v1/certmesh"
    tmp = tempfile.mkdtemp(prefix="koi-cm-join-")
    try:
        ctx = ssl.create_default_context(cafile=args.ca_pem)
        api(args, ctx, "GET", "/v1/certmesh/health")      # warm-up, not recorded
        for _ in range(args.health):
            r, _ = api(args, ctx, "GET", "/v1/certmesh/health")
            emit({"kind": "health", "round": args.round, **r})
        for _ in range(args.floor):
            t = time.perf_counter()
            subprocess.run([args.koi, "certmesh", "status", "--json"], capture_output=True, check=True)
            emit({"kind": "floor", "round": args.round, "ms": round((time.perf_counter() - t) * 1000, 3)})
        codes = Codes(args.uri)
        for i, what in enumerate(args.plan.split(",")):
            if what == "cli":
                for d in ("certmesh", "certs"):
                    shutil.rmtree(os.path.join(home, d), ignore_errors=True)
                code = codes.next()
                t = time.perf_counter()
                p = subprocess.run([args.koi, "certmesh", "join", "--ca", f"{args.ip}:{args.port}",
                                    "--fingerprint", args.fingerprint, "--code", code, "--no-trust",
                                    "--json"], capture_output=True, text=True)
                ms = round((time.perf_counter() - t) * 1000, 3)
                if p.returncode != 0:
                    sys.exit(f"koi certmesh join failed ({p.returncode}): {p.stderr.strip()}")
                json.loads(p.stdout)                      # a JSON answer, or this fails
                emit({"kind": "cli", "round": args.round, "index": i, "ms": ms})
            elif what == "api":
                key, csr = os.path.join(tmp, "key.pem"), os.path.join(tmp, "csr.pem")
                subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                                "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=bench-member",
                                "-keyout", key, "-out", csr], capture_output=True, check=True)
                body = json.dumps({"hostname": "bench-member", "code": codes.next(),
                                   "csr_pem": open(csr).read(),
                                   "ip_addresses": [os.environ["IP_B"]]}).encode()
                r, answer = api(args, ctx, "POST", "/v1/certmesh/join", body)
                if r["http"] != 200:
                    sys.exit(f"POST /v1/certmesh/join answered {r['http']}: {answer[:300]!r}")
                emit({"kind": "api", "round": args.round, "index": i, **r})
            else:
                sys.exit(f"unknown plan item {what}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
