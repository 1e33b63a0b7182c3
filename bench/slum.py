#!/usr/bin/env python3
"""slum's fleet figures, on one machine: every tenement server in a network namespace of its
own on a bridge (10.70.0.0/24), slum on this host (10.70.0.1), default lease (3 s).

  failover      the owner's link is cut (`ip link set down`); time until another server's own
                copy answers the tenant's domain (polled every 20 ms through that server, by a client that gives up after 0.2 s).
                Median and max of --rounds. Goal: <= 5 s.
  placements/s  --placements tenants placed at once (8 client threads), each answered once its
                server runs it; and one placement's latency (median of 10, alone).
  one hop       loadgen (-c 8) on the tenant's domain at its owner vs at another server
                (forwarded one hop): p50/p99 and requests/s.
  propagation   from the placement call to the last of the --servers servers answering the new
                domain (median and max of 10).

Needs root (namespaces) and the release build: cargo build --release --bins
Usage: python3 bench/slum.py [--servers 10] [--rounds 10] [--placements 50] [--seconds 4]
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tenbench import FIXTURE, RELEASE, TEN  # noqa: E402

SLUM = os.path.join(RELEASE, "slum")
LOADGEN = os.path.join(RELEASE, "tenement-loadgen")
BRIDGE, NET = "brbench", "10.70.0"
PORT = 8080


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Fleet:
    def __init__(self, n):
        self.tmp = tempfile.mkdtemp(prefix="slum-bench-")
        sh("ip", "link", "del", BRIDGE, check=False)
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{NET}.1/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        self.log = open(f"{self.tmp}/slum.log", "w")
        self.slum = subprocess.Popen([SLUM, "serve", "--db", f"{self.tmp}/slum.db", "--listen", f"{NET}.1:0"],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**os.environ, "SLUM_LOG": "warn"})
        line = self.slum.stdout.readline()
        self.url = next(w for w in line.split() if w.startswith("http://")).rstrip(",")
        self.token = open(f"{self.tmp}/slum.db.token").read().strip()
        join = open(f"{self.tmp}/slum.db.join-token").read().strip()
        self.servers, self.procs = [], []
        for i in range(n):
            sid, ip = f"s{i}", f"{NET}.{i + 2}"
            ns, host_end = f"bs{i}", f"vhb{i}"
            sh("ip", "netns", "del", ns, check=False)
            sh("ip", "link", "del", host_end, check=False)
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "vn0", "netns", ns)
            sh("ip", "link", "set", host_end, "master", BRIDGE)
            sh("ip", "link", "set", host_end, "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "vn0")
            sh("ip", "-n", ns, "link", "set", "vn0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            d = f"{self.tmp}/{sid}"
            os.makedirs(d)
            with open(f"{d}/tenement.toml", "w") as f:
                f.write(f'[settings]\ndata_dir = "{d}/data"\nhealth_check_interval = 60\n\n'
                        f'[service.app]\ncommand = "{FIXTURE}"\nisolation = "process"\n')
            log = open(f"{d}/serve.log", "w")
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, TEN, "serve", "--config", f"{d}/tenement.toml", "--bind", ip,
                 "--port", str(PORT), "--domain", "tenement.test", "--slum", self.url, "--slum-token", join,
                 "--slum-id", sid], stdout=log, stderr=log, env={**os.environ, "TENEMENT_LOG": "warn"}))
            self.servers.append((sid, ip, ns, host_end, d))
        self.wait(lambda: all(s["state"] == "up" for s in self.api("GET", "/api/servers"))
                  and len(self.api("GET", "/api/servers")) == n, 60, "servers to join")

    def api(self, method, path, body=None):
        host, port = self.url[len("http://"):].split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=120)
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {data!r}")
        return json.loads(data) if data else None

    @staticmethod
    def wait(check, seconds, what):
        end = time.time() + seconds
        while time.time() < end:
            try:
                if check():
                    return
            except (OSError, RuntimeError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what}")

    def answered_by(self, via_ip, domain, timeout=1.0):
        """The id of the server whose instance answered `domain` through `via_ip`, or None."""
        try:
            c = http.client.HTTPConnection(via_ip, PORT, timeout=timeout)
            c.request("GET", "/env", headers={"Host": domain})
            r = c.getresponse()
            body = r.read().decode(errors="replace")
            c.close()
        except (OSError, http.client.HTTPException):
            return None
        if r.status != 200:
            return None
        return next((sid for sid, _, _, _, d in self.servers if d in body), None)

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
        self.slum.terminate()
        self.slum.wait()
        for _, _, ns, host_end, _ in self.servers:
            sh("ip", "link", "del", host_end, check=False)
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", BRIDGE, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def place(fleet, domain, instance, server=""):
    return fleet.api("POST", "/api/tenants", {"domain": domain, "process": "app", "instance_id": instance,
                                              "server_id": server})


def failover(fleet, rounds):
    (a, a_ip, _, a_link, _), (b, b_ip, _, _, _) = fleet.servers[0], fleet.servers[1]
    times = []
    for r in range(rounds):
        # The survivor must have been up a full lease to take tenants over.
        time.sleep(3.5)
        domain = f"fo{r}.customer.org"
        place(fleet, domain, f"fo{r}", a)
        fleet.wait(lambda: fleet.answered_by(b_ip, domain) == a, 30, "the tenant through b")
        sh("ip", "link", "set", a_link, "down")
        cut = time.time()
        while fleet.answered_by(b_ip, domain, timeout=0.2) != b:
            time.sleep(0.02)
            if time.time() - cut > 60:
                raise RuntimeError("no failover within 60 s")
        times.append(time.time() - cut)
        sh("ip", "link", "set", a_link, "up")
        fleet.wait(lambda: any(s["id"] == a and s["state"] == "up" for s in fleet.api("GET", "/api/servers")), 60,
                   "a to come back")
        fleet.api("DELETE", f"/api/tenants/{domain}")
        print(f"  failover round {r + 1}: {times[-1]:.2f} s", flush=True)
    return times


def placements(fleet, count, threads=8):
    domains = [f"p{i}.customer.org" for i in range(count)]
    work, lock = list(enumerate(domains)), threading.Lock()

    def worker():
        while True:
            with lock:
                if not work:
                    return
                i, d = work.pop()
            place(fleet, d, f"p{i}")

    start = time.time()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.time() - start
    for d in domains:
        fleet.api("DELETE", f"/api/tenants/{d}")
    single = []
    for i in range(10):
        t0 = time.time()
        place(fleet, f"one{i}.customer.org", f"one{i}")
        single.append(time.time() - t0)
        fleet.api("DELETE", f"/api/tenants/one{i}.customer.org")
    return count / elapsed, statistics.median(single)


def propagation(fleet, rounds):
    times = []
    for r in range(rounds):
        domain = f"prop{r}.customer.org"
        owner = fleet.servers[r % len(fleet.servers)][0]
        t0 = time.time()
        done = {}

        def poll(sid, ip):
            while fleet.answered_by(ip, domain, timeout=1) != owner:
                time.sleep(0.005)
            done[sid] = time.time() - t0

        ts = [threading.Thread(target=poll, args=(sid, ip)) for sid, ip, _, _, _ in fleet.servers]
        for t in ts:
            t.start()
        place(fleet, domain, f"prop{r}", owner)
        for t in ts:
            t.join()
        times.append(max(done.values()))
        fleet.api("DELETE", f"/api/tenants/{domain}")
    return times


def one_hop(fleet, seconds):
    (a, a_ip, *_), (_, b_ip, *_) = fleet.servers[0], fleet.servers[1]
    place(fleet, "hop.customer.org", "hop", a)
    out = {}
    for name, ip in [("direct (owner)", a_ip), ("one hop (another server)", b_ip)]:
        res = subprocess.run([LOADGEN, "--tcp", f"{ip}:{PORT}", "--host", "hop.customer.org", "--path", "/",
                              "-c", "8", "-d", str(seconds)], check=True, capture_output=True, text=True).stdout
        out[name] = dict(kv.split("=") for kv in res.split())
    fleet.api("DELETE", "/api/tenants/hop.customer.org")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--placements", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=4)
    a = ap.parse_args()
    for exe in [TEN, SLUM, LOADGEN, FIXTURE]:
        if not os.path.exists(exe):
            sys.exit(f"{exe} is missing: cargo build --release --bins")
    fleet = Fleet(a.servers)
    try:
        print(f"{a.servers} servers up; slum at {fleet.url}", flush=True)
        rate, single = placements(fleet, a.placements)
        print(f"placements: {rate:.1f}/s ({a.placements} at once, 8 clients); one alone: {single * 1000:.0f} ms",
              flush=True)
        prop = propagation(fleet, a.rounds)
        print(f"propagation to {a.servers} servers: median {statistics.median(prop) * 1000:.0f} ms, "
              f"max {max(prop) * 1000:.0f} ms", flush=True)
        hop = one_hop(fleet, a.seconds)
        print("\n| path | requests/s | p50 | p99 |\n|---|---|---|---|")
        for name, r in hop.items():
            print(f"| {name} | {float(r['rps']):.0f} | {int(r['p50_us'])} µs | {int(r['p99_us'])} µs |")
        print(flush=True)
        fo = failover(fleet, a.rounds)
        print(f"failover (cut → first 200 from the new server): median {statistics.median(fo):.2f} s, "
              f"max {max(fo):.2f} s (goal <= 5 s)")
    finally:
        fleet.close()


if __name__ == "__main__":
    main()
