"""Slow-header clients for the koi-proxy tests: opens COUNT TLS connections to IP:443 with SNI
HOST, sends a request line and one header, then one more header line per second on each, and
prints `closed=N open=M` every second until every connection was closed by the server or LIMIT
seconds passed. usage: slowloris.py IP HOST COUNT LIMIT"""
import select, socket, ssl, sys, time

ip, host, count, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
open_socks, closed = [], 0
for _ in range(count):
    try:
        raw = socket.create_connection((ip, 443), timeout=5)
        s = ctx.wrap_socket(raw, server_hostname=host)
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n".encode())
        s.setblocking(False)
        open_socks.append(s)
    except (OSError, ssl.SSLError):
        closed += 1
print(f"opened={len(open_socks)} refused={closed}", flush=True)
start = time.time()
while open_socks and time.time() - start < limit:
    time.sleep(1)
    still = []
    for s in open_socks:
        alive = True
        try:
            readable, _, _ = select.select([s], [], [], 0)
            if readable:
                try:
                    if s.recv(1024) == b"":
                        alive = False
                except ssl.SSLWantReadError:
                    pass
            if alive:
                s.send(b"X-Slow: 1\r\n")
        except (OSError, ssl.SSLError):
            alive = False
        if alive:
            still.append(s)
        else:
            closed += 1
            s.close()
    open_socks = still
    print(f"closed={closed} open={len(open_socks)}", flush=True)
print(f"closed={closed} open={len(open_socks)}", flush=True)
