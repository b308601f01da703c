"""A process pool sharing a work queue and a result dict through the manager.

Workers of ``m.executor()`` are connected to the manager before their first task; the queue and
the dict reach them as proxies inside the task arguments, with no extra round trip.

Run:  python examples/process_pool.py
"""

from __future__ import annotations

import queue
from typing import Any

import reflectmgr


def worker(jobs: Any, results: Any, worker_id: int) -> int:
    """Take jobs until the queue is empty; record each result under the job's name."""
    done = 0
    while True:
        try:
            name, n = jobs.get_nowait()
        except queue.Empty:  # the remote queue.Empty arrives as itself
            return done
        results[name] = {"worker": worker_id, "collatz_steps": collatz(n)}
        done += 1


def collatz(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def main() -> None:
    with reflectmgr.Manager() as m:
        jobs = m.new(queue.Queue)
        for n in range(1, 41):
            jobs.put((f"n={n}", n))
        results = m.dict()
        with m.executor(max_workers=2) as ex:
            counts = list(ex.map(worker, [jobs] * 2, [results] * 2, range(2)))
        print("jobs done per worker:", counts)
        print("n=27 took", results["n=27"]["collatz_steps"], "steps")
        assert sum(counts) == 40 and len(results) == 40 and jobs.empty()
        print("results:", len(results), "| manager:", m.stats())


if __name__ == "__main__":
    main()
