"""Per-call cost of a few operations, to compare two versions of reflectmgr on this machine.

    python3 benchmarks/versions.py [--load N] [--quick]
    git worktree add /tmp/base <commit> && PYTHONPATH=/tmp/base python3 benchmarks/versions.py

Run it for each version, alternating, several times: the machine is noisy, and only what holds
across runs counts. ``--load N`` keeps N CPU-bound processes busy during the measurement (the
loaded twin of the quiet figure). Prints, per operation, the median time per call over batches.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
from collections.abc import Callable
from typing import Any

from workloads import Counter, time_op  # run as a script: benchmarks/ is on sys.path

import reflectmgr


def _spin(stop: Any) -> None:
    while not stop.is_set():
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=int, default=0, help="CPU-bound processes to run meanwhile")
    ap.add_argument("--quick", action="store_true", help="a few calls of each (checks that it runs)")
    args = ap.parse_args()
    number, batches = (20, 3) if args.quick else (2000, 15)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    hogs = [ctx.Process(target=_spin, args=(stop,)) for _ in range(args.load)]
    for hog in hogs:
        hog.start()
    try:
        with reflectmgr.Manager() as m:
            d, obj, event = m.dict(k=0), m.new(Counter), m.Event()

            def set_wait() -> None:
                event.set()
                event.wait()

            ops: dict[str, Callable[[], Any]] = {
                "d[k]": lambda: d["k"],
                "method(k=1)": lambda: obj.incr(k=1),
                "Event set+wait": set_wait,
            }
            results = {name: statistics.median(time_op(fn, batches, number)) for name, fn in ops.items()}
    finally:
        stop.set()
        for hog in hogs:
            hog.join(10)
    where = reflectmgr.__file__.rsplit("/reflectmgr/", 1)[0]
    print(f"reflectmgr from {where}, {args.load} busy processes")
    for name, seconds in results.items():
        print(f"  {name:<16} {seconds * 1e6:6.1f} us")


if __name__ == "__main__":
    main()
