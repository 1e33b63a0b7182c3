"""Shared helpers for the bench/ scripts: talking to `ten serve` over its control socket."""

import http.client
import json
import os
import socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target/release")
TEN = os.path.join(RELEASE, "ten")
FIXTURE = os.path.join(RELEASE, "tenement-fixture")


class UnixConn(http.client.HTTPConnection):
    """HTTP over a Unix socket."""

    def __init__(self, path, timeout=120):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def request(sock, method, path, body=None):
    """(status, raw body) of one request over a Unix socket."""
    c = UnixConn(sock)
    c.request(method, path, body=json.dumps(body) if body else None, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def api(ctl, method, path, body=None):
    """A management API call; raises on an error status; returns the decoded JSON."""
    status, data = request(ctl, method, path, body)
    if status >= 300:
        raise RuntimeError(f"{method} {path}: {status} {data!r}")
    return json.loads(data) if data else None
