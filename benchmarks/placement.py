"""Where the scheduler puts a manager's threads and its clients, against placing them by hand (Linux).

    python benchmarks/placement.py [--quick | --smoke] [--clients 1 2 4]

Two measurements, each free (where the kernel puts the processes) and placed (the clients on one
CPU, every thread of the manager on another: ``sched_setaffinity`` from outside, after the
clients have connected; a library must not do that to its user's processes, a benchmark may).

1. Several clients. Scenario (b) of field.py asks whether 2 and 4 clients calling ``d[k]`` at
   once make as many calls a second in total as one client alone. On a 2-core machine one client
   already uses both cores (it spins on one while the manager's thread answers on the other), so
   the others share a core, and where each one runs is the scheduler's choice. If the placed
   figures reach one client's while the free ones do not, the design is not what bounds (b) on
   this machine: the placement is.

2. Bursts after a pause. run.py's quiet table times a few hundred calls at a time, while the
   other systems run in between. Here one client makes ``BURST`` calls of ``d[k]`` after each
   ``PAUSE`` of doing nothing, against reflectmgr's manager and the stdlib's: the time per call
   inside a burst, median over the bursts. After a pause the woken thread may be put on its
   waker's CPU, where both run at their one-CPU speed; placed, each side has its own.

Arrangements (and systems) run interleaved; each line gives the median and the range over the
runs. Nothing is asserted: numbers are read by people.
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
BURST = 200  # calls in a burst...
PAUSE = 0.01  # ...after this long doing nothing (seconds)


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


def _placement(arrangement: str) -> tuple[int | None, int | None]:
    """The CPU for the clients and the one for the manager (None, None: free)."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if arrangement == "placed" else (None, None)


def one_run(clients: int, arrangement: str, seconds: float) -> float:
    """Aggregate calls a second of ``clients`` processes reading ``d[k]`` from a fresh manager."""
    ctx = multiprocessing.get_context("fork")
    client_cpu, manager_cpu = _placement(arrangement)
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


def _bursts(d: Any, cpu: int | None, bursts: int, ready: Any, go: Any, out: Any) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    for _ in range(BURST):
        d["k"]
    ready.release()
    go.wait()
    per_call = []
    for _ in range(bursts):
        time.sleep(PAUSE)  # the workload: a pause doing nothing (not a synchronization)
        began = time.perf_counter()
        for _ in range(BURST):
            d["k"]
        per_call.append((time.perf_counter() - began) / BURST)
    out.put(statistics.median(per_call))


def burst_run(system: str, arrangement: str, bursts: int) -> float:
    """Median time per call inside a burst, one client of a fresh manager of ``system``."""
    ctx = multiprocessing.get_context("fork")
    client_cpu, manager_cpu = _placement(arrangement)
    if system == "reflectmgr":
        manager: Any = reflectmgr.Manager()
        manager.start()
        d, pid = manager.dict(k=0), manager.pid
    else:
        manager = multiprocessing.Manager()
        d, pid = manager.dict(k=0), manager._process.pid
    try:
        ready, go, out = ctx.Semaphore(0), ctx.Barrier(2, timeout=60), ctx.Queue()
        proc = ctx.Process(target=_bursts, args=(d, client_cpu, bursts, ready, go, out))
        proc.start()
        try:
            if not ready.acquire(timeout=60):
                raise RuntimeError("the client did not connect within 60 s")
            if manager_cpu is not None:
                _place_manager(pid, manager_cpu)
            go.wait()
            return float(out.get(timeout=bursts * (PAUSE + 1) + 30))
        finally:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    finally:
        manager.shutdown()


def _range(values: list[float], scale: float, fmt: str, unit: str = "") -> str:
    mid, low, high = statistics.median(values) * scale, min(values) * scale, max(values) * scale
    return f"{mid:{fmt}}{unit} ({low:{fmt}}-{high:{fmt}}{unit})"


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
    reps, seconds, bursts = (1, 0.2, 5) if args.smoke else ((3, 1.0, 50) if args.quick else (6, 3.0, 100))
    rates: dict[tuple[int, str], list[float]] = {}
    burst_times: dict[tuple[str, str], list[float]] = {}
    for rep in range(reps):
        order = ARRANGEMENTS if rep % 2 == 0 else ARRANGEMENTS[::-1]
        for n in args.clients:
            for arrangement in order:
                rates.setdefault((n, arrangement), []).append(one_run(n, arrangement, seconds))
        for system in ("reflectmgr", "stdlib") if rep % 2 == 0 else ("stdlib", "reflectmgr"):
            for arrangement in order:
                burst_times.setdefault((system, arrangement), []).append(burst_run(system, arrangement, bursts))
    print(
        f"several clients, d[k], Python {sys.version.split()[0]}, {len(os.sched_getaffinity(0))} CPUs, "
        f"{reps} runs of {seconds:g} s each: aggregate calls/s, median (range)"
    )
    one = {a: statistics.median(rates[(args.clients[0], a)]) for a in ARRANGEMENTS}
    for n in args.clients:
        cells = [
            f"{a} {_range(rates[(n, a)], 1e-3, '.0f', 'k')}, {statistics.median(rates[(n, a)]) / one[a]:.2f}x of "
            f"{args.clients[0]}"
            for a in ARRANGEMENTS
        ]
        print(f"  {n} client{'s' if n > 1 else ' '}: " + "; ".join(cells))
    print(f"bursts of {BURST} d[k] after {PAUSE * 1e3:g} ms pauses, one client: us per call, median (range)")
    for a in ARRANGEMENTS:
        ours, std = burst_times[("reflectmgr", a)], burst_times[("stdlib", a)]
        ratio = statistics.median(std) / statistics.median(ours)
        print(f"  {a:7}reflectmgr {_range(ours, 1e6, '.1f')}, stdlib {_range(std, 1e6, '.1f')}: {ratio:.1f}x")
    print(
        "free: where the scheduler puts them; placed: the clients on one CPU, the manager's threads on "
        "another (by hand, from outside)."
    )


if __name__ == "__main__":
    main()
