#!/usr/bin/env python3
"""Front-door benchmark: proxy throughput/latency against direct and nginx, and cold-wake latency.

Usage: bench/proxy.py [--seconds 10] [--connections 32] [--rounds 3] [--wakes 20]
                      [--before OLD_TEN] [--hyper] [--no-nginx]

Same backend, same run: one instance of the compiled fixture app (crates/fixture-app) under
`ten serve`; the load generator (crates/loadgen, N keep-alive connections) hits
  1. its Unix socket directly,
  2. `ten serve` on TCP with Host a.tiny.bench.test,
  3. nginx (when installed) on TCP, proxying to the same socket with upstream keepalive
     (2 workers, reuseport, no keep-alive request cap: its best setup for this test) and
     sending the app what ten serve sends: the client's Host and X-Forwarded-For,
     X-Forwarded-Proto, X-Forwarded-Host and Forwarded (checked before the runs),
  4. the same nginx with its defaults (Host "app", no forwarding headers), for reference,
  5. with --before OLD_TEN, another build of ten serve (its own instance of the same app), for
     before/after figures of a change; with --hyper, ten serve with `fast_path = false`,
alternating for --rounds rounds (the proxies' order reverses each round), since this
shared machine drifts between runs.
Cold wake: an instance with idle_timeout = 1 is left to sleep, then one request is timed
through `ten serve`; the app's own start-to-listen time (measured by starting the same command
by hand and polling its socket) is subtracted, as the issue defines the overhead. The app's
own time to answer what a wake asks (GET /health, then the request) is measured too and
subtracted in a last column: what is left is tenement's alone. Overheads are medians of the
per-wake differences (each wake minus the baseline run right after it). Prints markdown tables.
"""

import argparse
import http.client
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from tenbench import FIXTURE, NGINX_AS_TEN, RELEASE, ROOT, TEN, api, free_port

LOADGEN = os.path.join(RELEASE, "tenement-loadgen")
HELLO = os.path.join(ROOT, "examples/hello/app.py")







def loadgen(args, seconds, conns):
    out = subprocess.run([LOADGEN, *args, "-c", str(conns), "-d", str(seconds)], check=True, capture_output=True, text=True).stdout
    return dict(kv.split("=") for kv in out.split())


def cpu_ticks(pids):
    """(user, system) clock ticks of every thread of `pids` so far."""
    u = st = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            u, st = u + int(fields[11]), st + int(fields[12])
    return u, st


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def start_to_listen(cmd, cwd, tmp):
    """For the app alone, started by hand: seconds from exec to a connectable socket, and to
    the answers of what ten serve asks on a wake (GET /health, then GET /, each on a new
    connection)."""
    sock = os.path.join(tmp, "baseline.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    env = {"PATH": os.environ["PATH"], "SOCKET_PATH": sock, "SERVICE_NAME": "b", "INSTANCE_ID": "b"}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.close()
            break
        except OSError:
            time.sleep(0.0002)
    listening = time.perf_counter() - t0
    for path in ("/health", "/"):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(4096)
        s.close()
    answered = time.perf_counter() - t0
    p.kill()
    p.wait()
    return listening, answered


def timed_get(port, host):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t0 = time.perf_counter()
    c.request("GET", "/", headers={"Host": host})
    r = c.getresponse()
    r.read()
    dt = time.perf_counter() - t0
    c.close()
    assert r.status == 200, r.status
    return dt


def bootstrap_median(values, draws=10000):
    """A 95% interval for the median of `values` (resampled with replacement, fixed seed)."""
    rng = random.Random(1)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[draws // 40], medians[draws - 1 - draws // 40]


def header_names(port, host):
    """The header names the app received for a GET through the proxy on `port`."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/headers", headers={"Host": host})
    lines = c.getresponse().read().decode().splitlines()
    c.close()
    return sorted(line.split(":")[0] for line in lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--wakes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="ten serve and nginx alternate this many times")
    ap.add_argument("--before", help="another ten binary to measure beside this one")
    ap.add_argument("--hyper", action="store_true", help="also ten serve with fast_path = false")
    ap.add_argument("--no-nginx", action="store_true")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins"], cwd=ROOT, check=True)

    tmp = tempfile.mkdtemp(prefix="ten-proxy-bench-")
    port = free_port()
    with open(os.path.join(tmp, "tenement.toml"), "w") as f:
        f.write(f"""
[settings]
data_dir = "{tmp}/data"
health_check_interval = 60

[service.tiny]
command = "{FIXTURE}"
socket = "{tmp}/{{name}}-{{id}}.sock"
health = "/health"
isolation = "process"

[service.sleepy]
command = "{FIXTURE}"
socket = "{tmp}/{{name}}-{{id}}.sock"
health = "/health"
idle_timeout = 1
isolation = "process"

[service.pysleepy]
command = "python3 {HELLO}"
socket = "{tmp}/{{name}}-{{id}}.sock"
health = "/health"
idle_timeout = 1
isolation = "process"
""")
    log = open(os.path.join(tmp, "serve.log"), "w")
    serve = subprocess.Popen([TEN, "serve", "--config", f"{tmp}/tenement.toml", "--port", str(port), "--bind", "127.0.0.1", "--domain", "bench.test"],
                             stdout=log, stderr=log, env={**os.environ, "TENEMENT_LOG": "warn"})
    ctl = f"{tmp}/data/ten.sock"
    nginx = None
    others = []  # (name, port, process): other ten serve processes, each with its own instance
    for name, binary, extra in [("through ten serve (before)", a.before, ""),
                                ("through ten serve, fast_path = false", TEN if a.hyper else None, "fast_path = false")]:
        if binary:
            d = f"{tmp}/{len(others)}"
            os.makedirs(d)
            with open(f"{d}/tenement.toml", "w") as f:
                f.write(f'[settings]\ndata_dir = "{d}/data"\nhealth_check_interval = 60\n{extra}\n'
                        f'[service.tiny]\ncommand = "{FIXTURE}"\nsocket = "{d}/{{name}}-{{id}}.sock"\n'
                        f'health = "/health"\nisolation = "process"\n')
            p = free_port()
            proc = subprocess.Popen([binary, "serve", "--config", f"{d}/tenement.toml", "--port", str(p), "--bind", "127.0.0.1", "--domain", "bench.test"],
                                    stdout=log, stderr=log, env={**os.environ, "TENEMENT_LOG": "warn"})
            others.append((name, p, proc, f"{d}/data/ten.sock"))
    try:
        for c in [ctl] + [o[3] for o in others]:
            for _ in range(500):
                try:
                    api(c, "GET", "/api/instances")
                    break
                except (OSError, RuntimeError):
                    time.sleep(0.01)
            api(c, "POST", "/api/instances", {"service": "tiny", "id": "a"})
        sock = f"{tmp}/tiny-a.sock"

        # (name, loadgen args, pids whose CPU time is the proxy's)
        runs = [("direct to the Unix socket", ["--unix", sock], [])]
        runs.append(("through ten serve", ["--tcp", f"127.0.0.1:{port}", "--host", "a.tiny.bench.test"], [serve.pid]))
        for name, p, proc, _ in others:
            runs.append((name, ["--tcp", f"127.0.0.1:{p}", "--host", "a.tiny.bench.test"], [proc.pid]))
        if shutil.which("nginx") and not a.no_nginx:
            nport, bare_port = free_port(), free_port()
            os.makedirs(f"{tmp}/nginx/logs", exist_ok=True)
            with open(f"{tmp}/nginx/nginx.conf", "w") as f:
                f.write(f"""
user root;
worker_processes 2;
error_log {tmp}/nginx/logs/error.log warn;
pid {tmp}/nginx/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000000000;
  upstream app {{ server unix:{sock}; keepalive 64; keepalive_requests 1000000000; }}
  # What ten serve does for every request: the client's Host and the four forwarding headers.
  server {{
    listen 127.0.0.1:{nport} reuseport;
{NGINX_AS_TEN}
  }}
  # nginx's defaults: Host "app", no forwarding headers (less for the app to parse).
  server {{
    listen 127.0.0.1:{bare_port} reuseport;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
            nginx = subprocess.Popen(["nginx", "-p", f"{tmp}/nginx", "-c", f"{tmp}/nginx/nginx.conf", "-g", "daemon off;"])
            time.sleep(0.5)
            host = ["--host", "a.tiny.bench.test"]
            runs.append(("through nginx", ["--tcp", f"127.0.0.1:{nport}", *host], children(nginx.pid)))
            same = [header_names(p, "a.tiny.bench.test") for p in (port, nport)]
            assert same[0] == same[1], f"ten serve and nginx send different headers: {same}"
            runs.append(("through nginx, bare", ["--tcp", f"127.0.0.1:{bare_port}", *host], children(nginx.pid)))
        print(f"\n## Proxy: {a.connections} keep-alive connections, {a.seconds:.0f} s each, GET / (17-byte body)\n")
        print("| round | path | requests/s | p50 (µs) | p99 (µs) | errors | proxy CPU user + sys (µs/request) |")
        print("|---|---|---|---|---|---|---|")
        rps = {name: [] for name, _, _ in runs}
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        for round_ in range(1, a.rounds + 1):
            # The proxies swap places every round, so neither always runs right after the
            # direct path (or first after a quiet spell of this shared machine).
            order = runs if round_ % 2 else [runs[0], *reversed(runs[1:])]
            for name, args, pids in order:
                before = cpu_ticks(pids)
                r = loadgen(args, a.seconds, a.connections)
                after, n = cpu_ticks(pids), int(r["requests"])
                cpu = "-" if not pids else f"{(after[0] - before[0]) * tick_us / n:.1f} + {(after[1] - before[1]) * tick_us / n:.1f}"
                rps[name].append(float(r["rps"]))
                print(f"| {round_} | {name} | {r['rps']} | {r['p50_us']} | {r['p99_us']} | {r['errors']} | {cpu} |", flush=True)
        for other in ["through nginx", "through nginx, bare"] + [o[0] for o in others]:
            if other in rps:
                ratios = [t / n for t, n in zip(rps["through ten serve"], rps[other])]
                won = sum(r >= 1 for r in ratios)
                low, high = bootstrap_median(ratios)
                print(f"\nten serve / {other[8:]}, per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
                      f"median {statistics.median(ratios):.2f} (95% bootstrap interval {low:.2f}–{high:.2f}); "
                      f"ten serve ahead in {won} of {len(ratios)} rounds")

        if not a.wakes:
            return
        print(f"\n## Cold wake through ten serve ({a.wakes} wakes each; medians)\n")
        print("| backend | request → response, sleeping (ms) | app alone: start-to-listen (ms) | tenement overhead (ms) "
              "| app alone: start to both answers (ms) | overhead beyond the app's own answers (ms) |")
        print("|---|---|---|---|---|---|")
        for svc, cmd, cwd in [("sleepy", [FIXTURE], ROOT), ("pysleepy", ["python3", HELLO], ROOT)]:
            api(ctl, "POST", "/api/instances", {"service": svc, "id": "w"})
            wakes, listens, answers = [], [], []
            for _ in range(a.wakes):
                while api(ctl, "GET", f"/api/instances/{svc}:w")["state"] != "sleeping":
                    time.sleep(0.05)
                wakes.append(timed_get(port, f"w.{svc}.bench.test"))
                listened, answered = start_to_listen(cmd, cwd, tmp)
                listens.append(listened)
                answers.append(answered)
            w, b_, c = (statistics.median(x) * 1000 for x in (wakes, listens, answers))
            # Each wake minus the baseline measured right after it, then the median: robust to
            # an app whose own start time jumps between modes (this machine's Python does).
            over, beyond = (statistics.median(x - y for x, y in zip(wakes, base)) * 1000
                            for base in (listens, answers))
            label = "compiled (fixture)" if svc == "sleepy" else "Python (examples/hello)"
            print(f"| {label} | {w:.2f} | {b_:.2f} | {over:.2f} | {c:.2f} | {beyond:.2f} |", flush=True)
    finally:
        if nginx:
            nginx.terminate()
            nginx.wait()
        for proc in [serve] + [o[2] for o in others]:
            proc.terminate()
            proc.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
