#!/usr/bin/env python3
"""Spawn-to-ready cost of cgroups and of each storage mode, same backend, same run.

Usage: bench/limits.py [--instances 20]

Each row is a fresh `ten serve` (release) spawning N instances of the compiled fixture app one
after the other through the control socket (POST /api/instances answers once the instance is
ready). Rows: no cgroup (TENEMENT_NO_CGROUPS=1) and a plain data directory; a cgroup with
memory/cpu/pids limits; plus a tmpfs quota; plus a persistent ext4 image (first spawn creates
the image with mkfs; the re-spawn after a stop only loop-mounts it). Prints a markdown table.
"""

import argparse
import statistics
import subprocess
import sys
import time

from tenbench import FIXTURE, ROOT, Server, api

ROWS = [
    ("no cgroup, plain directory", "", {"TENEMENT_NO_CGROUPS": "1"}),
    ("cgroup (memory, cpu, pids), plain directory", "memory_limit_mb = 64\ncpu_shares = 100\n", {}),
    ("cgroup + tmpfs quota (16 MB)", "memory_limit_mb = 64\ncpu_shares = 100\nstorage_quota_mb = 16\n", {}),
    ("cgroup + ext4 image quota (16 MB), first spawn", "memory_limit_mb = 64\ncpu_shares = 100\nstorage_quota_mb = 16\nstorage_persist = true\n", {}),
]


def run(extra, env, n, respawn):
    services = f"""[service.app]
command = "{FIXTURE}"
socket = "{{tmp}}/s/{{id}}.sock"
health = "/health"
isolation = "process"
{extra}"""
    with Server(services, "ten-limits-bench-", env) as s:

        def spawn_all():
            times = []
            for i in range(n):
                t0 = time.perf_counter()
                api(s.ctl, "POST", "/api/instances", {"service": "app", "id": f"i{i}"})
                times.append((time.perf_counter() - t0) * 1000)
            return times

        first = spawn_all()
        again = None
        if respawn:
            for i in range(n):
                api(s.ctl, "DELETE", f"/api/instances/app:i{i}")
            again = spawn_all()
        return first, again


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=20)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins"], cwd=ROOT, check=True)
    print(f"\n## Spawn-to-ready by limits and storage mode ({a.instances} instances each, compiled fixture, process isolation)\n")
    print("| setup | median (ms) | p90 (ms) | over the first row (ms) |")
    print("|---|---|---|---|")
    base = None
    for name, extra, env in ROWS:
        persist = "storage_persist" in extra
        first, again = run(extra, env, a.instances, persist)
        rows = [(name, first)] + ([("cgroup + ext4 image quota (16 MB), re-spawn (mount only)", again)] if again else [])
        for label, t in rows:
            med = statistics.median(t)
            p90 = sorted(t)[int(0.9 * (len(t) - 1))]
            base = med if base is None else base
            print(f"| {label} | {med:.2f} | {p90:.2f} | {med - base:+.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
