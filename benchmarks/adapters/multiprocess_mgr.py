"""The `multiprocess` package's manager (dill-based fork of multiprocessing), as users run it."""

from __future__ import annotations

from typing import Any

from multiprocess.managers import SyncManager  # type: ignore[import-untyped]
from workloads import Counter, client_ops, standard_ops, sync_manager_state

from adapters.stdlib import client_info as stdlib_client_info
from adapters.stdlib import server_pid, teardown

NAME = "multiprocess Manager"


class _Manager(SyncManager):  # type: ignore[misc]
    pass


_Manager.register("Counter", Counter)


def setup(quick: bool) -> Any:
    return sync_manager_state(_Manager)


operations = standard_ops
client_info = stdlib_client_info


def client(info: Any) -> Any:
    from multiprocess.managers import AutoProxy, DictProxy

    d_token, q_token, authkey = info
    d = DictProxy(d_token, "pickle", authkey=authkey)
    q = AutoProxy(q_token, "pickle", authkey=authkey)
    return client_ops(d, q), (lambda: None)


__all__ = ["NAME", "client", "client_info", "operations", "server_pid", "setup", "teardown"]
