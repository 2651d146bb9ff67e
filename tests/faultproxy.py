"""A fault-injecting HTTP proxy in front of a loopback registry, run as its own process by the tests.

    python faultproxy.py BACKEND_PORT PORT_FILE LOG_FILE MODE

It listens on 127.0.0.1 (a free port, written to PORT_FILE), forwards every request to
127.0.0.1:BACKEND_PORT and logs "METHOD PATH RANGE -> STATUS" lines to LOG_FILE. MODE says what it breaks:

    pass            nothing
    drop-once       the first response of each blob path breaks off after half its body (the client resumes)
    drop-always     every blob response breaks off after half its body
    short-always    every blob response is cut to half, with a matching Content-Length
    5xx-once        the first request of each path answers 503
    5xx-always      blob requests answer 503
    status:CODE     manifest requests answer CODE (401, 403, 404, 429, ...)
    corrupt         blob bodies have one byte flipped
    mediatype       manifests claim an unknown media type
    token:USER:PASS Bearer auth in front: /v2/ needs a token from /token, which needs USER:PASS (Basic)
    token:          the same, with tokens for anyone (as Docker Hub's for public images)

Only loopback is ever contacted. Each connection serves one request (HTTP/1.0), so no socket outlives it.
"""
from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import sys
import threading

BACKEND, PORT_FILE, LOG, MODE = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
TOKEN = "nsbuild-test-token"
seen: set[str] = set()
lock = threading.Lock()


def first_time(key: str) -> bool:
    with lock:
        if key in seen:
            return False
        seen.add(key)
        return True


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args: object) -> None:
        pass

    def log(self, status: int) -> None:
        with lock, open(LOG, "a") as f:
            f.write(f"{self.command} {self.path} {self.headers.get('Range', '-')} -> {status}\n")

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None, length: int | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.log(status)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:  # pushes: upload sessions, blob and manifest PUTs, forwarded as they are
        self.do_GET()

    def do_PUT(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        blob = "/blobs/" in self.path
        manifest = "/manifests/" in self.path
        if MODE.startswith("token:"):
            if self.path.startswith("/token"):
                creds = MODE[len("token:"):]
                if creds and self.headers.get("Authorization") != "Basic " + base64.b64encode(creds.encode()).decode():
                    return self.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}')
                return self.send(200, json.dumps({"token": TOKEN}).encode(), {"Content-Type": "application/json"})
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
                return self.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}',
                                 {"WWW-Authenticate": f'Bearer realm="{realm}",service="nsbuild-test"'})
        if MODE == "5xx-always" and blob or MODE == "5xx-once" and first_time(self.path):
            return self.send(503, b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}')
        if MODE.startswith("status:") and manifest:
            return self.send(int(MODE.split(":")[1]), b'{"errors":[{"code":"DENIED","message":"injected"}]}')
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization", "connection")}
        request_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection("127.0.0.1", BACKEND, timeout=30)
        try:
            conn.request(self.command, self.path, body=request_body or None, headers=headers)
            r = conn.getresponse()
            body = r.read()
            out = {k: v for k, v in r.getheaders() if k.lower() not in ("content-length", "connection",
                                                                        "transfer-encoding")}
            if "Location" in out and out["Location"].startswith(f"http://127.0.0.1:{BACKEND}/"):
                out["Location"] = out["Location"].replace(f":{BACKEND}/", f":{self.server.server_address[1]}/", 1)
        finally:
            conn.close()
        if self.command == "HEAD":
            return self.send(r.status, b"", out, length=int(r.getheader("Content-Length") or 0))
        if manifest and MODE == "mediatype" and r.status == 200:
            doc = json.loads(body)
            doc["mediaType"] = "application/vnd.example.unknown+json"
            body = json.dumps(doc).encode()
            out["Content-Type"] = doc["mediaType"]
            out.pop("Docker-Content-Digest", None)
        if blob and r.status in (200, 206) and len(body) > 1:
            if MODE == "drop-always" or MODE == "drop-once" and first_time(self.path):
                self.send_response(r.status)
                for k, v in out.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2])
                self.log(r.status)
                self.close_connection = True
                return  # the connection closes with half the promised body
            if MODE == "short-always":
                body = body[:len(body) // 2]
            if MODE == "corrupt":
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
        self.send(r.status, body, out)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(PORT_FILE + ".tmp", "w") as f:  # renamed: the test never reads half a port
    f.write(str(server.server_address[1]))
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
