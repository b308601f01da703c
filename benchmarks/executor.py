"""Executor benchmarks: task overhead against the standard executor, and CPU scaling.

    python benchmarks/executor.py [--quick] [--json FILE]

1. Task overhead: N trivial tasks through ``m.executor()`` and through the standard
   ``ProcessPoolExecutor`` (same start method, same worker count), interleaved, several rounds.
2. Scaling: a CPU-bound task that reads shared configuration through proxies, on 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import reflectmgr


def trivial(x: int) -> int:
    return x


def cpu_task(config: Any, seed: int) -> int:
    """Reads its parameters from a shared dict (proxies), then burns CPU locally."""
    n, mod = config["n"], config["mod"]
    acc = seed
    for i in range(n):
        acc = (acc * 31 + i) % mod
    return acc


def timed_map(ex: Any, fn: Any, *iterables: Any) -> float:
    start = time.perf_counter()
    for _ in ex.map(fn, *iterables):
        pass
    return time.perf_counter() - start


def task_overhead(m: reflectmgr.Manager, n: int, rounds: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with m.executor(2, mp_context=ctx) as ours, ProcessPoolExecutor(2, mp_context=ctx) as std:
        timed_map(ours, trivial, range(50))  # start the workers
        timed_map(std, trivial, range(50))
        samples: dict[str, list[float]] = {"reflectmgr": [], "stdlib": []}
        for r in range(rounds):
            pair = [("reflectmgr", ours), ("stdlib", std)]
            for name, ex in pair if r % 2 == 0 else reversed(pair):
                samples[name].append(timed_map(ex, trivial, range(n)) / n)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {"per_task": med, "ratio": med["reflectmgr"] / med["stdlib"], "n": n}


def scaling(m: reflectmgr.Manager, tasks: int, n: int) -> dict[str, Any]:
    config = m.dict(n=n, mod=1_000_003)
    out = {}
    for workers in (1, 2):
        with m.executor(workers) as ex:
            timed_map(ex, cpu_task, [config] * workers, range(workers))  # warm
            out[workers] = min(timed_map(ex, cpu_task, [config] * tasks, range(tasks)) for _ in range(2))
    return {"seconds": out, "speedup": out[1] / out[2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    with reflectmgr.Manager() as m:
        overhead = task_overhead(m, n=1000 if args.quick else 10_000, rounds=2 if args.quick else 5)
        scale = scaling(m, tasks=4 if args.quick else 8, n=200_000 if args.quick else 2_000_000)
    print(f"executor benchmarks, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    per = overhead["per_task"]
    print(
        f"task overhead ({overhead['n']} trivial tasks, map, 2 workers, spawn): "
        f"reflectmgr {per['reflectmgr'] * 1e6:.0f} us/task, stdlib {per['stdlib'] * 1e6:.0f} us/task, "
        f"ratio {overhead['ratio']:.2f} (target <= 1.2)"
    )
    secs = scale["seconds"]
    print(
        f"CPU-bound tasks reading shared config: 1 worker {secs[1]:.2f} s, 2 workers {secs[2]:.2f} s, "
        f"speedup {scale['speedup']:.2f}x (2 cores)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"overhead": overhead, "scaling": scale}, indent=2))


if __name__ == "__main__":
    main()
