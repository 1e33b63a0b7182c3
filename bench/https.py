#!/usr/bin/env python3
"""HTTPS benchmark: ten serve terminating TLS against nginx terminating TLS, same backend.

Usage: bench/https.py [--seconds 4] [--rounds 10] [--connections 32] [--firsts 10]

Pebble (Let's Encrypt's test CA, Debian package) issues the certificates: ten serve gets its
own on demand; nginx serves a copy of the same certificate and key. One fixture instance
(crates/fixture-app) under ten serve is the backend of both; nginx proxies to its Unix socket
with upstream keepalive and the same forwarding headers ten serve adds. The load generator
(crates/loadgen with --tls: HTTP/1.1 over TLS, rustls, X25519) drives both, alternating
round by round (the order reverses each round):
  1. keep-alive HTTPS requests: requests/s, p50, p99;
  2. a new connection (TCP + full TLS handshake, no resumption) per request: handshakes/s.
Then the time to the first response for a name seen for the first time (the certificate
ordered from pebble during the handshake), measured with curl, --firsts times.
Prints markdown tables.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from tenbench import FIXTURE, NGINX_AS_TEN, RELEASE, ROOT, TEN, api, free_port

LOADGEN = os.path.join(RELEASE, "tenement-loadgen")
DOMAIN = "bench.test"




def wait_port(port, what, limit=30):
    until = time.time() + limit
    while time.time() < until:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def sh(*args, cwd=None):
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_pebble(tmp, http_port, https_port):
    """pebble + pebble-challtestsrv on loopback; returns (directory URL, CA of its listener, management port, processes)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    sh("openssl", "req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA", cwd=tmp)
    sh("openssl", "req", *ec, "-keyout", "pebble-key.pem", "-out", "pebble.csr", "-subj", "/CN=localhost", cwd=tmp)
    with open(f"{tmp}/ext.cnf", "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    sh("openssl", "x509", "-req", "-in", "pebble.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
       "-out", "pebble-cert.pem", "-days", "2", "-extfile", "ext.cnf", cwd=tmp)
    dns, listen, mgmt = free_port(), free_port(), free_port()
    with open(f"{tmp}/pebble.json", "w") as f:
        json.dump({"pebble": {"listenAddress": f"127.0.0.1:{listen}", "managementListenAddress": f"127.0.0.1:{mgmt}",
                              "certificate": f"{tmp}/pebble-cert.pem", "privateKey": f"{tmp}/pebble-key.pem",
                              "httpPort": http_port, "tlsPort": https_port, "ocspResponderURL": "",
                              "externalAccountBindingRequired": False}}, f)
    procs = [subprocess.Popen(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", f"127.0.0.1:{dns}",
                               "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen(["pebble", "-config", f"{tmp}/pebble.json", "-dnsserver", f"127.0.0.1:{dns}"],
                              env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"},
                              stdout=open(f"{tmp}/pebble.log", "w"), stderr=subprocess.DEVNULL)]
    wait_port(listen, "pebble")
    return f"https://127.0.0.1:{listen}/dir", f"{tmp}/ca.pem", mgmt, procs


def loadgen(port, name, root, seconds, conns, new):
    args = [LOADGEN, "--tcp", f"127.0.0.1:{port}", "--host", name, "--tls", root, "-c", str(conns), "-d", str(seconds)]
    if new:
        args.append("--new")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return dict(kv.split("=") for kv in out.split())


def curl_time(port, name, root):
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--cacert", root,
                          "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}/"],
                         check=True, capture_output=True, text=True).stdout.split()
    assert out[0] == "200", out
    return float(out[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--handshake-connections", type=int, default=16)
    ap.add_argument("--firsts", type=int, default=10)
    a = ap.parse_args()
    for tool in ["pebble", "pebble-challtestsrv", "nginx", "openssl", "curl"]:
        if not shutil.which(tool):
            print(f"SKIPPED: {tool} is not installed")
            return
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="ten-https-bench-")
    http_port, https_port = free_port(), free_port()
    directory, ca, mgmt, procs = start_pebble(tmp, http_port, https_port)
    services = "".join(f"""
[service.s{i}]
command = "{FIXTURE}"
socket = "{tmp}/{{name}}-{{id}}.sock"
health = "/health"
isolation = "process"
""" for i in range(a.firsts))
    with open(f"{tmp}/tenement.toml", "w") as f:
        f.write(f"""
[settings]
data_dir = "{tmp}/data"
health_check_interval = 60

[settings.tls]
enabled = true
acme_email = "ops@{DOMAIN}"
domain = "{DOMAIN}"
directory_url = "{directory}"
ca_root = "{ca}"
http_port = {http_port}
https_port = {https_port}

[service.web]
command = "{FIXTURE}"
socket = "{tmp}/{{name}}-{{id}}.sock"
health = "/health"
isolation = "process"
{services}""")
    log = open(f"{tmp}/serve.log", "w")
    serve = subprocess.Popen([TEN, "serve", "--config", f"{tmp}/tenement.toml", "--bind", "127.0.0.1"],
                             stdout=log, stderr=log, env={**os.environ, "TENEMENT_LOG": "warn"})
    procs.append(serve)
    ctl = f"{tmp}/data/ten.sock"
    nginx = None
    try:
        for _ in range(500):
            try:
                api(ctl, "GET", "/api/instances")
                break
            except (OSError, RuntimeError):
                time.sleep(0.01)
        api(ctl, "POST", "/api/instances", {"service": "web", "id": "a"})
        for i in range(a.firsts):
            api(ctl, "POST", "/api/instances", {"service": f"s{i}", "id": "a"})
        root = f"{tmp}/issuer-root.pem"
        with open(root, "wb") as f:
            f.write(subprocess.run(["curl", "-sfk", f"https://127.0.0.1:{mgmt}/roots/0"], check=True, capture_output=True).stdout)
        name = f"a.web.{DOMAIN}"
        # The spawn ordered a.web's certificate: wait until it serves.
        until = time.time() + 60
        while time.time() < until:
            try:
                curl_time(https_port, name, root)
                break
            except (subprocess.CalledProcessError, AssertionError):
                time.sleep(0.2)
        pem = open(f"{tmp}/data/acme/certs/{name}.pem").read()
        key_at = pem.index("-----BEGIN PRIVATE KEY-----")
        open(f"{tmp}/fullchain.pem", "w").write(pem[:key_at])
        open(f"{tmp}/key.pem", "w").write(pem[key_at:])
        nport = free_port()
        sock = f"{tmp}/web-a.sock"
        os.makedirs(f"{tmp}/nginx/logs", exist_ok=True)
        with open(f"{tmp}/nginx/nginx.conf", "w") as f:
            f.write(f"""
user root;
worker_processes 2;
error_log {tmp}/nginx/logs/error.log warn;
pid {tmp}/nginx/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000000;
  upstream app {{ server unix:{sock}; keepalive 64; keepalive_requests 1000000000; }}
  server {{
    listen 127.0.0.1:{nport} ssl reuseport;
    ssl_certificate {tmp}/fullchain.pem;
    ssl_certificate_key {tmp}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
{NGINX_AS_TEN}
  }}
}}
""")
        nginx = subprocess.Popen(["nginx", "-p", f"{tmp}/nginx", "-c", f"{tmp}/nginx/nginx.conf", "-g", "daemon off;"])
        wait_port(nport, "nginx")
        runs = [("ten serve", https_port), ("nginx", nport)]
        figures = {(n, k): [] for n, _ in runs for k in ("rps", "p50", "p99", "hs")}
        print(f"\n## HTTPS: {a.connections} keep-alive connections and {a.handshake_connections} new-connection clients, "
              f"{a.seconds:g} s each, GET / (17-byte body)\n")
        print("| round | server | keep-alive requests/s | p50 (µs) | p99 (µs) | errors | new TLS connections/s | errors |")
        print("|---|---|---|---|---|---|---|---|")
        for round_ in range(1, a.rounds + 1):
            order = runs if round_ % 2 else list(reversed(runs))
            for server, port in order:
                k = loadgen(port, name, root, a.seconds, a.connections, False)
                h = loadgen(port, name, root, a.seconds, a.handshake_connections, True)
                figures[(server, "rps")].append(float(k["rps"]))
                figures[(server, "p50")].append(int(k["p50_us"]))
                figures[(server, "p99")].append(int(k["p99_us"]))
                figures[(server, "hs")].append(float(h["rps"]))
                print(f"| {round_} | {server} | {k['rps']} | {k['p50_us']} | {k['p99_us']} | {k['errors']} | {h['rps']} | {h['errors']} |", flush=True)
        print("\n| server | requests/s (median) | p50 (µs) | p99 (µs) | new TLS connections/s (median) |")
        print("|---|---|---|---|---|")
        for server, _ in runs:
            med = lambda k: statistics.median(figures[(server, k)])
            print(f"| {server} | {med('rps'):.0f} | {med('p50'):.0f} | {med('p99'):.0f} | {med('hs'):.0f} |")
        for k, what in [("rps", "keep-alive requests/s"), ("hs", "new connections/s")]:
            ratios = [t / n for t, n in zip(figures[("ten serve", k)], figures[("nginx", k)])]
            won = sum(r >= 1 for r in ratios)
            print(f"\nten serve / nginx, {what}, per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
                  f"median {statistics.median(ratios):.2f}; ten serve ahead in {won} of {len(ratios)}")
        p99 = [t / n for t, n in zip(figures[("ten serve", "p99")], figures[("nginx", "p99")])]
        print(f"ten serve / nginx, p99 latency, median {statistics.median(p99):.2f} (below 1: ten serve's is lower)")

        print(f"\n## Time to the first response for a name seen for the first time ({a.firsts} names; "
              "certificate ordered from pebble during the handshake)\n")
        firsts = [curl_time(https_port, f"s{i}.{DOMAIN}", root) for i in range(a.firsts)]
        again = [curl_time(https_port, f"s{i}.{DOMAIN}", root) for i in range(a.firsts)]
        print("| | median (ms) | max (ms) |")
        print("|---|---|---|")
        print(f"| first request (order + handshake + request) | {statistics.median(firsts) * 1000:.0f} | {max(firsts) * 1000:.0f} |")
        print(f"| next request, new connection (cached certificate) | {statistics.median(again) * 1000:.1f} | {max(again) * 1000:.1f} |")
    finally:
        if nginx:
            nginx.terminate()
            nginx.wait()
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
