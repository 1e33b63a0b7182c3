#!/usr/bin/env python3
"""Spawn-to-first-response and memory overhead per instance, per isolation level.

Usage: bench/isolation.py [--instances 20] [--levels process,namespace,sandbox]

For each level, a real `ten serve` (release) starts N instances of the compiled fixture app
one after the other. Spawn-to-first-response: from POST /api/instances on the control socket
to the first 200 from GET / on the instance's socket. Memory: PSS (/proc/PID/smaps_rollup) of
every process belonging to the instances (shim, init, runsc's sandbox and gofer, the app),
divided by N, minus the PSS per process of N copies of the same app started bare. Prints a markdown table.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from tenbench import FIXTURE, ROOT, Server, pss_kb, request







def processes_mentioning(needle, exclude):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) in exclude:
            continue
        try:
            blob = open(f"/proc/{pid}/environ", "rb").read() + open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if needle.encode() in blob:
            found.append(int(pid))
    return found


def bare_app_pss(tmp, n):
    """PSS per process of n bare copies of the app (shared pages split the same way)."""
    procs = []
    for i in range(n):
        sock = os.path.join(tmp, f"bare{i}.sock")
        procs.append(subprocess.Popen([FIXTURE], env={"SOCKET_PATH": sock, "PATH": os.environ["PATH"]},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while not request_ok(sock):
            time.sleep(0.01)
    time.sleep(1)
    kb = sum(pss_kb(p.pid) for p in procs) / n
    for p in procs:
        p.kill()
        p.wait()
    return kb


def request_ok(sock):
    try:
        return request(sock, "GET", "/")[0] == 200
    except OSError:
        return False


def run_level(level, n):
    services = f"""[service.app]
command = "{FIXTURE}"
socket = "{{tmp}}/s/{{id}}.sock"
health = "/health"
startup_timeout = 30
isolation = "{level}"
"""
    with Server(services, "ten-iso-bench-") as s:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            status, body = request(s.ctl, "POST", "/api/instances", {"service": "app", "id": f"i{i}"})
            if status != 201:
                return None, f"spawn failed: {body[:200]!r}"
            while not request_ok(f"{s.tmp}/s/i{i}.sock"):
                time.sleep(0.0005)
            times.append((time.perf_counter() - t0) * 1000)
        time.sleep(1)
        pids = processes_mentioning(s.tmp, {s.proc.pid, os.getpid()})
        total = sum(pss_kb(p) for p in pids)
        return (statistics.median(times), max(times), total / n, len(pids) / n), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--levels", default="process,namespace,sandbox")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp()
    bare = bare_app_pss(tmp, a.instances)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n## Isolation levels: {a.instances} instances of the compiled fixture (bare app: {bare:.0f} KB PSS each)\n")
    print("| isolation | spawn → first response, median (ms) | max (ms) | PSS per instance (KB) | overhead over the bare app (KB) | processes per instance |")
    print("|---|---|---|---|---|---|")
    for level in a.levels.split(","):
        result, err = run_level(level, a.instances)
        if err:
            print(f"| {level} | SKIPPED: {err} | | | | |")
            continue
        med, mx, pss, procs = result
        print(f"| {level} | {med:.1f} | {mx:.1f} | {pss:.0f} | {pss - bare:.0f} | {procs:.1f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
