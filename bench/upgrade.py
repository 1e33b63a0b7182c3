#!/usr/bin/env python3
"""`ten upgrade` under load: failed requests, hand-over time, tenants restarted.

Usage: bench/upgrade.py [--instances 1000] [--connections 16] [--seconds 6]

Starts --instances instances (the compiled fixture app, `process` level, from `[instances]`),
then, for --seconds: the load generator (crates/loadgen: keep-alive connections, as a proxy's
clients hold them) on one instance through the front door, and a loop that opens a new
connection for every request (what a refused connection would hit). Two seconds in,
`ten upgrade` (release build; the successor is the same binary). Prints one table row:
requests and failures of both, requests the load generator sent again because the old server
closed its connection before answering (HTTP clients do that with idempotent requests), the
hand-over time `ten upgrade` reports (how long connections waited in the accept queue), how
long `ten upgrade` took, and how many instances' pids changed.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time

import tenbench
from tenbench import FIXTURE, RELEASE, api, wait_running

LOADGEN = os.path.join(RELEASE, "tenement-loadgen")


def fresh_connections(addr, host, stop, counts):
    """One request per new connection until `stop`: counts ok / failed."""
    ip, port = addr.rsplit(":", 1)
    while not stop.is_set():
        try:
            with socket.create_connection((ip, int(port)), timeout=10) as s:
                s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                head = s.recv(64)
            counts["ok" if head.startswith(b"HTTP/1.1 200") else "failed"] += 1
        except OSError:
            counts["failed"] += 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--instances", type=int, default=1000)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--seconds", type=int, default=6)
    a = p.parse_args()
    ids = ", ".join(f'"i{i}"' for i in range(a.instances))
    services = (
        f'[service.big]\ncommand = "{FIXTURE}"\nisolation = "process"\nhealth = "/health"\n\n'
        f'[instances]\nbig = [{ids}]\n'
    )
    with tenbench.Server(services, prefix="ten-upgrade-", env={"TENEMENT_LOG": os.environ.get("TENEMENT_LOG", "warn,ten=info")}) as srv:
        ctl = srv.ctl
        before = {i["instance"]: i["pid"] for i in wait_running(ctl, a.instances)}
        addr = None
        for _ in range(100):
            m = re.search(r"http=(\S+)", open(f"{srv.tmp}/serve.log").read())
            if m:
                addr = m.group(1)
                break
            time.sleep(0.1)
        host = "i0.big.localhost"
        load = subprocess.Popen(
            [LOADGEN, "--tcp", addr, "--host", host, "-c", str(a.connections), "-d", str(a.seconds)],
            stdout=subprocess.PIPE, text=True)
        stop, counts = threading.Event(), {"ok": 0, "failed": 0}
        loop = threading.Thread(target=fresh_connections, args=(addr, host, stop, counts))
        loop.start()
        time.sleep(2)
        t = time.perf_counter()
        out = subprocess.run([tenbench.TEN, "upgrade", "--config", f"{srv.tmp}/tenement.toml"],
                             capture_output=True, text=True)
        took = (time.perf_counter() - t) * 1000
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        waited = float(re.search(r"waited ([0-9.]+) ms", out.stdout).group(1))
        r = dict(kv.split("=") for kv in load.communicate()[0].split())
        stop.set()
        loop.join()
        after = {i["instance"]: i["pid"] for i in api(ctl, "GET", "/api/instances")}
        changed = sum(1 for k in before if after.get(k) != before[k])
        for line in open(f"{srv.tmp}/serve.log"):
            if any(w in line for w in ("found running", "registered", "upgrade:", "received")):
                print(line.rstrip(), file=sys.stderr)
        # The successor is not the Server's child: stop it (and its instances) here.
        successor = int(re.search(r"pid (\d+)", out.stdout).group(1))
        srv.proc.wait(timeout=120)
        os.kill(successor, 15)
        while os.path.exists(f"/proc/{successor}"):
            time.sleep(0.1)
        print(f"# bench/upgrade.py --instances {a.instances} --connections {a.connections}"
              f"  ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cpus)\n")
        print("| instances | keep-alive requests | failed | sent again | new-connection requests | failed "
              "| hand-over (ms) | ten upgrade took (ms) | pids changed |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| {a.instances} | {r['requests']} | {r['errors']} | {r['retried']} | {counts['ok'] + counts['failed']} "
              f"| {counts['failed']} | {waited:.1f} | {took:.0f} | {changed} |")


if __name__ == "__main__":
    main()
