#!/usr/bin/env python3
"""The tenant boundary's costs: before/after figures for docs/benchmarks.md.

Usage: bench/walls.py [--before OLD_TEN] [--spawns 30] [--wakes 20] [--rounds 6]
                      [--bad-tokens 3000] [--instances 3000] [--only spawn,wake,tokens,health]

For the release `ten` (and, with --before, another build of it, e.g. the commit before the
walls) it measures, each in a fresh `ten serve`:
  spawn   spawn-to-ready at `namespace`: POST /api/instances on the control socket (which
          answers once the instance is ready), --spawns sequential spawns per round;
  wake    cold wake at `namespace`: a request through the front door to an instance asleep
          after idle_timeout, to the whole response; --wakes per round;
          both in --rounds rounds alternating the builds' order, reported as the median of
          round medians and the median of the per-round differences;
  tokens  ten serve's RSS growth over --bad-tokens requests with a bad token (300 client
          addresses, each within its rate limit), and the time of an admin's request after;
  health  GET /health and GET /metrics through the front door with --instances running
          instances (`process` level, with cgroups), median of 200 requests each.
Prints one markdown table per measure.
"""

import argparse
import http.client
import os
import socket
import statistics
import sys
import threading
import time

from tenbench import FIXTURE, TEN, Server, api, wait_running

APP = f'command = "{FIXTURE}"\nsocket = "{{data_dir}}/{{id}}/app.sock"\n'


def http_addr(server):
    for _ in range(500):
        with open(f"{server.tmp}/serve.log") as f:
            for line in f:
                if "ten serve listening" in line and "http=" in line:
                    host, port = line.split("http=")[1].split()[0].rsplit(":", 1)
                    return host, int(port)
        time.sleep(0.01)
    raise RuntimeError("no http listener in serve.log")


def get(addr, path, host="x", headers=None, source=None):
    s = socket.create_connection(addr, source_address=(source, 0) if source else None)
    c = http.client.HTTPConnection(*addr)
    c.sock = s
    c.request("GET", path, headers={"Host": host, **(headers or {})})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def serve(ten, services, **kw):
    import tenbench
    tenbench.TEN = ten
    s = Server(services, env={"TENEMENT_LOG": "info"}, **kw)
    os.chmod(s.tmp, 0o755)  # a project directory: apps of their own uid enter it
    return s


def spawn(ten, n):
    with serve(ten, f"[service.web]\n{APP}health = \"/health\"\n") as s:
        times = []
        for i in range(n):
            t = time.perf_counter()
            api(s.ctl, "POST", "/api/instances", {"service": "web", "id": f"i{i}"})
            times.append((time.perf_counter() - t) * 1000)
        return times


def wake(ten, n):
    with serve(ten, f"[service.web]\n{APP}idle_timeout = 1\n") as s:
        addr = http_addr(s)
        api(s.ctl, "POST", "/api/instances", {"service": "web", "id": "w"})
        times = []
        for _ in range(n):
            for _ in range(1000):
                if api(s.ctl, "GET", "/api/instances/web:w")["state"] == "sleeping":
                    break
                time.sleep(0.05)
            t = time.perf_counter()
            status, _ = get(addr, "/", host="w.web.localhost")
            times.append((time.perf_counter() - t) * 1000)
            assert status == 200, status
        return times


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def tokens(ten, n):
    with serve(ten, f"[service.web]\n{APP}") as s:
        addr = http_addr(s)
        admin = api(s.ctl, "POST", "/api/tokens", {})["token"]
        auth = {"Authorization": f"Bearer {admin}"}
        assert get(addr, "/api/instances", headers=auth)[0] == 200
        before = rss_kb(s.proc.pid)
        tid = admin.split("_")[1]
        bad = {"Authorization": f"Bearer ten_{tid}_{'0' * 48}"}
        per = max(1, n // 300)

        def client(i):
            src = f"127.0.{2 + i // 200}.{1 + i % 200}"
            for _ in range(per):
                get(addr, "/api/instances", headers=bad, source=src)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(300)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        spray = time.perf_counter() - t
        t = time.perf_counter()
        assert get(addr, "/api/instances", headers=auth, source="127.0.0.9")[0] == 200
        admin_ms = (time.perf_counter() - t) * 1000
        return (rss_kb(s.proc.pid) - before) / 1024, spray, admin_ms, per * 300


def health(ten, n):
    instances = "\n".join(f'"i{i}",' for i in range(n))
    config = f"[service.web]\n{APP}isolation = \"process\"\n\n[instances]\nweb = [\n{instances}\n]\n"
    with serve(ten, config) as s:
        addr = http_addr(s)
        wait_running(s.ctl, n)
        out = {}
        for path in ["/health", "/metrics"]:
            get(addr, path)  # the first /metrics reads the figures, later ones use them
            time.sleep(0.5)
            times = []
            for _ in range(200):
                t = time.perf_counter()
                status, _ = get(addr, path)
                times.append((time.perf_counter() - t) * 1000)
                assert status == 200
            out[path] = statistics.median(times)
        return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--before")
    p.add_argument("--spawns", type=int, default=30)
    p.add_argument("--wakes", type=int, default=20)
    p.add_argument("--bad-tokens", type=int, default=3000)
    p.add_argument("--instances", type=int, default=3000)
    p.add_argument("--only", default="spawn,wake,tokens,health")
    p.add_argument("--rounds", type=int, default=6)
    a = p.parse_args()
    builds = [("after", TEN)] + ([("before", a.before)] if a.before else [])
    only = a.only.split(",")
    print(f"# bench/walls.py {' '.join(sys.argv[1:])}  ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cpus)\n")
    for measure, fn, n in [("spawn", spawn, a.spawns), ("wake", wake, a.wakes)]:
        if measure not in only:
            continue
        # Rounds alternate the builds' order; per round, each build's median; the difference
        # after - before is taken per round (the machine's load drifts between rounds).
        medians = {name: [] for name, _ in builds}
        for r in range(a.rounds):
            order = builds if r % 2 == 0 else builds[::-1]
            for name, ten in order:
                medians[name].append(statistics.median(fn(ten, n)))
        what = "spawn to ready" if measure == "spawn" else "cold wake"
        print(f"| build | {what}, namespace: median of round medians (ms) | rounds |")
        print("|---|---|---|")
        for name, _ in builds:
            ms = " ".join(f"{m:.2f}" for m in medians[name])
            print(f"| {name} | {statistics.median(medians[name]):.2f} | {ms} |")
        if a.before:
            diffs = [x - y for x, y in zip(medians["after"], medians["before"])]
            print(f"\nafter - before, median of per-round differences: {statistics.median(diffs):+.2f} ms\n", flush=True)
    if "tokens" in only:
        print("| build | bad-token requests | spray took (s) | RSS growth (MB) | admin request after (ms) |")
        print("|---|---|---|---|---|")
        for name, ten in builds:
            grown, spray, admin_ms, count = tokens(ten, a.bad_tokens)
            print(f"| {name} | {count} | {spray:.1f} | {grown:.1f} | {admin_ms:.1f} |", flush=True)
        print()
    if "health" in only:
        print(f"| build | instances | GET /health (ms, median) | GET /metrics (ms, median) |")
        print("|---|---|---|---|")
        for name, ten in builds:
            r = health(ten, a.instances)
            print(f"| {name} | {a.instances} | {r['/health']:.3f} | {r['/metrics']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
