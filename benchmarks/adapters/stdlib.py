"""The anchor: CPython's multiprocessing.managers (SyncManager), as users run it."""

from __future__ import annotations

from multiprocessing.managers import SyncManager
from typing import Any

from workloads import Counter, standard_ops, sync_manager_state

NAME = "stdlib Manager"


class _Manager(SyncManager):
    pass


_Manager.register("Counter", Counter)


def setup(quick: bool) -> Any:
    return sync_manager_state(_Manager)


operations = standard_ops


def server_pid(s: Any) -> int:
    return int(s["m"]._process.pid)


def teardown(s: Any) -> None:
    s["m"].shutdown()


def client_info(s: Any) -> Any:
    d = s["d"]
    return d._token, bytes(d._authkey)


def client(info: Any) -> Any:
    """In a fresh process: the same shared dict, and how to let it go."""
    from multiprocessing.managers import DictProxy

    token, authkey = info
    d = DictProxy(token, "pickle", authkey=authkey)
    return (lambda: d["k"]), (lambda: None)
