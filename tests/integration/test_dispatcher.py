"""The manager's dispatcher with several clients: what it runs itself, what it hands over, and
that the clients see the same objects and semantics as with a thread per connection."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import pytest

import reflectmgr
from reflectmgr._transport import waiting

from ..helpers import CHILD, PROMPT, gone, second_session
from .objects import Inventory

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not waiting.FUTEX, reason="the dispatcher serves shared-memory clients woken by futex (Linux)"),
]


def _hammer(d: Any, stop: threading.Event, errors: list[BaseException]) -> None:
    """Another client's plain calls, all the while: the dispatcher serves them between ours."""
    try:
        i = 0
        while not stop.is_set():
            d["n"] = i
            assert d["n"] == i
            i += 1
    except BaseException as exc:  # handed to the test
        errors.append(exc)


@pytest.fixture
def m(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A manager whose dispatcher serves every shared-memory client (by default none is: each
    connection has its own thread)."""
    monkeypatch.setenv("REFLECTMGR_DISPATCHER", "always")  # the spawned manager reads it
    with reflectmgr.Manager() as mgr:
        yield mgr


@pytest.fixture
def busy(m: reflectmgr.Manager) -> Any:
    """A second client calling the manager in a loop for the length of the test."""
    other = second_session(m)
    d = other.dict()
    stop, errors = threading.Event(), []
    t = threading.Thread(target=_hammer, args=(d, stop, errors), daemon=True)
    t.start()
    yield other
    stop.set()
    t.join(PROMPT)
    assert not t.is_alive() and errors == [], errors
    other.close()


def test_rlock_ownership_stays_per_client(m: reflectmgr.Manager, busy: Any) -> None:
    lock = m.RLock()
    other = second_session(m)
    try:
        theirs = other.root  # the same RLock through the other client
        m.root["lock"] = lock
        their_lock = theirs["lock"]
        assert lock.acquire() is True
        assert lock.acquire() is True  # reentrant for its owner...
        assert their_lock.acquire(timeout=0.2) is False  # ...and held against anyone else
        lock.release()
        lock.release()
        assert their_lock.acquire(timeout=PROMPT) is True
        their_lock.release()
    finally:
        other.close()


def test_a_condition_wait_and_notify_across_clients(m: reflectmgr.Manager, busy: Any) -> None:
    cond = m.Condition()
    m.root["cond"], m.root["box"] = cond, m.list()
    other = second_session(m)
    try:
        their_cond, their_box = other.root["cond"], other.root["box"]
        got: list[Any] = []

        def consumer() -> None:
            with cond:
                got.append(cond.wait_for(lambda: len(m.root["box"]) > 0, timeout=CHILD))

        t = threading.Thread(target=consumer)
        t.start()
        with their_cond:
            their_box.append(1)
            their_cond.notify_all()
        t.join(CHILD)
        assert got == [True]
    finally:
        other.close()


def test_a_blocking_get_is_woken_by_another_clients_put(m: reflectmgr.Manager, busy: Any) -> None:
    q = m.Queue()
    m.root["q"] = q
    other = second_session(m)
    try:
        got: list[Any] = []
        t = threading.Thread(target=lambda: got.append(q.get(timeout=CHILD)))
        t.start()
        other.root["q"].put("hello")  # answered at once, while the get still waits
        t.join(CHILD)
        assert got == ["hello"]
        with pytest.raises(queue.Empty):
            q.get(timeout=0.1)  # the stdlib's exception, raised in the manager's thread
    finally:
        other.close()


def test_a_reply_larger_than_the_ring_while_others_are_served(m: reflectmgr.Manager, busy: Any) -> None:
    blob = os.urandom(3 << 20)  # three rings' worth: the dispatcher hands the sending over
    d = m.dict(blob=blob)
    for _ in range(3):
        assert d["blob"] == blob
    d["blob"] = blob[::-1]
    assert d["blob"] == blob[::-1]


def test_user_objects_then_plain_calls_switch_between_thread_and_dispatcher(m: reflectmgr.Manager, busy: Any) -> None:
    inv = m.new(Inventory)
    d = m.dict()
    for _ in range(200):  # user code: the connection's own thread keeps the ring
        inv.add("x", 1)
    for i in range(200):  # plain calls again: given back to the dispatcher after a streak
        d[i] = i
    assert inv.total() == 200 and len(d) == 200 and d[199] == 199


def test_shutdown_while_a_connection_is_served_by_its_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFLECTMGR_DISPATCHER", "always")
    with reflectmgr.Manager() as mgr:
        inv = mgr.new(Inventory)
        inv.add("y")  # handed over: the connection's thread holds the ring
        pid = mgr.pid
    assert gone(pid)


def test_by_default_every_client_has_a_thread_of_its_own_beyond_the_cores_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default: a thread per connection for any number of clients (the dispatcher measured
    slower once the threads were colocated); no client is handed the dispatcher's bell."""
    monkeypatch.delenv("REFLECTMGR_DISPATCHER", raising=False)
    with reflectmgr.Manager() as mgr:
        sessions = [second_session(mgr) for _ in range(waiting.CORES + 2)]
        try:
            d = mgr.dict()
            mgr.root["d"] = d
            views = [s.root["d"] for s in sessions]
            for i, view in enumerate(views):
                view[i] = i
            assert d == {i: i for i in range(len(views))}
            assert mgr.stats().clients >= len(sessions)
            transports = [s._client._local.mine.channel.transport for s in sessions]
            assert all(t.bell is None for t in transports)
        finally:
            for s in sessions:
                s.close()


def test_with_the_dispatcher_asked_for_every_client_rings_its_bell(m: reflectmgr.Manager) -> None:
    other = second_session(m)
    try:
        assert other.dict(a=1)["a"] == 1
        assert other._client._local.mine.channel.transport.bell is not None
    finally:
        other.close()


@pytest.mark.parametrize("op", [None, "GETATTR", 999], ids=repr)
def test_a_request_with_no_valid_op_is_answered_not_ignored(m: reflectmgr.Manager, op: Any) -> None:
    """A peer's request whose op is not one (None among them, which the dispatcher once took for
    "nothing to run" and never answered) gets an error answer; the connection goes on."""
    import pickle

    from reflectmgr._transport.auth import client_handshake
    from reflectmgr._transport.shm import upgrade_client
    from reflectmgr._transport.sockets import connect as raw_connect
    from reflectmgr._wire.exceptions import rebuild

    q = m.Queue()  # an object the dispatcher may serve itself, when the request is well formed
    t = raw_connect(m.address, PROMPT)  # type: ignore[arg-type]
    try:
        client_handshake(t, m.authkey)
        t = upgrade_client(t)
        t.set_timeout(PROMPT)
        t.send(0, pickle.dumps((0, (), 27, 0, (os.urandom(16), os.getpid()))))  # HELLO
        t.recv()
        t.authenticated(1 << 20)
        oid = q._rm_oid
        requests = [(0, (), op, oid, ()), (0, (), 5, oid, ()), (0, (), 5, oid, ([],)), (0, (), 6, oid, ("x", 1, 2))]
        for request in requests:
            t.send(0, pickle.dumps(request))  # CALLMETHOD and DUNDER of the wrong arity too
            kind, _, error, _ = pickle.loads(t.recv()[1])
            if type(error) is tuple:  # a built-in exception travels by name (_wire/exceptions.py)
                error = rebuild(error)
            assert kind == 2 and isinstance(error, Exception), error
        t.send(0, pickle.dumps((0, (), 29, 0, ())))  # PING: still served
        assert pickle.loads(t.recv()[1]) == (1, (), None)
    finally:
        t.dispose()
