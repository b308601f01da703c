"""reflectmgr inside Ray: a proxy call from a Ray task against a Ray actor method call, same work.

    python benchmarks/ray_bench.py [--quick | --smoke] [--json FILE]   (needs the ray extra)

Both systems keep one dict in an actor of their own (reflectmgr: ``reflectmgr.ray.Manager``, an
actor with no CPU reserved; Ray: an actor with ``get``/``put`` methods, ``num_cpus=0`` too).
Tasks time each call inside the task, so what is measured is the call, not task scheduling:

    quiet   one task at a time, calls d[k] and d[k] = v       p50, p99 per call; ratio Ray / reflectmgr
    loaded  two tasks at once (every core), and the same with a busy loop on every core beside them
            (processes outside Ray): p50 and p99 per call, aggregate calls/s

Also, for reused workers: how long a worker's idle connection takes to close (``idle_close``) and
what the first call costs in a worker that connects afresh (key lookup in the cluster's store,
connect, claim the proxy), against a call on a warm connection.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray

import reflectmgr.ray


@ray.remote(num_cpus=0)
class DictActor:
    """Ray's own way: the dict in an actor, one method call per operation."""

    def __init__(self) -> None:
        self.d: dict[Any, Any] = {"k": 1}

    def get(self, key: Any) -> Any:
        return self.d[key]

    def put(self, key: Any, value: Any) -> None:
        self.d[key] = value


@ray.remote(num_cpus=1)
def proxy_calls(d: Any, n: int) -> dict[str, list[float]]:
    d["k"]  # the first call connects: not timed here (see first_call)
    return _timed(lambda: d["k"], lambda i: d.__setitem__("k", i), n)


@ray.remote(num_cpus=1)
def actor_calls(actor: Any, n: int) -> dict[str, list[float]]:
    ray.get(actor.get.remote("k"))
    return _timed(lambda: ray.get(actor.get.remote("k")), lambda i: ray.get(actor.put.remote("k", i)), n)


@ray.remote(num_cpus=1)
def first_call(blob: bytes) -> tuple[float, float, int]:
    """(unpickling a proxy and its first call in this worker, the next call, this worker's pid).
    A worker without a connection looks the key up in the cluster's store and connects here."""
    start = time.perf_counter()
    d = pickle.loads(blob)
    d["k"]
    first = time.perf_counter() - start
    start = time.perf_counter()
    d["k"]
    return first, time.perf_counter() - start, os.getpid()


def _timed(read: Any, write: Any, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"d[k]": [], "d[k] = v": []}
    clock = time.perf_counter
    for i in range(n):
        start = clock()
        read()
        mid = clock()
        write(i)
        out["d[k]"].append(mid - start)
        out["d[k] = v"].append(clock() - mid)
    return out


def _busy(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_round(d: Any, actor: Any, tasks: int, n: int) -> dict[str, Any]:
    """``tasks`` tasks at once per system (systems one after the other): per-call samples."""
    out: dict[str, Any] = {}
    for system, fn, target in (("reflectmgr", proxy_calls, d), ("ray actor", actor_calls, actor)):
        start = time.perf_counter()
        results = ray.get([fn.remote(target, n) for _ in range(tasks)])
        wall = time.perf_counter() - start
        for op in ("d[k]", "d[k] = v"):
            samples = [s for r in results for s in r[op]]
            out[(system, op)] = {
                "p50": statistics.median(samples),
                "p99": _pct(samples, 0.99),
                "calls_per_s": len(samples) / sum(samples) * tasks,
            }
        out[(system, "wall")] = wall
    return out


def scenario(d: Any, actor: Any, tasks: int, n: int, rounds: int) -> dict[str, Any]:
    """Median over ``rounds`` of each figure (rounds alternate which system goes first)."""
    collected: dict[Any, list[dict[str, float]]] = {}
    for _ in range(rounds):
        for key, value in run_round(d, actor, tasks, n).items():
            if isinstance(value, dict):
                collected.setdefault(key, []).append(value)
    return {
        key: {stat: statistics.median(v[stat] for v in values) for stat in values[0]}
        for key, values in collected.items()
    }


def idle_and_reconnect(m: Any, d: Any) -> dict[str, float]:
    """After a burst of tasks: seconds until the manager serves only the driver again; then, in
    a reused worker whose connection closed, a proxy's unpickling and first call (connecting
    afresh), against the same on a warm connection."""
    ray.get([first_call.remote(pickle.dumps(d)) for _ in range(4)])
    closed_after = _until_only_the_driver(m)
    cold, warm = [], []
    for _ in range(3):
        first, _, _ = ray.get(first_call.remote(pickle.dumps(d)))
        cold.append(first)
        first, _, _ = ray.get(first_call.remote(pickle.dumps(d)))  # the worker is still connected
        warm.append(first)
        _until_only_the_driver(m)
    return {
        "idle_close_s": m.idle_close,
        "closed_after_s": closed_after,
        "cold_first_call_s": statistics.median(cold),
        "warm_first_call_s": statistics.median(warm),
    }


def _until_only_the_driver(m: Any) -> float:
    start = time.perf_counter()
    while m.stats().clients > 1:
        if time.perf_counter() - start > 60:
            raise RuntimeError("workers' idle connections did not close within 60 s")
        time.sleep(0.05)  # polling the manager's own count
    return time.perf_counter() - start


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:8.2f} ms"


def report(name: str, figures: dict[Any, dict[str, float]]) -> list[str]:
    lines = [f"{name}:"]
    for op in ("d[k]", "d[k] = v"):
        ours, theirs = figures[("reflectmgr", op)], figures[("ray actor", op)]
        lines.append(
            f"  {op:9} reflectmgr p50 {fmt(ours['p50'])} p99 {fmt(ours['p99'])} {ours['calls_per_s']:9.0f} calls/s | "
            f"ray actor p50 {fmt(theirs['p50'])} p99 {fmt(theirs['p99'])} {theirs['calls_per_s']:7.0f} calls/s | "
            f"ratio p50 {theirs['p50'] / ours['p50']:5.1f}x p99 {theirs['p99'] / ours['p99']:5.1f}x"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="a few calls each: checks that it runs")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    n, rounds = (20, 1) if args.smoke else (300, 3) if args.quick else (1000, 5)
    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    results: dict[str, Any] = {}
    try:
        with reflectmgr.ray.Manager(idle_close=0.5 if args.smoke else 2.0) as m:
            d = m.dict(k=1)
            actor = DictActor.remote()
            ray.get(actor.get.remote("k"))
            results["quiet, 1 task"] = scenario(d, actor, 1, n, rounds)
            results[f"{cores} tasks at once"] = scenario(d, actor, cores, n, rounds)
            ctx = multiprocessing.get_context("spawn")
            stop = ctx.Event()
            busy = [ctx.Process(target=_busy, args=(stop,)) for _ in range(cores)]
            for p in busy:
                p.start()
            try:
                results[f"{cores} tasks, {cores} busy loops beside"] = scenario(d, actor, cores, n, rounds)
            finally:
                stop.set()
                for p in busy:
                    p.join()
            reuse = idle_and_reconnect(m, d)
            ray.kill(actor)
    finally:
        ray.shutdown()
    print(
        f"reflectmgr in Ray tasks against a Ray actor, Python {sys.version.split()[0]}, Ray {ray.__version__}, "
        f"{cores} cores; {n} calls per task, median of {rounds} rounds"
    )
    for name, figures in results.items():
        print("\n".join(report(name, figures)))
    print(
        f"reused workers: idle connections closed {reuse['closed_after_s']:.2f} s after the last task "
        f"(idle_close {reuse['idle_close_s']} s); unpickling a proxy and calling it in a worker that "
        f"connects afresh {fmt(reuse['cold_first_call_s'])} (key lookup, connect, claim), on a warm "
        f"connection {fmt(reuse['warm_first_call_s'])}"
    )
    if args.json:
        flat = {name: {f"{s} {o}": v for (s, o), v in fig.items()} for name, fig in results.items()}
        Path(args.json).write_text(json.dumps({"scenarios": flat, "reuse": reuse}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
