#!/usr/bin/env python3
"""Driver for bench/certmesh/scale.sh: N simulated members each send ONE `POST /v1/certmesh/renew`
to the CA. Runs in the member namespace (inside scale.sh's lab), after certmesh-enroll wrote every
member's files (key.pem, fullchain.pem, and next-key.pem + renew.csr: the renewal's fresh key and
its CSR, made before the run).

Each request: a new TCP connection from the member's own source address (members spread over the
namespace's addresses, so the CA's per-address connection limit sees what a LAN of machines
looks like), mutual TLS with the member's current certificate, the CSR for its fresh key (so the
key rotates, as `koi certmesh renew` does by default). Client contexts are built before the run.

Modes:
  uniform  arrival times uniform random over --window seconds (seeded); a scheduler thread hands
           each request to a pool at its time (lateness, if the pool falls behind, is recorded).
  burst    all N handed to a pool of --pool threads at once: as fast as that many clients go.

Every answer is checked after the run (outside the timers): HTTP 200, the JSON names the member,
the new certificate chains to the root (signature checked with the root's key, validity now), its
DNS names are the member's (the same as its current certificate's), and it certifies the fresh key.
Prints one JSON object: the timings, the failures and the checks.
"""
import argparse
import concurrent.futures
import datetime
import json
import math
import os
import random
import socket
import ssl
import statistics
import sys
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def request(ip, port, src, ctx, body):
    """One renewal on a new connection; returns (timings, status, body bytes)."""
    t0 = time.perf_counter()
    raw = socket.create_connection((ip, port), timeout=30, source_address=(src, 0))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t1 = time.perf_counter()
    tls = ctx.wrap_socket(raw, server_hostname="bench-ca.local")
    t2 = time.perf_counter()
    head = (f"POST /v1/certmesh/renew HTTP/1.1\r\nHost: bench-ca.local:{port}\r\n"
            f"Connection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    tls.sendall(head + body)
    data = tls.recv(65536)
    t3 = time.perf_counter()
    while b"\r\n\r\n" not in data:
        more = tls.recv(65536)
        if not more:
            raise ConnectionError("connection closed before the response head")
        data += more
    header, rest = data.split(b"\r\n\r\n", 1)
    length = next((int(l.split(b":", 1)[1]) for l in header.split(b"\r\n")
                   if l.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        more = tls.recv(65536)
        if not more:
            raise ConnectionError("connection closed before the whole body")
        rest += more
    t4 = time.perf_counter()
    tls.close()
    ms = lambda a, b: round((b - a) * 1000, 3)
    return ({"tcp_ms": ms(t0, t1), "tls_ms": ms(t1, t2), "first_byte_ms": ms(t2, t3),
             "total_ms": ms(t0, t4)}, int(header.split(b" ", 2)[1]), rest)


def check(member, status, answer, root, now):
    """Why this answer is wrong, or None."""
    if status != 200:
        return f"HTTP {status}: {answer[:200]!r}"
    doc = json.loads(answer)
    if doc.get("hostname") != member["host"]:
        return f"answer names {doc.get('hostname')!r}"
    cert = x509.load_pem_x509_certificate(doc["cert_pem"].encode())
    if x509.load_pem_x509_certificate(doc["ca_pem"].encode()) != root:
        return "the answer's root is not the mesh's root"
    if cert.issuer != root.subject:
        return "issuer is not the root"
    root.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                             ec.ECDSA(cert.signature_hash_algorithm))
    before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    if not (before <= now <= after):
        return "not valid now"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if sorted(names.get_values_for_type(x509.DNSName)) != member["names"]:
        return f"names {names.get_values_for_type(x509.DNSName)} != {member['names']}"
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != member["next_pub"]:
        return "not the fresh key's certificate"
    if cert.serial_number == member["old_serial"]:
        return "serial unchanged"
    return None


def install(member, answer):
    """After a checked renewal: the member's files become the new certificate and key, and a
    fresh key + CSR are made for the next run (outside every timer), as a member installs one."""
    d, doc = member["dir"], json.loads(answer)
    os.replace(os.path.join(d, "next-key.pem"), os.path.join(d, "key.pem"))
    with open(os.path.join(d, "cert.pem"), "w") as f:
        f.write(doc["cert_pem"])
    with open(os.path.join(d, "fullchain.pem"), "w") as f:
        f.write(doc["cert_pem"] + doc["ca_pem"])
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, member["host"])]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(member["host"])]), False)
           .sign(key, hashes.SHA256()))
    fd = os.open(os.path.join(d, "next-key.pem"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(os.path.join(d, "renew.csr"), "wb") as f:
        f.write(csr.public_bytes(serialization.Encoding.PEM))


def load(members_dir, ca_pem, addrs):
    out = []
    for i, host in enumerate(sorted(os.listdir(members_dir))):
        d = os.path.join(members_dir, host)
        ctx = ssl.create_default_context(cafile=ca_pem)
        ctx.load_cert_chain(os.path.join(d, "fullchain.pem"), os.path.join(d, "key.pem"))
        with open(os.path.join(d, "cert.pem"), "rb") as f:
            cur = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(d, "next-key.pem"), "rb") as f:
            nxt = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(d, "renew.csr")) as f:
            body = json.dumps({"csr_pem": f.read()}).encode()
        san = cur.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        out.append({
            "host": host, "dir": d, "ctx": ctx, "body": body, "src": addrs[i % len(addrs)],
            "names": sorted(san.get_values_for_type(x509.DNSName)), "old_serial": cur.serial_number,
            "next_pub": nxt.public_key().public_bytes(serialization.Encoding.DER,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo),
        })
    return out


def stats(v):
    if not v:
        return None
    v = sorted(v)
    q = lambda p: v[max(0, math.ceil(p * len(v)) - 1)]   # nearest rank
    return {"n": len(v), "p50": round(statistics.median(v), 2), "p95": round(q(0.95), 2),
            "p99": round(q(0.99), 2), "max": round(v[-1], 2), "mean": round(statistics.mean(v), 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", required=True)
    ap.add_argument("--ca-pem", required=True)
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--addrs", required=True, help="comma-separated source addresses")
    ap.add_argument("--mode", choices=["uniform", "burst"], required=True)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--pool", type=int, default=32)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    with open(args.ca_pem, "rb") as f:
        root = x509.load_pem_x509_certificate(f.read())
    members = load(args.members, args.ca_pem, args.addrs.split(","))
    results = [None] * len(members)

    def one(i, due):
        m = members[i]
        late = max(0.0, time.perf_counter() - due) * 1000 if due is not None else 0.0
        try:
            t, status, answer = request(args.ip, args.port, m["src"], m["ctx"], m["body"])
            results[i] = {"t": t, "status": status, "answer": answer, "late_ms": late}
        except Exception as e:  # noqa: BLE001 - every failure is counted and shown
            results[i] = {"error": f"{type(e).__name__}: {e}", "late_ms": late}

    t_start = time.perf_counter()
    if args.mode == "burst":
        with concurrent.futures.ThreadPoolExecutor(args.pool) as pool:
            list(pool.map(lambda i: one(i, None), range(len(members))))
    else:
        rng = random.Random(args.seed)
        plan = sorted((rng.uniform(0, args.window), i) for i in range(len(members)))
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            for at, i in plan:
                due = t_start + at
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(one, i, due)
    elapsed = time.perf_counter() - t_start

    now = datetime.datetime.now(datetime.timezone.utc)
    failures = []
    for m, r in zip(members, results):
        why = r.get("error") if r else "no result"
        if why is None:
            try:
                why = check(m, r["status"], r["answer"], root, now)
            except Exception as e:  # noqa: BLE001
                why = f"check failed: {type(e).__name__}: {e}"
        if why:
            failures.append({"host": m["host"], "why": why})
        else:
            install(m, r["answer"])
    ok = [r["t"] for r in results if r and "t" in r]
    print(json.dumps({
        "mode": args.mode, "members": len(members), "window_s": args.window,
        "pool": args.pool if args.mode == "burst" else 64,
        "source_addresses": len(set(m["src"] for m in members)),
        "elapsed_s": round(elapsed, 2),
        "rate_per_s": round(len(members) / elapsed, 1),
        "total_ms": stats([t["total_ms"] for t in ok]),
        "tls_handshake_ms": stats([t["tls_ms"] for t in ok]),
        "request_to_first_byte_ms": stats([t["first_byte_ms"] for t in ok]),
        "arrival_lateness_ms": stats([r["late_ms"] for r in results if r]),
        "failures": len(failures),
        "failure_samples": failures[:5],
        "checked": len(members) - len(failures),
    }))


if __name__ == "__main__":
    main()
