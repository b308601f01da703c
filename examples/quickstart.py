"""Quickstart: a manager owns an inventory and a nested dict; two worker processes change both.

Run:  python examples/quickstart.py
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import reflectmgr


class Inventory:
    def __init__(self) -> None:
        self.items: dict[str, Any] = {}

    def add(self, name: str, qty: int = 1, *, tags: tuple[str, ...] = ()) -> dict[str, Any]:
        rec = self.items.setdefault(name, {"qty": 0, "tags": set()})
        rec["qty"] += qty
        rec["tags"].update(tags)
        return rec


def work(inv: Any, shared: Any, worker: int) -> int:
    """Runs in a worker process; ``inv`` and ``shared`` are proxies to the manager's objects."""
    with shared["lock"]:  # a threading.Lock that lives in the manager: `with` acquires it there
        rec = inv.add("apple", 3, tags=("fruit",))  # rec: a proxy to the record inside the manager
        rec["qty"] += 1  # changes the manager's record
        shared["log"].append(f"worker {worker}: {len(inv.items)} items")  # nested mutation
        shared["stats"]["calls"] += 1
        return int(inv.items["apple"]["qty"])


def main() -> None:
    with reflectmgr.Manager() as m:
        inv = m.new(Inventory)  # built inside the manager; inv is a proxy
        shared = m.dict(log=[], stats={"calls": 0})
        shared["lock"] = m.new(threading.Lock)  # unpicklable, so it stays in the manager
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
            seen = list(ex.map(work, [inv] * 4, [shared] * 4, range(4)))
        print("quantities seen by the tasks:", sorted(seen))
        print("log:", sorted(shared["log"]))
        print("stats:", reflectmgr.value(shared["stats"]))
        print("inventory:", reflectmgr.value(inv.items))
        assert inv.items["apple"]["qty"] == 16 and shared["stats"]["calls"] == 4
        print("manager:", m.stats())


if __name__ == "__main__":
    main()
