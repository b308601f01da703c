"""Executor benchmarks: task overhead against the standard executor, and CPU scaling.

    python benchmarks/executor.py [--quick] [--json FILE]

1. Task overhead: N trivial tasks through ``m.executor()`` and through the standard
   ``ProcessPoolExecutor`` (same start method, same worker count), interleaved, several rounds;
   on the quiet machine, then with every core busy with unrelated processes (the loaded twin).
2. Scaling: a CPU-bound task that reads shared configuration through proxies, on 1 and 2 workers.
3. Start: an executor of 2 workers made, its first 2 results, shut down; in programs of their own
   (each makes ``STARTS`` executors one after the other, the first reported apart), for
   ``m.executor()`` (workers forked from the template), ``m.executor()`` with spawn, and
   ``ProcessPoolExecutor`` with spawn, forkserver and fork. Quiet, then with every core busy with
   unrelated processes (``field.busy_cores``). The scripts' top level is empty: a spawned worker
   (and ours) runs it again, so a script with heavy imports adds their time to each worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import reflectmgr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from field import busy_cores  # benchmarks/ is not a package
from startup import summary

START_SYSTEMS = ("reflectmgr", "reflectmgr spawn", "stdlib spawn", "stdlib forkserver", "stdlib fork")
STARTS = 5  # per program: the first, then four later ones

START_PROGRAM = """
import json, multiprocessing, sys, time
from concurrent.futures import ProcessPoolExecutor


def trivial(x):
    return x


if __name__ == "__main__":
    import reflectmgr

    system, runs = sys.argv[1], int(sys.argv[2])
    times = []
    with reflectmgr.Manager() as m:
        for _ in range(runs):
            began = time.perf_counter()
            if system == "reflectmgr":
                ex = m.executor(2)
            elif system == "reflectmgr spawn":
                ex = m.executor(2, mp_context=multiprocessing.get_context("spawn"))
            else:
                ex = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(system.split()[1]))
            with ex:
                list(ex.map(trivial, range(2)))
            times.append(time.perf_counter() - began)
    print(json.dumps(times))
"""


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
    """Per trivial task, both executors' medians and their ratio (ours / the stdlib's): quiet,
    then with every core busy. The workers start before the busy loops do, in both cases."""
    ctx = multiprocessing.get_context("spawn")
    out: dict[str, Any] = {"n": n}
    with m.executor(2, mp_context=ctx) as ours, ProcessPoolExecutor(2, mp_context=ctx) as std:
        timed_map(ours, trivial, range(50))  # start the workers
        timed_map(std, trivial, range(50))
        for load in ("quiet", "busy"):
            samples: dict[str, list[float]] = {"reflectmgr": [], "stdlib": []}
            with busy_cores() if load == "busy" else contextlib.nullcontext():
                for r in range(rounds):
                    pair = [("reflectmgr", ours), ("stdlib", std)]
                    for name, ex in pair if r % 2 == 0 else reversed(pair):
                        samples[name].append(timed_map(ex, trivial, range(n)) / n)
            med = {k: statistics.median(v) for k, v in samples.items()}
            out[load] = {"per_task": med, "ratio": med["reflectmgr"] / med["stdlib"]}
    return out


def scaling(m: reflectmgr.Manager, tasks: int, n: int) -> dict[str, Any]:
    config = m.dict(n=n, mod=1_000_003)
    out = {}
    for workers in (1, 2):
        with m.executor(workers) as ex:
            timed_map(ex, cpu_task, [config] * workers, range(workers))  # warm
            out[workers] = min(timed_map(ex, cpu_task, [config] * tasks, range(tasks)) for _ in range(2))
    return {"seconds": out, "speedup": out[1] / out[2]}


def starts(programs: int, runs: int) -> dict[str, Any]:
    """Each system's first executor and its later ones (median, p90), quiet and busy."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "start_an_executor.py"
        script.write_text(START_PROGRAM)
        for load in ("quiet", "busy"):
            with busy_cores() if load == "busy" else contextlib.nullcontext():
                for system in START_SYSTEMS:
                    first: list[float] = []
                    later: list[float] = []
                    for _ in range(programs):
                        proc = subprocess.run(
                            [sys.executable, str(script), system, str(runs)],
                            capture_output=True,
                            text=True,
                            cwd=Path(__file__).resolve().parents[1],
                        )
                        if proc.returncode != 0:
                            raise SystemExit(f"{system} failed:\n{proc.stderr}")
                        times = json.loads(proc.stdout.splitlines()[-1])
                        first.append(times[0])
                        later.extend(times[1:])
                    out[f"{load}|{system}"] = {"first": summary(first), "later": summary(later)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    with reflectmgr.Manager() as m:
        overhead = task_overhead(m, n=1000 if args.quick else 10_000, rounds=2 if args.quick else 5)
        scale = scaling(m, tasks=4 if args.quick else 8, n=200_000 if args.quick else 2_000_000)
    programs, runs = (1, 2) if args.quick else (6, STARTS)
    start = starts(programs, runs)
    print(f"executor benchmarks, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"task overhead ({overhead['n']} trivial tasks, map, 2 workers, spawn; target: ratio <= 1.2):")
    for load in ("quiet", "busy"):
        per, label = overhead[load]["per_task"], "quiet" if load == "quiet" else "every core busy"
        print(
            f"  {label:16}reflectmgr {per['reflectmgr'] * 1e6:.0f} us/task, "
            f"stdlib {per['stdlib'] * 1e6:.0f} us/task, ratio {overhead[load]['ratio']:.2f}"
        )
    secs = scale["seconds"]
    print(
        f"CPU-bound tasks reading shared config: 1 worker {secs[1]:.2f} s, 2 workers {secs[2]:.2f} s, "
        f"speedup {scale['speedup']:.2f}x (2 cores)"
    )
    print(
        f"executor start (2 workers made, their first 2 results, shutdown; {programs} programs of {runs} "
        "executors): ms, median / p90"
    )
    for load in ("quiet", "busy"):
        print("  quiet:" if load == "quiet" else "  every core busy with unrelated processes:")
        for which in ("first", "later"):
            row = {system: start[f"{load}|{system}"][which] for system in START_SYSTEMS}
            cells = "  ".join(f"{system} {r['median'] * 1e3:.0f} / {r['p90'] * 1e3:.0f}" for system, r in row.items())
            ratio = row["stdlib spawn"]["median"] / row["reflectmgr"]["median"]
            print(f"    {which + ' executor:':17}{cells}  (stdlib spawn / reflectmgr: {ratio:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"overhead": overhead, "scaling": scale, "start": start}, indent=2))


if __name__ == "__main__":
    main()
