"""Several clients at once, as the scheduler places them and as placed by hand (Linux).

    python benchmarks/placement.py [--quick | --smoke] [--clients 1 2 4]

Scenario (b) of field.py asks whether 2 and 4 clients calling ``d[k]`` at once make as many calls
a second in total as one client alone. On a 2-core machine one client already uses both cores
(it spins on one while the manager's thread answers on the other), so the others share a core,
and where each one runs is the scheduler's choice. This measures how much that choice costs: the
same clients, first where the kernel puts them, then placed by hand, the clients on one CPU and
every thread of the manager on another (``sched_setaffinity`` from outside, after the clients
have connected; a library must not do that to its user's processes, a benchmark may). If the
placed figures reach one client's while the free ones do not, the design is not what bounds (b)
on this machine: the placement is.

Arrangements run interleaved, ``REPS`` times each; each line gives the median and the range of
the aggregate calls a second. Nothing is asserted: numbers are read by people.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

import reflectmgr

ARRANGEMENTS = ("free", "placed")


def _client(info: Any, cpu: int | None, seconds: float, ready: Any, go: Any, out: Any) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    conn = reflectmgr.connect(*info)
    d = conn.root["d"]
    for _ in range(1000):  # connected and warm before the clock starts
        d["k"]
    ready.release()
    go.wait()
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        d["k"]
        d["k"]
        d["k"]
        d["k"]
        n += 4
    out.put(n)
    conn.close()


def _place_manager(pid: int, cpu: int) -> None:
    """Every thread of the manager's process on ``cpu`` (its colocation then pins and frees
    within that one CPU: it gives back what its main thread may use)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:  # a thread that just ended
            pass


def one_run(clients: int, arrangement: str, seconds: float) -> float:
    """Aggregate calls a second of ``clients`` processes reading ``d[k]`` from a fresh manager."""
    ctx = multiprocessing.get_context("fork")
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu, manager_cpu = (cpus[0], cpus[1]) if arrangement == "placed" else (None, None)
    with reflectmgr.Manager() as m:
        m.root["d"] = m.dict(k=0)
        info = (m.address, m.authkey)
        ready, go, out = ctx.Semaphore(0), ctx.Barrier(clients + 1, timeout=60), ctx.Queue()
        procs = [ctx.Process(target=_client, args=(info, client_cpu, seconds, ready, go, out)) for _ in range(clients)]
        for p in procs:
            p.start()
        try:
            for _ in procs:
                if not ready.acquire(timeout=60):
                    raise RuntimeError("a client did not connect within 60 s")
            if manager_cpu is not None:
                _place_manager(m.pid, manager_cpu)  # its serving threads exist now: one per client
            go.wait()
            total = sum(out.get(timeout=seconds + 30) for _ in procs)
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
    return total / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer and shorter runs")
    mode.add_argument("--smoke", action="store_true", help="one short run each: checks it runs (CI)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        print("skipped: placing by hand needs Linux and at least 2 CPUs this process may use")
        return
    reps, seconds = (1, 0.2) if args.smoke else ((3, 1.0) if args.quick else (6, 3.0))
    rates: dict[tuple[int, str], list[float]] = {}
    for rep in range(reps):
        for n in args.clients:
            order = ARRANGEMENTS if rep % 2 == 0 else ARRANGEMENTS[::-1]
            for arrangement in order:
                rates.setdefault((n, arrangement), []).append(one_run(n, arrangement, seconds))
    print(
        f"several clients, d[k], Python {sys.version.split()[0]}, {len(os.sched_getaffinity(0))} CPUs, "
        f"{reps} runs of {seconds:g} s each: aggregate calls/s, median (range)"
    )
    one = {a: statistics.median(rates[(args.clients[0], a)]) for a in ARRANGEMENTS}
    for n in args.clients:
        cells = []
        for a in ARRANGEMENTS:
            r = rates[(n, a)]
            cells.append(
                f"{a} {statistics.median(r) / 1e3:.0f}k ({min(r) / 1e3:.0f}-{max(r) / 1e3:.0f}k), "
                f"{statistics.median(r) / one[a]:.2f}x of {args.clients[0]}"
            )
        print(f"  {n} client{'s' if n > 1 else ' '}: " + "; ".join(cells))
    print(
        "free: where the scheduler puts them; placed: the clients on one CPU, the manager's threads on "
        "another (by hand, from outside)."
    )


if __name__ == "__main__":
    main()
