"""Executor benchmarks: task overhead against the standard executor, and CPU scaling.

    python benchmarks/executor.py [--quick] [--json FILE]

1. Task overhead: N trivial tasks through ``m.executor()`` and through the standard
   ``ProcessPoolExecutor`` (same start method, same worker count), by ``map`` and by ``submit``,
   interleaved, several rounds; on the quiet machine, then with every core busy with unrelated
   processes (the loaded twin).
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


def timed_submit(ex: Any, fn: Any, args: range) -> float:
    start = time.perf_counter()
    for future in [ex.submit(fn, x) for x in args]:
        future.result()
    return time.perf_counter() - start


TIMED = {"map": timed_map, "submit": timed_submit}


def task_overhead(m: reflectmgr.Manager, n: int, rounds: int, sessions: int) -> dict[str, Any]:
    """Per trivial task (a function of this script, as a user's are), through ``map`` and
    through ``submit``: each executor's median, and the ratio ours / the stdlib's (the median of
    each round's), quiet, then with every core busy. A second standard executor runs beside them:
    its ratio to the first is what this machine's noise alone gives. An executor keeps a speed of
    its own for its life (where its workers landed: one stdlib executor against another ran at
    0.63x over a whole run), so the three are made afresh ``sessions`` times; in each, the
    workers start before the busy loops do."""
    ctx = multiprocessing.get_context("spawn")
    names = ["reflectmgr", "stdlib", "stdlib again"]
    samples = {(load, api, name): [] for load in ("quiet", "busy") for api in TIMED for name in names}
    for _ in range(sessions):
        with (
            m.executor(2, mp_context=ctx) as ours,
            ProcessPoolExecutor(2, mp_context=ctx) as std,
            ProcessPoolExecutor(2, mp_context=ctx) as again,
        ):
            executors = dict(zip(names, (ours, std, again), strict=True))
            for ex in executors.values():
                timed_map(ex, trivial, range(50))  # start the workers
            for load in ("quiet", "busy"):
                with busy_cores() if load == "busy" else contextlib.nullcontext():
                    for api, timed in TIMED.items():
                        for r in range(rounds):
                            for name in names[r % 3 :] + names[: r % 3]:  # each goes first in turn
                                samples[load, api, name].append(timed(executors[name], trivial, range(n)) / n)
    out: dict[str, Any] = {"n": n, "rounds": rounds * sessions}
    for load in ("quiet", "busy"):
        for api in TIMED:
            mine = {name: samples[load, api, name] for name in names}
            row: dict[str, Any] = {"per_task": {k: statistics.median(v) for k, v in mine.items()}}
            # a round's runs are next to each other in time: their ratio leaves out what the
            # machine did from one round to the next
            for name in ("reflectmgr", "stdlib again"):
                paired = [a / b for a, b in zip(mine[name], mine["stdlib"], strict=True)]
                row[name] = {"ratio": statistics.median(paired), "quartiles": _quartiles(paired)}
            out[f"{load}|{api}"] = row
    return out


def _quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


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
        overhead = task_overhead(
            m, n=500 if args.quick else 2000, rounds=3 if args.quick else 6, sessions=3 if args.quick else 5
        )
        scale = scaling(m, tasks=4 if args.quick else 8, n=200_000 if args.quick else 2_000_000)
    programs, runs = (1, 2) if args.quick else (6, STARTS)
    start = starts(programs, runs)
    print(f"executor benchmarks, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(
        f"task overhead ({overhead['rounds']} rounds of {overhead['n']} trivial tasks, 2 workers, spawn; ratio: "
        "the median of each round's ours / the stdlib's; target: <= 1.2):"
    )
    for load in ("quiet", "busy"):
        for api in TIMED:
            row = overhead[f"{load}|{api}"]
            per, label = row["per_task"], f"{'quiet' if load == 'quiet' else 'every core busy'}, {api}"
            ours, noise = row["reflectmgr"], row["stdlib again"]
            print(
                f"  {label:24}reflectmgr {per['reflectmgr'] * 1e6:.0f} us/task, "
                f"stdlib {per['stdlib'] * 1e6:.0f} us/task, ratio {ours['ratio']:.2f} "
                f"(quartiles {ours['quartiles'][0]:.2f}-{ours['quartiles'][1]:.2f}); "
                f"a second stdlib executor {noise['ratio']:.2f} "
                f"({noise['quartiles'][0]:.2f}-{noise['quartiles'][1]:.2f})"
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
