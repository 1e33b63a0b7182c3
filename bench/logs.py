#!/usr/bin/env python3
"""Log ingest rate and search latency.

Usage: bench/logs.py [--seconds 20] [--searches 20]

A real `ten serve` (release) runs one instance of the fixture app with `--spam` (prints
`line N` as fast as it can). Ingest: rows in logs.db (counted with sqlite3 through the WAL)
over the run, divided by its length, plus lines dropped under overload (from ten serve's own
counter, read back the same way as rows: dropped = printed - stored is not observable, so
only stored lines are counted). Then searches over everything stored (≥ 1,000,000 lines when
the run is long enough), timed from the client through the control socket's /api/logs.
Prints markdown tables.
"""

import argparse
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.parse

from tenbench import FIXTURE, ROOT, Server, api, request


def count(db):
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return c.execute("SELECT count(*) FROM logs").fetchone()[0]
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--searches", type=int, default=20)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins"], cwd=ROOT, check=True)
    services = f"""[service.noisy]
command = "{FIXTURE} --spam"
socket = "{{tmp}}/s/{{id}}.sock"
isolation = "process"
"""
    with Server(services, "ten-logs-bench-") as server:
        ctl, db = server.ctl, f"{server.tmp}/data/logs.db"
        api(ctl, "POST", "/api/instances", {"service": "noisy", "id": "a"})
        time.sleep(1)
        c0, t0 = count(db), time.perf_counter()
        samples = []
        while time.perf_counter() - t0 < a.seconds:
            time.sleep(1)
            samples.append((time.perf_counter(), count(db)))
        c1, t1 = samples[-1][1], samples[-1][0]
        rate = (c1 - c0) / (t1 - t0)
        api(ctl, "DELETE", "/api/instances/noisy:a")
        time.sleep(0.5)
        total = count(db)
        print(f"\n## Log ingest ({a.seconds:.0f} s of an app printing as fast as it can)\n")
        print("| lines stored | sustained ingest (lines/s) |")
        print("|---|---|")
        print(f"| {total} | {rate:,.0f} |")

        print(f"\n## Search over {total:,} stored lines ({a.searches} queries each, via /api/logs on the control socket)\n")
        print("| query | median (ms) | p90 (ms) | results |")
        print("|---|---|---|---|")
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rare = c.execute("SELECT text FROM logs WHERE id = (SELECT min(id) + (max(id) - min(id)) / 2 FROM logs)").fetchone()[0]
        c.close()
        queries = [
            (f"full-text, one line (`{rare}`)", {"service": "noisy", "search": rare, "limit": "10"}),
            ("full-text, common word (`line`), newest 100", {"service": "noisy", "search": "line", "limit": "100"}),
            ("instance, newest 100", {"instance": "noisy:a", "limit": "100"}),
            ("instance + last 10 minutes, newest 100", {"instance": "noisy:a", "since": "10m", "limit": "100"}),
        ]
        for name, q in queries:
            times, n = [], 0
            for _ in range(a.searches):
                t = time.perf_counter()
                status, body = request(ctl, "GET", "/api/logs?" + urllib.parse.urlencode(q))
                times.append((time.perf_counter() - t) * 1000)
                assert status == 200, body[:200]
                n = body.count(b'"id"')
            print(f"| {name} | {statistics.median(times):.2f} | {sorted(times)[int(0.9 * (len(times) - 1))]:.2f} | {n} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
