"""A small plain-HTTP backend for the koi-proxy tests (HTTP/1.1, one thread per connection).
GET /            the request as JSON (name, path, headers), so tests see what the proxy sent
GET /slow/N      the same after N seconds
GET /sse         text/event-stream: `data: one`, then `data: two` once the file GATE exists
GET /big/N       N bytes of `x`, streamed in 64 KiB chunks
GET /close       the request as JSON, then the backend closes its connection
usage: backend.py PORT NAME [GATE]"""
import json, os, sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

port, name = int(sys.argv[1]), sys.argv[2]
gate = sys.argv[3] if len(sys.argv) > 3 else "/nonexistent"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/sse"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(b"data: one\n\n")
            self.wfile.flush()
            deadline = time.time() + 60
            while not os.path.exists(gate) and time.time() < deadline:
                time.sleep(0.05)
            self.wfile.write(b"data: two\n\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path.startswith("/big/"):
            n = int(self.path[5:])
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(n))
            self.end_headers()
            chunk = b"x" * 65536
            while n > 0:
                k = min(n, len(chunk))
                self.wfile.write(chunk[:k])
                n -= k
            return
        if self.path.startswith("/slow/"):
            time.sleep(float(self.path[6:]))
        length = int(self.headers.get("content-length") or 0)
        posted = self.rfile.read(length).decode(errors="replace") if length else ""
        body = json.dumps({
            "name": name,
            "path": self.path,
            "posted": posted,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        if self.path.startswith("/close"):
            self.send_header("connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
