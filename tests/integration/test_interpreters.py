"""Subinterpreter pools (Python 3.13+): tasks in subinterpreters, each a client of the manager."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import reflectmgr

from ..helpers import CHILD
from .objects import Inventory, NarrowInitError

pytestmark = pytest.mark.interpreters


def _count(counter: Any, lock: Any, i: int) -> int:
    with lock:
        counter["n"] += 1
    return i * i


@pytest.fixture(params=["in-process owner", "manager process"])
def any_manager(request: pytest.FixtureRequest) -> Iterator[reflectmgr.Manager]:
    with reflectmgr.Manager(in_process=request.param == "in-process owner") as m:
        yield m


def test_pool_updates_a_shared_counter_under_a_shared_lock(any_manager: reflectmgr.Manager) -> None:
    counter = any_manager.dict(n=0)
    lock = any_manager.new(threading.Lock)
    with any_manager.executor(2, kind="interpreter") as ex:
        results = list(ex.map(_count, [counter] * 20, [lock] * 20, range(20)))
    assert results == [i * i for i in range(20)]
    assert counter["n"] == 20


def _interp_id() -> int:
    import _interpreters  # type: ignore[import-not-found]

    return int(_interpreters.get_current()[0])


def test_tasks_run_in_subinterpreters(any_manager: reflectmgr.Manager) -> None:
    with any_manager.executor(2, kind="interpreter") as ex:
        ids = {f.result(CHILD) for f in [ex.submit(_interp_id) for _ in range(8)]}
    assert 0 not in ids and 1 <= len(ids) <= 2  # never the main interpreter (id 0)


def _add(inv: Any) -> Any:
    return inv.add("pear", 1)  # returns a proxy to the record in the manager


def _fail(message: str) -> None:
    raise LookupError(message)


def test_proxies_in_and_out_and_errors(any_manager: reflectmgr.Manager) -> None:
    inv = any_manager.new(Inventory)
    with any_manager.executor(1, kind="interpreter") as ex:
        rec = ex.submit(_add, inv).result(CHILD)
        assert reflectmgr.is_proxy(rec) and rec["qty"] == 1
        assert ex.submit(lambda x: x + 1, 41).result(CHILD) == 42  # lambdas travel by value
        with pytest.raises(LookupError, match="nope") as info:
            ex.submit(_fail, "nope").result(CHILD)
        assert "_fail" in str(info.value.__cause__)
        with pytest.raises(NarrowInitError) as narrow:  # its own pickle does not load
            ex.submit(_narrow, 7).result(CHILD)
        assert narrow.value.code == 7 and narrow.value.args == ("bad 7",)
    assert inv.items["pear"]["qty"] == 1


def _narrow(code: int) -> None:
    raise NarrowInitError(code, f"bad {code}")


def test_sessions_end_with_the_pool(any_manager: reflectmgr.Manager) -> None:
    with any_manager.executor(2, kind="interpreter") as ex:
        list(ex.map(abs, range(4)))
    assert any_manager.stats().clients == 1
