#!/usr/bin/env python3
"""isolation = "wasm": cold wake, throughput against native, memory per idle instance, compile time.

Usage: bench/wasm.py [--seconds 5] [--rounds 4] [--wakes 30] [--idle 1000] [--connections 32]

Needs the release build (cargo build --release --bins) and the wasm32-wasip2 target; builds
the guest (crates/tenement-wasm/guests, release) itself. Prints markdown tables:

- first spawn (check + compile + start + healthy) and cached spawn of the hello handler;
- cold wake: an instance with idle_timeout = 1 is left to sleep, then one GET / is timed on a
  new connection; each wake is paired with a warm GET / on a new connection right after it,
  and the median of the differences is tenement's wake overhead beyond a warm request;
- requests/s through the front door (keep-alive, GET /): the wasm handler (a fresh component
  instance per request) against the fixture app at `process` (native code, same reply
  size), rounds alternating;
- PSS per idle instance with --idle instances running: every process of each instance
  (shim, init, wasm host), from /proc/PID/smaps_rollup, divided by the count.
"""

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tenbench import FIXTURE, RELEASE, ROOT, Server, api, free_port, pss_kb

LOADGEN = os.path.join(RELEASE, "tenement-loadgen")
GUESTS = os.path.join(ROOT, "crates/tenement-wasm/guests")


def build_guest():
    target = os.path.join(ROOT, "target/wasm-guests")
    subprocess.run(["cargo", "build", "--release", "--locked", "--target", "wasm32-wasip2",
                    "--manifest-path", f"{GUESTS}/Cargo.toml", "--target-dir", target],
                   check=True, capture_output=True)
    return os.path.join(target, "wasm32-wasip2/release/handler.wasm")


def timed_get(port, host, path="/"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t0 = time.perf_counter()
    c.request("GET", path, headers={"Host": host})
    r = c.getresponse()
    r.read()
    dt = time.perf_counter() - t0
    c.close()
    assert r.status == 200, (host, r.status)
    return dt


def spawn(ctl, service, id_):
    t0 = time.perf_counter()
    api(ctl, "POST", "/api/instances", {"service": service, "id": id_})
    while api(ctl, "GET", f"/api/instances/{service}:{id_}")["state"] != "running":
        time.sleep(0.001)
    return time.perf_counter() - t0


def tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out




def loadgen(port, host, seconds, conns):
    out = subprocess.run([LOADGEN, "--tcp", f"127.0.0.1:{port}", "--host", host, "-c", str(conns), "-d", str(seconds)],
                         check=True, capture_output=True, text=True).stdout
    return dict(kv.split("=") for kv in out.split())




def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--wakes", type=int, default=30)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--only-wake", action="store_true", help="stop after the cold wakes")
    a = ap.parse_args()
    wasm = build_guest()
    port = free_port()
    services = f"""
[service.hello]
command = "{wasm}"
isolation = "wasm"
health = "/health"

[service.sleepy]
command = "{wasm}"
isolation = "wasm"
health = "/health"
idle_timeout = 1

[service.osleepy]
command = "{wasm}"
isolation = "wasm"
health = "/health"
idle_timeout = 1
outbound = true

[service.nsleepy]
command = "{FIXTURE}"
workdir = "{ROOT}"
isolation = "namespace"
health = "/health"
idle_timeout = 1

[service.psleepy]
command = "{FIXTURE}"
isolation = "process"
health = "/health"
idle_timeout = 1

[service.native]
command = "{FIXTURE}"
isolation = "process"
health = "/health"

[service.idle]
command = "{wasm}"
isolation = "wasm"
health = "/health"
memory_limit_mb = 64
"""
    with Server(services, prefix="ten-bench-wasm-", args=("--domain", "bench.test"), port=port) as s:
        ctl = s.ctl
        first = spawn(ctl, "hello", "one")
        cached = statistics.median(spawn(ctl, "hello", f"c{i}") for i in range(10))
        for i in range(10):
            api(ctl, "DELETE", f"/api/instances/hello:c{i}")
        print("\n## Spawn (hello handler, 149 KB component)\n")
        print("| first spawn: check + compile + start + healthy (ms) | cached spawn, median of 10 (ms) | compile, the difference (ms) |")
        print("|---|---|---|")
        print(f"| {first * 1000:.1f} | {cached * 1000:.2f} | {(first - cached) * 1000:.1f} |", flush=True)

        print(f"\n## Cold wake ({a.wakes} wakes; medians)\n")
        print("| backend | sleeping → response (ms) | warm request, new connection (ms) | overhead beyond a warm request (ms, paired median) |")
        print("|---|---|---|---|")
        for svc, label in [("sleepy", "wasm (hello handler)"),
                           ("osleepy", "wasm, outbound = true (the host's network)"),
                           ("nsleepy", "namespace (fixture, native)"),
                           ("psleepy", "process (fixture, native)")]:
            api(ctl, "POST", "/api/instances", {"service": svc, "id": "w"})
            wakes, warms = [], []
            for _ in range(a.wakes):
                while api(ctl, "GET", f"/api/instances/{svc}:w")["state"] != "sleeping":
                    time.sleep(0.05)
                wakes.append(timed_get(port, f"w.{svc}.bench.test"))
                warms.append(timed_get(port, f"w.{svc}.bench.test"))
            over = statistics.median(w - m for w, m in zip(wakes, warms)) * 1000
            print(f"| {label} | {statistics.median(wakes) * 1000:.2f} | {statistics.median(warms) * 1000:.2f} | {over:.2f} |", flush=True)
        if a.only_wake:
            return

        api(ctl, "POST", "/api/instances", {"service": "native", "id": "one"})
        while api(ctl, "GET", "/api/instances/native:one")["state"] != "running":
            time.sleep(0.01)
        print(f"\n## Requests/s through the front door ({a.connections} keep-alive connections, {a.seconds:.0f} s per run)\n")
        print("| round | backend | requests/s | p50 (µs) | p99 (µs) | errors |")
        print("|---|---|---|---|---|---|")
        rps = {"wasm": [], "native": []}
        for round_ in range(1, a.rounds + 1):
            order = [("wasm", "one.hello.bench.test"), ("native", "one.native.bench.test")]
            if round_ % 2 == 0:
                order.reverse()
            for name, host in order:
                r = loadgen(port, host, a.seconds, a.connections)
                rps[name].append(float(r["rps"]))
                print(f"| {round_} | {name} | {r['rps']} | {r['p50_us']} | {r['p99_us']} | {r['errors']} |", flush=True)
        ratios = [w / n for w, n in zip(rps["wasm"], rps["native"])]
        print(f"\nwasm / native per round: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")

        if a.idle:
            t0 = time.perf_counter()
            for i in range(a.idle):
                api(ctl, "POST", "/api/instances", {"service": "idle", "id": f"i{i}"})
            ps = []
            while True:
                ps = [i for i in api(ctl, "GET", "/api/instances") if i["instance"].startswith("idle:")]
                if sum(1 for i in ps if i["state"] == "running") == a.idle:
                    break
                time.sleep(0.5)
            started = time.perf_counter() - t0
            time.sleep(5)  # let start-up pages settle
            pids = [p for i in ps for p in tree(i["pid"])]
            total = sum(pss_kb(p) for p in pids)
            # The host is the leaf of each instance's tree (shim → init → host, one image: the
            # host is a fork, not an exec).
            hosts = [tree(i["pid"])[-1] for i in ps]
            host_total = sum(pss_kb(p) for p in hosts)
            serve_pss = pss_kb(s.proc.pid)
            print(f"\n## Memory with {a.idle} idle wasm instances running\n")
            print("| instances | processes | PSS per instance, all its processes (MB) | of which the wasm host (MB) | ten serve PSS (MB) | started in (s) |")
            print("|---|---|---|---|---|---|")
            print(f"| {a.idle} | {len(pids)} | {total / a.idle / 1024:.2f} | {host_total / a.idle / 1024:.2f} | {serve_pss / 1024:.1f} | {started:.1f} |", flush=True)


if __name__ == "__main__":
    main()
