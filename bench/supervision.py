#!/usr/bin/env python3
"""ten serve's CPU for supervising many idle running tenants.

Usage: bench/supervision.py [--instances 1000] [--interval 1] [--seconds 30] [--ten PATH]

Starts N instances of the compiled fixture app (`process` level, with cgroups and a health
path) from `[instances]` with `health_check_interval = --interval`, waits until all are
running and have been checked, then reads ten serve's CPU time (utime + stime from
/proc/PID/stat) over --seconds. Prints CPU per health check and, from it, ten serve's share
of a core at the default interval (10 s) for 1,000 and 10,000 instances.
"""

import argparse
import resource
import os
import shutil
import subprocess
import tempfile
import time

import tenbench
from tenbench import FIXTURE, api, wait_running


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit():
    """1,048,576 open files where allowed (CAP_SYS_RESOURCE); else the hard limit stays."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))
    except (ValueError, OSError):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--instances", type=int, default=1000)
    p.add_argument("--interval", type=int, default=1)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--ten", default=tenbench.TEN)
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="ten-sup-")
    ids = ", ".join(f'"i{i}"' for i in range(a.instances))
    with open(f"{tmp}/tenement.toml", "w") as f:
        f.write(
            f'[settings]\ndata_dir = "{tmp}/data"\nhealth_check_interval = {a.interval}\n\n'
            f'[service.web]\ncommand = "{FIXTURE}"\nisolation = "process"\nhealth = "/health"\n\n'
            f"[instances]\nweb = [{ids}]\n"
        )
    log = open(f"{tmp}/serve.log", "w")
    proc = subprocess.Popen(
        [a.ten, "serve", "--config", f"{tmp}/tenement.toml", "--port", "0", "--bind", "127.0.0.1"],
        stdout=log, stderr=log, env={**os.environ, "TENEMENT_LOG": "warn"},
        # As the systemd unit does (LimitNOFILE): 4 descriptors per instance.
        preexec_fn=raise_fd_limit)
    ctl = f"{tmp}/data/ten.sock"
    try:
        wait_running(ctl, a.instances)
        time.sleep(2 * a.interval + 1)  # past the start-up burst
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(a.seconds)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        checks = a.instances * (t1 - t0) / a.interval
        per_check_us = (c1 - c0) / checks * 1e6
        share = lambda n: per_check_us * n / 10 / 1e6 * 100
        print(f"# bench/supervision.py --instances {a.instances} --interval {a.interval} --seconds {a.seconds}"
              f"  ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cpus)\n")
        print("| instances | interval (s) | ten serve CPU (s) over | share of a core (measured) | checks | CPU per check (µs) | share of a core at 10 s: 1,000 / 10,000 instances |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {a.instances} | {a.interval} | {c1 - c0:.2f} / {t1 - t0:.0f} s | {(c1 - c0) / (t1 - t0) * 100:.2f}% | {checks:.0f} | {per_check_us:.0f} | "
              f"{share(1000):.2f}% / {share(10000):.1f}% |")
    finally:
        proc.terminate()
        proc.wait(timeout=300)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
