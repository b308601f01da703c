"""reflectmgr with a given transport; the adapters for each transport are one line each."""

from __future__ import annotations

from typing import Any

from workloads import BIG, Counter, client_ops, standard_ops

import reflectmgr


def setup(transport: str) -> Any:
    address = ("127.0.0.1", 0) if transport == "tcp" else None
    m = reflectmgr.Manager(address, transport=transport)
    m.start()
    return {"m": m, **shared_objects(m)}


def shared_objects(f: Any) -> dict[str, Any]:
    """The workloads' objects, made through ``f`` (a Manager, or a Connection to it)."""
    d = f.dict(k=0)
    q = f.Queue()
    f.root["d"], f.root["q"] = d, q  # where client processes find them
    return {
        "d": d,
        "lst": f.list(),
        "ns": f.Namespace(x=1),
        "obj": f.new(Counter),
        "nested": f.dict(a={}),
        "big": f.list(range(BIG)),
        "sync": (f.Lock(), q, f.Event()),
    }


operations = standard_ops


def server_pid(s: Any) -> int:
    return int(s["m"].pid)


def teardown(s: Any) -> None:
    s["m"].shutdown()


def client_info(s: Any) -> Any:
    return s["m"].address, s["m"].authkey


def client(info: Any) -> Any:
    conn = reflectmgr.connect(*info)
    return client_ops(conn.root["d"], conn.root["q"]), conn.close
