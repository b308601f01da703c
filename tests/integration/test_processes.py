"""Proxies handed to multiprocessing children and to concurrent.futures tasks."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

import reflectmgr

from ..helpers import CHILD, baseline_objects, wait_until
from .objects import Inventory, child_work, pool_task

METHODS = [m for m in ("spawn", "forkserver", "fork") if m in multiprocessing.get_all_start_methods()]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_proxies_work_in_process_children(m: reflectmgr.Manager, method: str) -> None:
    d = m.dict(nested={"list": []})
    inv = m.new(Inventory)
    base = baseline_objects(m)
    ctx = multiprocessing.get_context(method)
    p = ctx.Process(target=child_work, args=(d, inv, m))
    p.start()
    p.join(CHILD)
    assert p.exitcode == 0
    assert d["child"] == p.pid
    assert d["clients_seen_by_child"] == 2  # the child has its own session, not our connection
    assert inv.items["from-child"]["qty"] == 2
    assert d["nested"]["list"] == ["child"]
    # Our own connection is intact after the child used (and closed) its own.
    inv.add("parent")
    assert sorted(inv.items) == ["from-child", "parent"]
    assert wait_until(lambda: m.stats().clients == 1, message="the child's session to end")
    assert wait_until(lambda: baseline_objects(m) == base, message="the child's references to go")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_proxies_in_standard_executor_tasks(m: reflectmgr.Manager, method: str) -> None:
    d = m.dict(nested={"list": []})
    base = baseline_objects(m)
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        results = list(ex.map(pool_task, [d] * 4, range(4)))
    assert sorted(d) == ["0", "1", "2", "3", "nested"]
    assert all(r is results[0] and reflectmgr.is_proxy(r) for r in results)
    results[0]["list"].append(1)
    assert d["nested"]["list"] == [1]
    del results
    assert wait_until(lambda: baseline_objects(m) == base, message="the workers' references to go")


def test_pickled_proxy_is_pinned_while_in_flight(m: reflectmgr.Manager) -> None:
    import gc
    import pickle

    d = m.dict(x=[1, 2])
    inner = d["x"]
    blob = pickle.dumps(inner)  # pins a reference for whoever loads it
    del inner
    gc.collect()
    m.client.flush()  # our last proxy's release reaches the manager ...
    again = pickle.loads(blob)  # ... yet the pinned object is still there to claim
    assert again == [1, 2]
