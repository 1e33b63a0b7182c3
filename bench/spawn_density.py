#!/usr/bin/env python3
"""Spawn-to-ready latency, spawn throughput, and ten serve's memory per instance.

Usage: bench/spawn_density.py [--instances 200] [--density 0,100,1000] [--isolation process,namespace]

Builds release binaries, starts a real `ten serve` on a temp data dir, and drives it through
its control socket (the same API `ten spawn` uses; POST /api/instances returns once the
instance is ready: socket accepts and GET /health answers 200). The tenant is the compiled
fixture app (crates/fixture-app), a tiny Unix-socket HTTP server. Prints markdown tables.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from tenbench import FIXTURE, ROOT, TEN, api





def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Server:
    def __init__(self, isolation):
        self.dir = tempfile.mkdtemp(prefix="ten-bench-")
        self.data = os.path.join(self.dir, "data")
        with open(os.path.join(self.dir, "tenement.toml"), "w") as f:
            f.write(f"""
[settings]
data_dir = "{self.data}"
health_check_interval = 60

[service.tiny]
command = "{FIXTURE}"
socket = "{self.dir}/s/{{id}}.sock"
health = "/health"
isolation = "{isolation}"
""")
        self.log = open(os.path.join(self.dir, "serve.log"), "w")
        self.proc = subprocess.Popen(
            [TEN, "serve", "--config", os.path.join(self.dir, "tenement.toml"), "--port", "0", "--bind", "127.0.0.1"],
            stdout=self.log, stderr=self.log, env={**os.environ, "TENEMENT_LOG": "warn"})
        self.ctl = os.path.join(self.data, "ten.sock")
        for _ in range(500):
            try:
                api(self.ctl, "GET", "/api/instances")
                return
            except (OSError, RuntimeError):
                time.sleep(0.01)
        raise RuntimeError("ten serve did not start")

    def spawn(self, i):
        t0 = time.perf_counter()
        api(self.ctl, "POST", "/api/instances", {"service": "tiny", "id": f"i{i}"})
        return time.perf_counter() - t0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=300)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def latency_and_throughput(isolation, n):
    s = Server(isolation)
    try:
        lat = [s.spawn(i) for i in range(n)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(s.spawn, range(n, 2 * n)))
        wall = time.perf_counter() - t0
    finally:
        s.stop()
    ms = [x * 1000 for x in lat]
    return statistics.median(ms), pct(ms, 99), max(ms), n / wall


def density(points):
    s = Server("process")
    rows = []
    try:
        time.sleep(0.5)
        spawned = 0
        base = None
        for target in points:
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(s.spawn, range(spawned, target)))
            spawned = target
            time.sleep(1.0)
            kb = rss_kb(s.proc.pid)
            base = kb if base is None else base
            per = (kb - base) / target if target else 0
            rows.append((target, kb, per))
    finally:
        s.stop()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--density", default="0,100,1000")
    ap.add_argument("--isolation", default="process,namespace")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins"], cwd=ROOT, check=True)

    print(f"\n## Spawn-to-ready, {a.instances} instances of the compiled fixture app\n")
    print("| isolation | median (ms) | p99 (ms) | max (ms) | throughput, 16 concurrent (instances/s) |")
    print("|---|---|---|---|---|")
    for iso in a.isolation.split(","):
        med, p99, mx, tput = latency_and_throughput(iso, a.instances)
        print(f"| {iso} | {med:.2f} | {p99:.2f} | {mx:.2f} | {tput:.0f} |", flush=True)

    points = [int(x) for x in a.density.split(",")]
    print("\n## Resident memory of ten serve (process isolation, instances running)\n")
    print("| instances | ten serve RSS (KB) | KB per instance over 0 |")
    print("|---|---|---|")
    for n, kb, per in density(points):
        print(f"| {n} | {kb} | {per:.1f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
