"""Subinterpreter round trip: a small call from a subinterpreter to the in-process owner (over
shared-memory rings), against the same call from this process to a manager process over the
pipe transport (the anchor of the target) and over shared memory (the default transport).

    python benchmarks/interpreters.py [--quick]      (Python 3.13+)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import reflectmgr


def time_calls(d: Any, n: int) -> float:
    """Seconds per ``d["k"]``; runs wherever it is called (here, or inside a subinterpreter)."""
    for _ in range(200):
        d["k"]
    start = time.perf_counter()
    for _ in range(n):
        d["k"]
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if sys.version_info < (3, 13):
        print(f"skipped: subinterpreter pools need Python 3.13+, this is {sys.version.split()[0]}")
        return
    n, rounds = (2000, 3) if args.quick else (20_000, 7)
    sub: list[float] = []
    pipe: list[float] = []
    shm: list[float] = []
    with (
        reflectmgr.Manager(in_process=True) as owner,
        reflectmgr.Manager(transport="pipe") as remote,
        reflectmgr.Manager(transport="shm") as remote_shm,
    ):
        d_owner, d_remote, d_shm = owner.dict(k=1), remote.dict(k=1), remote_shm.dict(k=1)
        with owner.executor(1, kind="interpreter") as ex:
            for _ in range(rounds):
                sub.append(ex.submit(time_calls, d_owner, n).result())
                pipe.append(time_calls(d_remote, n))
                shm.append(time_calls(d_shm, n))
    s, p, m = statistics.median(sub), statistics.median(pipe), statistics.median(shm)
    print(f"subinterpreter -> in-process owner: {s * 1e6:.1f} us per d[k]")
    print(f"process -> manager process (pipe):  {p * 1e6:.1f} us per d[k]")
    print(f"process -> manager process (shm):   {m * 1e6:.1f} us per d[k]")
    print(f"ratio: {p / s:.2f}x faster from the subinterpreter than over pipe (target >= 2x), {m / s:.2f}x vs shm")


if __name__ == "__main__":
    main()
