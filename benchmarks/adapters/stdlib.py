"""The anchor: CPython's multiprocessing.managers (SyncManager), as users run it."""

from __future__ import annotations

from multiprocessing.managers import SyncManager
from typing import Any

from workloads import Counter, client_ops, standard_ops, sync_manager_state

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
    d, q = s["d"], s["sync"][1]
    return d._token, q._token, bytes(d._authkey)


def client(info: Any) -> Any:
    """In a fresh process: the same shared dict and queue, and how to let them go."""
    from multiprocessing.managers import AutoProxy, DictProxy

    d_token, q_token, authkey = info
    d = DictProxy(d_token, "pickle", authkey=authkey)
    q = AutoProxy(q_token, "pickle", authkey=authkey)
    return client_ops(d, q), (lambda: None)
