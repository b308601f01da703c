"""``multiprocess`` (the dill-based fork of multiprocessing, the base of pathos) and reflectmgr.

The same program runs with ``multiprocess.Manager`` and with ``reflectmgr.Manager``: one import
changed. Its proxies travel into ``multiprocess.Process`` children (all three start methods) and
into ``multiprocess.Pool`` tasks, including a lambda that dill pickles with a proxy in its closure.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import multiprocess
import multiprocess.managers
import pytest

import reflectmgr
import reflectmgr.managers

from ..helpers import CHILD
from .docs_examples import MathsClass

IMPLEMENTATIONS = {"multiprocess": multiprocess, "reflectmgr": reflectmgr}
MANAGERS = {"multiprocess": multiprocess.managers, "reflectmgr": reflectmgr.managers}

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def _worker(d: Any, lst: Any, lock: Any, q: Any, i: int) -> None:
    with lock:
        d[i] = i * 10
        lst.append(i)
    q.put(i)


def program(manager_factory: Any, method: str) -> dict[str, Any]:
    """Code written for ``multiprocess.Manager``; only ``manager_factory`` changes."""
    ctx = multiprocess.get_context(method)
    with manager_factory() as m:
        d, lst, lock, q = m.dict(), m.list(), m.Lock(), m.Queue()
        children = [ctx.Process(target=_worker, args=(d, lst, lock, q, i)) for i in range(3)]
        for p in children:
            p.start()
        for p in children:
            p.join(CHILD)
        queued = sorted(q.get(timeout=CHILD) for _ in children)
        with ctx.Pool(2) as pool:  # dill pickles the lambda, and the proxy in its closure
            squares = pool.map(lambda i: d.setdefault(("sq", i), i * i), range(4))
        return {
            "exitcodes": [p.exitcode for p in children],
            "d": dict(d),
            "lst": sorted(lst),
            "queued": queued,
            "squares": squares,
        }


EXPECTED = {
    "exitcodes": [0, 0, 0],
    "d": {0: 0, 1: 10, 2: 20, ("sq", 0): 0, ("sq", 1): 1, ("sq", 2): 4, ("sq", 3): 9},
    "lst": [0, 1, 2],
    "queued": [0, 1, 2],
    "squares": [0, 1, 4, 9],
}


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
@pytest.mark.parametrize("implementation", ["multiprocess", "reflectmgr"])
def test_the_same_program_with_either_manager(implementation: str, method: str) -> None:
    assert program(IMPLEMENTATIONS[implementation].Manager, method) == EXPECTED


@pytest.mark.parametrize("implementation", ["multiprocess", "reflectmgr"])
def test_a_registered_type_with_either_managers_module(implementation: str) -> None:
    managers = MANAGERS[implementation]

    class MathsManager(managers.BaseManager):  # type: ignore[name-defined,misc]
        pass

    MathsManager.register("Maths", MathsClass)
    with MathsManager() as manager:
        maths = manager.Maths()
        assert maths.add(4, 3) == 7 and maths.mul(7, 8) == 56


def test_both_libraries_children_inherit_the_managers_key() -> None:
    # Each library keeps its own per-process authkey; the manager's default key is both.
    with reflectmgr.Manager() as m:
        assert m.authkey == bytes(multiprocessing.current_process().authkey)
        assert m.authkey == bytes(multiprocess.current_process().authkey)
