#!/usr/bin/env python3
"""Reload of a large server that changes one service: how long, and what it touched.

Usage: bench/reload.py [--instances 1000] [--ten PATH]

Starts --instances instances of service `big` and one of service `small` (the compiled
fixture app, `process` level, from `[instances]`), changes `small`'s environment in
tenement.toml, times `POST /api/reload` on the control socket (it answers once the changed
instance is replaced and ready), and counts the instances whose pid changed. Prints a table.
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time

import tenbench
from tenbench import FIXTURE, api, wait_running


def config(tmp, n, version):
    ids = ", ".join(f'"i{i}"' for i in range(n))
    return (
        f'[settings]\ndata_dir = "{tmp}/data"\nhealth_check_interval = 60\n\n'
        f'[service.big]\ncommand = "{FIXTURE}"\nisolation = "process"\nhealth = "/health"\n\n'
        f'[service.small]\ncommand = "{FIXTURE}"\nisolation = "process"\nhealth = "/health"\n'
        f'[service.small.env]\nVERSION = "{version}"\n\n'
        f'[instances]\nbig = [{ids}]\nsmall = ["one"]\n'
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--instances", type=int, default=1000)
    p.add_argument("--ten", default=tenbench.TEN)
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="ten-reload-")
    with open(f"{tmp}/tenement.toml", "w") as f:
        f.write(config(tmp, a.instances, "1"))
    log = open(f"{tmp}/serve.log", "w")
    proc = subprocess.Popen(
        [a.ten, "serve", "--config", f"{tmp}/tenement.toml", "--port", "0", "--bind", "127.0.0.1"],
        stdout=log, stderr=log, env={**os.environ, "TENEMENT_LOG": "warn"})
    ctl = f"{tmp}/data/ten.sock"
    total = a.instances + 1
    try:
        ps = wait_running(ctl, total)
        before = {i["instance"]: i["pid"] for i in ps}
        with open(f"{tmp}/tenement.toml", "w") as f:
            f.write(config(tmp, a.instances, "2"))
        t = time.perf_counter()
        report = api(ctl, "POST", "/api/reload")
        took = (time.perf_counter() - t) * 1000
        after = {i["instance"]: i["pid"] for i in api(ctl, "GET", "/api/instances")}
        touched = sorted(k for k in before if after.get(k) != before[k])
        print(f"# bench/reload.py --instances {a.instances}  ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cpus)\n")
        print("| instances | reload took (ms) | instances replaced (report) | instances whose pid changed |")
        print("|---|---|---|---|")
        print(f"| {total} | {took:.1f} | {', '.join(report['replaced'])} | {', '.join(touched) or 'none'} |")
    finally:
        proc.terminate()
        proc.wait(timeout=300)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
