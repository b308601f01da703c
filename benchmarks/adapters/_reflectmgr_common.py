"""reflectmgr with a given transport; the adapters for each transport are one line each."""

from __future__ import annotations

from typing import Any

from workloads import BIG, Counter, large_ops, small_ops, sync_ops

import reflectmgr


def setup(transport: str) -> Any:
    address = ("127.0.0.1", 0) if transport == "tcp" else None
    m = reflectmgr.Manager(address, transport=transport)
    m.start()
    return {
        "m": m,
        "d": m.dict(k=0),
        "lst": m.list(),
        "ns": m.Namespace(x=1),
        "obj": m.new(Counter),
        "nested": m.dict(a={}),
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
    return int(s["m"]._process.pid) if hasattr(s["m"], "_process") else int(s["m"].pid)


def teardown(s: Any) -> None:
    s["m"].shutdown()
