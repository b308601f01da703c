"""The `multiprocess` package's manager (dill-based fork of multiprocessing), as users run it."""

from __future__ import annotations

from typing import Any

from multiprocess.managers import SyncManager  # type: ignore[import-untyped]
from workloads import BIG, Counter, large_ops, small_ops, sync_ops

NAME = "multiprocess Manager"


class _Manager(SyncManager):  # type: ignore[misc]
    pass


_Manager.register("Counter", Counter)


def setup(quick: bool) -> Any:
    m = _Manager()
    m.start()
    nested = m.dict()
    nested["a"] = m.dict()
    return {
        "m": m,
        "d": m.dict(k=0),
        "lst": m.list(),
        "ns": m.Namespace(x=1),
        "obj": m.Counter(),
        "nested": nested,
        "big": m.list(range(BIG)),
        "sync": (m.Lock(), m.Queue(), m.Event()),
    }


def operations(s: Any) -> dict[str, Any]:
    ops = small_ops(s["d"], s["lst"], s["ns"], s["obj"], s["nested"])
    ops.update(sync_ops(*s["sync"]))
    ops.update(large_ops(s["d"]))
    ops["iterate 100k list"] = lambda: sum(1 for _ in s["big"])
    return ops


def server_pid(s: Any) -> int:
    return int(s["m"]._process.pid)


def teardown(s: Any) -> None:
    s["m"].shutdown()
