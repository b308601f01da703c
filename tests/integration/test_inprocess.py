"""Manager(in_process=True): the owner lives in this process; other processes still connect."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator

import pytest

import reflectmgr

from ..helpers import CHILD
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
