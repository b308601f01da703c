"""Several clients at once: aggregate calls per second with 1, 2 and 4 client processes.

    python benchmarks/clients.py [--quick]

Each client process hammers ``d["k"]`` on the same shared dict for a fixed time; the figure is
the sum of their calls per second. On a 2-core machine four clients oversubscribe the cores:
reflectmgr's spinning readers must back off there, so the aggregate must not fall below one
client's. The stdlib manager runs the same in the same run, for comparison.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from typing import Any

import reflectmgr


def hammer(d: Any, seconds: float, ready: Any, start: Any, results: Any) -> None:
    d["k"]  # connect before the clock starts
    ready.release()
    start.wait()
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        d["k"]
        n += 1
    results.put(n / seconds)


def aggregate(d: Any, clients: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    ready, start, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=hammer, args=(d, seconds, ready, start, results)) for _ in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:  # every client connected: the measurement starts for all at once
        if not ready.acquire(timeout=60):
            raise RuntimeError("a client did not connect within 60 s")
    start.set()
    total = sum(results.get(timeout=60 + seconds) for _ in procs)
    for p in procs:
        p.join(30)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seconds = 0.5 if args.quick else 2.0
    print(f"aggregate d[k] calls/s, Python {sys.version.split()[0]}, {os.cpu_count()} cores, {seconds} s per run")
    with (
        multiprocessing.Manager() as std,
        reflectmgr.Manager(transport="shm") as shm,
        reflectmgr.Manager(transport="pipe") as pipe,
    ):
        systems = {"stdlib Manager": std.dict(k=1), "reflectmgr shm": shm.dict(k=1), "reflectmgr pipe": pipe.dict(k=1)}
        for name, d in systems.items():
            rates = {n: aggregate(d, n, seconds) for n in (1, 2, 4)}
            cells = ", ".join(f"{n} client{'s' if n > 1 else ''}: {r:,.0f}/s" for n, r in rates.items())
            print(f"{name:<16} {cells}  (4 vs 1: {rates[4] / rates[1]:.2f}x)")


if __name__ == "__main__":
    main()
