"""Shared helpers for the bench/ scripts: talking to `ten serve` over its control socket."""

import http.client
import json
import os
import socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target/release")
TEN = os.path.join(RELEASE, "ten")
FIXTURE = os.path.join(RELEASE, "tenement-fixture")

# nginx's `location /` doing what ten serve does for every request: proxy to the `app`
# upstream with keep-alive, passing the client's Host and the four forwarding headers.
NGINX_AS_TEN = """    location / {
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header Forwarded "for=$remote_addr;host=\\"$http_host\\";proto=$scheme";
    }"""


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pss_kb(pid):
    """Proportional set size of process `pid` in KB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


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


def wait_running(ctl, n, seconds=600):
    """Waits until `n` instances are running on the server at control socket `ctl` (it may
    still be starting); returns the instance list."""
    import time
    for _ in range(int(seconds * 10)):
        try:
            ps = api(ctl, "GET", "/api/instances")
            if sum(1 for i in ps if i["state"] == "running") == n:
                return ps
        except (OSError, RuntimeError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{n} instances did not all start")


class Server:
    """A real `ten serve` (release build) on a temp data dir, for `with` blocks.

    `services` is the TOML after [settings]; `{tmp}` in it is replaced by the temp directory.
    """

    def __init__(self, services, prefix="ten-bench-", env=None, args=(), port=0):
        import subprocess
        import tempfile
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        with open(f"{self.tmp}/tenement.toml", "w") as f:
            f.write(f'[settings]\ndata_dir = "{self.tmp}/data"\nhealth_check_interval = 60\n\n')
            f.write(services.replace("{tmp}", self.tmp))
        self.log = open(f"{self.tmp}/serve.log", "w")
        self.proc = subprocess.Popen(
            [TEN, "serve", "--config", f"{self.tmp}/tenement.toml", "--port", str(port), "--bind", "127.0.0.1", *args],
            stdout=self.log, stderr=self.log, env={**os.environ, "TENEMENT_LOG": "warn", **(env or {})})
        self.ctl = f"{self.tmp}/data/ten.sock"
        import time
        for _ in range(1000):
            try:
                api(self.ctl, "GET", "/api/instances")
                return
            except (OSError, RuntimeError):
                time.sleep(0.01)
        raise RuntimeError("ten serve did not start")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        import shutil
        self.proc.terminate()
        self.proc.wait(timeout=300)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
