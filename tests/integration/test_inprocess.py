"""Manager(in_process=True): the owner lives in this process; other processes still connect."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator

import pytest

import reflectmgr
from reflectmgr._owner.colocate import PERIOD_NS
from reflectmgr._transport import waiting

from ..helpers import CHILD, second_session
from .objects import Inventory, child_work


@pytest.fixture
def owner() -> Iterator[reflectmgr.Manager]:
    with reflectmgr.Manager(in_process=True) as m:
        yield m


def test_owner_in_this_process(owner: reflectmgr.Manager) -> None:
    assert owner.pid == os.getpid() and owner.inproc_address is not None
    d = owner.dict(a={"b": []})
    d["a"]["b"].append(1)
    assert reflectmgr.value(d) == {"a": {"b": [1]}}
    inv = owner.new(Inventory)
    inv.add("x", 2)
    assert inv.items["x"]["qty"] == 2 and owner.stats().clients == 1


def test_processes_connect_to_an_in_process_owner(owner: reflectmgr.Manager) -> None:
    d = owner.dict(nested={"list": []})
    inv = owner.new(Inventory)
    p = multiprocessing.get_context("spawn").Process(target=child_work, args=(d, inv, owner))
    p.start()
    p.join(CHILD)
    assert p.exitcode == 0
    assert d["child"] == p.pid and inv.items["from-child"]["qty"] == 2


def test_shutdown_stops_the_owner_threads() -> None:
    before = {t.name for t in threading.enumerate()}
    m = reflectmgr.Manager(in_process=True)
    m.start()
    d = m.dict(a=1)
    m.shutdown()
    with pytest.raises(reflectmgr.ManagerClosedError):
        d["a"]
    leftover = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert "reflectmgr-owner" not in leftover


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or waiting.CORES < 2 or waiting.current_cpu() < 0,
    reason="colocation pins threads on Linux, with sched_getcpu and two usable cores",
)
def test_the_owners_serving_threads_are_colocated_and_serve_while_pinned(owner: reflectmgr.Manager) -> None:
    """The server runs its connections through its Colocation: their threads are the ones a busy
    period pins, and calls are answered the same while they are pinned and after."""
    colocation = owner._server._colocation
    other = second_session(owner)
    try:
        d = owner.dict(n=0)
        theirs = other.dict(n=0)  # a second connection, with its own serving thread
        d["n"], theirs["n"] = 1, 2
        serving = set(colocation._threads)
        assert len(serving) >= 2
        mask = os.sched_getaffinity(0)
        colocation._seen.update(serving)
        colocation.decide(colocation._at + PERIOD_NS, colocation._cpu + PERIOD_NS)  # one busy period
        assert colocation.pinned in mask
        assert all(os.sched_getaffinity(tid) == {colocation.pinned} for tid in serving)
        for i in range(100):
            d["n"] = i
            theirs["n"] = -i
        assert (d["n"], theirs["n"]) == (99, -99)
        colocation.decide(colocation._at + PERIOD_NS, colocation._cpu)  # an idle period
        assert colocation.pinned == -1
        assert all(os.sched_getaffinity(tid) == mask for tid in serving)
        assert os.sched_getaffinity(0) == mask  # the test's own thread was never touched
    finally:
        other.close()
