"""What the manager's dispatcher runs itself, and how it tries calls that could block."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

from reflectmgr._owner.dispatch import HANDLERS
from reflectmgr._owner.inline import WouldBlock, inline_handler, plain
from reflectmgr._owner.table import Account, ObjectTable
from reflectmgr._wire.dunders import DUNDERS
from reflectmgr._wire.opcodes import Op

from ..integration.objects import Inventory


class _Cache:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class _Importer:
    def __init__(self, byref_objects: int) -> None:
        self.cache = _Cache(byref_objects)


class _Peer:
    """The parts of a session that the classification reads."""

    def __init__(self, byref_objects: int = 0) -> None:
        self.table = ObjectTable()
        self.account = Account("test")
        self.importer = _Importer(byref_objects)

    def put(self, obj: Any) -> int:
        return self.table.export(self.account, obj)


def _dunder(name: str) -> int:
    return next(i for i, d in enumerate(DUNDERS) if d.name == name)


@pytest.mark.parametrize("value", [1, 2.5, "s", b"b", None, True, (1, "a"), [1, 2], {"a": 1}, frozenset({1})])
def test_plain_values(value: Any) -> None:
    assert plain(value)


@pytest.mark.parametrize("value", [Inventory(), [[1]], {"a": [1]}, list(range(100)), object(), (Inventory(),)])
def test_values_that_could_run_code_or_are_large_are_not_plain(value: Any) -> None:
    assert not plain(value)


def test_plain_containers_with_plain_arguments_run_inline() -> None:
    peer = _Peer()
    oid = peer.put({"k": 1})
    getitem = (_dunder("__getitem__"), ("k",))
    assert inline_handler(peer, (), int(Op.DUNDER), oid, getitem) is HANDLERS[int(Op.DUNDER)]
    assert inline_handler(peer, (), int(Op.CALLMETHOD), oid, ("get", ("k",), {})) is not None
    assert inline_handler(peer, (), int(Op.PING), 0, ()) is not None


def test_what_goes_to_the_connection_thread() -> None:
    peer = _Peer()
    d, counter, rlock = peer.put({}), peer.put(Inventory()), peer.put(threading.RLock())
    assert inline_handler(peer, (), int(Op.DUNDER), d, (_dunder("__setitem__"), ("k", Inventory()))) is None
    assert inline_handler(peer, (), int(Op.CALLMETHOD), counter, ("add", ("x", 1), {})) is None  # user code
    assert inline_handler(peer, (), int(Op.CALLMETHOD), rlock, ("acquire", (), {})) is None  # owner thread
    assert inline_handler(peer, (), int(Op.NEW), 0, (dict, (), {})) is None
    assert inline_handler(peer, (), "garbage", 0, ()) is None


def test_a_client_with_byref_objects_here_is_served_by_its_thread() -> None:
    peer = _Peer(byref_objects=1)  # a comparison, or a __del__ run by a release, may call it back
    d = peer.put({"k": 1})
    assert inline_handler(peer, (), int(Op.DUNDER), d, (_dunder("__getitem__"), ("k",))) is None
    assert inline_handler(peer, ((d, 1),), int(Op.PING), 0, ()) is None
    assert inline_handler(_Peer(), ((d, 1),), int(Op.PING), 0, ()) is not None


def _trial(peer: _Peer, oid: int, name: str, *args: Any, **kwargs: Any) -> Any:
    handle = inline_handler(peer, (), int(Op.CALLMETHOD), oid, (name, args, kwargs))
    assert handle is not None, f"{name} should be tried inline"
    return handle(peer, oid, name, args, kwargs)


def test_a_lock_is_taken_inline_when_free_and_handed_over_when_not() -> None:
    peer = _Peer()
    lock = threading.Lock()
    oid = peer.put(lock)
    assert _trial(peer, oid, "acquire") is True and lock.locked()
    with pytest.raises(WouldBlock):
        _trial(peer, oid, "acquire")
    with pytest.raises(WouldBlock):
        _trial(peer, oid, "acquire", timeout=5)
    assert _trial(peer, oid, "acquire", False) is False  # non-blocking: answered inline
    for args, kwargs in (((False, 1), {}), ((False,), {"timeout": 1})):
        with pytest.raises(WouldBlock):  # a timeout for a call that does not wait: the real call's ValueError
            _trial(peer, oid, "acquire", *args, **kwargs)
    assert _trial(peer, oid, "release") is None and not lock.locked()
    with pytest.raises(WouldBlock):
        _trial(peer, oid, "acquire", True, blocking=True)  # a shape the real call must judge


def test_queue_and_event_trials() -> None:
    peer = _Peer()
    q: queue.Queue[int] = queue.Queue(maxsize=1)
    event = threading.Event()
    qid, eid = peer.put(q), peer.put(event)
    with pytest.raises(WouldBlock):
        _trial(peer, qid, "get")
    with pytest.raises(queue.Empty):
        _trial(peer, qid, "get", False)
    assert _trial(peer, qid, "put", 1) is None
    with pytest.raises(WouldBlock):
        _trial(peer, qid, "put", 2)  # full: a blocking put waits on the connection's thread
    with pytest.raises(queue.Full):
        _trial(peer, qid, "put", 2, block=False)
    for args, kwargs in (((), {"timeout": -1}), ((True, -1), {})):
        with pytest.raises(WouldBlock):  # the real call's ValueError, though an item is there
            _trial(peer, qid, "get", *args, **kwargs)
    assert _trial(peer, qid, "get", timeout=5) == 1  # a timeout that need not wait: inline
    assert _trial(peer, qid, "put", 1, timeout=0.5) is None
    assert _trial(peer, qid, "get") == 1
    with pytest.raises(WouldBlock):
        _trial(peer, eid, "wait")
    assert _trial(peer, eid, "set") is None
    assert _trial(peer, eid, "wait", 1.0) is True
