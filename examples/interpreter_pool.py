"""A subinterpreter pool (Python 3.13+) updating a shared counter under a shared lock.

The owner runs in this process (``in_process=True``): no manager process, and each
subinterpreter, with its own GIL, reaches the shared objects over in-process shared-memory rings.

Run:  python examples/interpreter_pool.py
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import reflectmgr


def bump(counter: Any, lock: Any, times: int) -> int:
    for _ in range(times):
        with lock:  # a threading.Lock that lives with the owner
            counter["n"] += 1
    return times


def main() -> None:
    if sys.version_info < (3, 13):
        print(f"subinterpreter pools need Python 3.13+; this is {sys.version.split()[0]}: nothing to show")
        return
    with reflectmgr.Manager(in_process=True) as m:
        counter = m.dict(n=0)
        lock = m.new(threading.Lock)
        with m.executor(max_workers=2, kind="interpreter") as ex:
            done = sum(ex.map(bump, [counter] * 4, [lock] * 4, [250] * 4))
        print(f"{done} increments from 4 tasks in 2 subinterpreters: counter = {counter['n']}")
        assert counter["n"] == done == 1000


if __name__ == "__main__":
    main()
