#!/usr/bin/env python3
"""Driver for bench/certmesh/names.sh. Runs on one lab host (inside its namespace, under its host
name and KOI_HOME, started by names.sh) and times `koi` commands through that host's daemon, wall
time from spawn to exit, one JSON object per line on stdout:
  floor    `koi status --json` (the CLI → daemon round trip, no certmesh work)
  members  `koi certmesh members --json`
  accept   `koi certmesh request-names <prefix><i>.lan [--host H] --requester bench --json`, a new
           name each run: checked, audited (`names_requested`, signed) and the roster saved; on a
           member also the mutual-TLS round trip to the CA
  noop     the same name again each run: checked and answered `already`, nothing written
Every answer is checked (the run stops at the first unexpected one)."""
import argparse
import json
import subprocess
import sys
import time


def run(cmd):
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    ms = (time.perf_counter() - t) * 1000
    if out.returncode != 0:
        sys.exit("%s failed: %s %s" % (" ".join(cmd), out.stdout, out.stderr))
    return ms, json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--koi", required=True)
    ap.add_argument("--kind", required=True, choices=["floor", "members", "accept", "noop"])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--host")
    ap.add_argument("--prefix", default="n")
    ap.add_argument("--where", default="")
    a = ap.parse_args()
    host = ["--host", a.host] if a.host else []
    for i in range(a.n):
        if a.kind == "floor":
            ms, _ = run([a.koi, "status", "--json"])
        elif a.kind == "members":
            ms, ans = run([a.koi, "certmesh", "members", "--json"])
            if len(ans["members"]) < 2:
                sys.exit("members: %s" % ans)
        else:
            name = "%s%d.lan" % (a.prefix, i if a.kind == "accept" else 0)
            ms, ans = run([a.koi, "certmesh", "request-names", name, *host, "--requester", "bench", "--json"])
            want = "accepted" if a.kind == "accept" else "already"
            if ans[want] != [name]:
                sys.exit("request-names %s: %s" % (name, ans))
        print(json.dumps({"kind": a.kind, "where": a.where, "ms": round(ms, 3)}), flush=True)


main()
