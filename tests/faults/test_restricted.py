"""Issue 12: a restricted manager (``serializer="restricted"``) loads only allowed types, builds
only allowed factories, reaches no private names, calls no client back unless allowed, and stops
only for its owner. Everything refused is a RestrictedError answer: nothing runs, the connection
goes on."""

from __future__ import annotations

import collections
import datetime
import os
import pickle
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import reflectmgr
from reflectmgr._transport.auth import client_handshake
from reflectmgr._transport.sockets import connect as raw_connect
from reflectmgr._wire import codec
from reflectmgr._wire.opcodes import FLAG_RELEASES, Op

from ..helpers import DEATH, PROMPT, gone, second_session, until_dropped, wait_until
from ..integration.objects import Inventory, Vector

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def rm() -> Iterator[reflectmgr.Manager]:
    with reflectmgr.Manager(serializer="restricted", allowed=[Inventory]) as m:
        yield m


class _Bomb:
    """Unpickling it creates ``path``: the file must never appear."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def test_everyday_objects_work_in_a_restricted_manager(rm: reflectmgr.Manager) -> None:
    d = rm.dict(a=1)
    d["nested"] = {"x": [1, 2]}
    d["nested"]["x"].append(3)  # nested proxies
    d["when"] = datetime.datetime(2026, 1, 2, 3, 4)
    d["values"] = (1 + 2j, Decimal("1.5"), frozenset({1}), collections.OrderedDict(a=1), range(3), b"raw")
    assert d["nested"] == {"x": [1, 2, 3]} and d["when"].year == 2026 and d["values"][1] == Decimal("1.5")
    lst = rm.list(range(10))
    assert lst[2:5] == [2, 3, 4] and sorted(iter(lst)) == list(range(10)) and len(lst) == 10
    ns = rm.Namespace(x=1)
    ns.y = 2
    assert (ns.x, ns.y) == (1, 2)
    lock, rlock, robust = rm.Lock(), rm.RLock(), rm.Lock(robust=True)
    with lock, rlock, robust:
        assert lock.locked()
    q, ev = rm.Queue(), rm.Event()
    q.put({"job": 1})
    ev.set()
    assert q.get(timeout=PROMPT) == {"job": 1} and ev.is_set()
    cond = rm.Condition(rm.Lock())
    with cond:
        cond.notify_all()
    v, arr = rm.Value("i", 3), rm.Array("i", [1, 2, 3])
    v.value += 1
    assert v.value == 4 and list(arr) == [1, 2, 3]
    rm.root["d"] = d
    assert rm.root["d"]["a"] == 1 and rm.share({"z": [1]}) == {"z": [1]}
    inv = rm.new(Inventory)  # allowed
    inv.add("bolt", 3, tags=("m4",))
    assert inv.total() == 3 and d._callmethod("__len__") == 4  # a protocol method by name


def test_a_malicious_pickle_from_an_authenticated_peer_runs_nothing(rm: reflectmgr.Manager, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    d = rm.dict(a=1)
    with pytest.raises(reflectmgr.RestrictedError, match=r"posix\.system|nt\.system"):
        rm.new(os.system, f"touch {marker}")
    with pytest.raises(reflectmgr.RestrictedError, match=r"pathlib.*is not allowed"):
        d["x"] = _Bomb(marker)
    with pytest.raises(reflectmgr.RestrictedError, match="cloudpickle"):
        rm.new(lambda: marker.touch())  # a function by value
    with pytest.raises(reflectmgr.RestrictedError, match="is not allowed"):
        d["v"] = Vector(1)  # an importable class nobody allowed
    assert not marker.exists()
    assert d == {"a": 1}  # the connection and the state are as they were


def _raw_session(m: reflectmgr.Manager) -> Any:
    t = raw_connect(m.address, PROMPT)  # type: ignore[arg-type]
    t.set_timeout(PROMPT)
    client_handshake(t, m.authkey)
    return t


def test_a_bomb_in_the_hello_or_the_releases_is_refused_before_it_runs(rm: reflectmgr.Manager, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    t = _raw_session(rm)  # a bomb instead of HELLO: the connection is dropped, nothing ran
    try:
        t.send(0, pickle.dumps(_Bomb(marker)))
        assert until_dropped(t) == []
    finally:
        t.dispose()
    t = _raw_session(rm)
    try:
        t.send(0, pickle.dumps((0, (), 27, 0, (os.urandom(16), os.getpid()))))  # HELLO
        t.recv()
        t.authenticated(1 << 20)
        flags, payload = codec.with_releases(0, pickle.dumps((0, (), int(Op.PING), 0, ())), _Bomb(marker))  # type: ignore[arg-type]
        t.send(flags | FLAG_RELEASES, payload)
        answer = pickle.loads(t.recv()[1])  # refused and answered: the call did not run either
        assert answer[0] == 2 and isinstance(answer[2], reflectmgr.RestrictedError), answer
        t.send(0, pickle.dumps((0, (), int(Op.PING), 0, ())))
        assert pickle.loads(t.recv()[1]) == (1, (), None)  # the connection goes on
    finally:
        t.dispose()
    assert not marker.exists()
    assert rm.dict(a=1)["a"] == 1


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (Op.GETATTR, ("__class__",)),
        (Op.GETATTR, ("__dict__",)),
        (Op.CALLMETHOD, ("__reduce_ex__", (2,), {})),
        (Op.CALLMETHOD, ("__init_subclass__", (), {})),
        (Op.SETATTR, ("_secret", 1)),
        (Op.DELATTR, ("__doc__",)),
        (Op.CALLMETHOD_REF, ("_private", (), {})),
    ],
    ids=lambda v: v.name if isinstance(v, Op) else repr(v[0]),
)
def test_private_and_special_names_are_refused_at_the_manager(rm: reflectmgr.Manager, op: Op, args: Any) -> None:
    inv = rm.new(Inventory)
    with pytest.raises(reflectmgr.RestrictedError, match="private and special names"):
        rm.client.call(op, inv._rm_oid, *args)
    assert inv.total() == 0


def test_new_is_limited_to_the_factories_and_the_allowed(rm: reflectmgr.Manager) -> None:
    with pytest.raises(reflectmgr.RestrictedError, match=r"new\(\) of .*OrderedDict"):
        rm.new(collections.OrderedDict)  # a plain data type may travel, but it is no factory here
    with pytest.raises(reflectmgr.RestrictedError, match=r"collections\.Counter is not allowed"):
        rm.new(collections.Counter)  # nor may anything else
    with pytest.raises(reflectmgr.RestrictedError):
        rm.Pool()
    assert rm.new(Inventory).total() == 0


class _Callback:
    def __init__(self) -> None:
        self.calls = 0

    def hello(self) -> str:
        self.calls += 1
        return "from the client"


def test_callbacks_are_off_unless_allowed(rm: reflectmgr.Manager) -> None:
    d = rm.dict()
    with pytest.raises(reflectmgr.RestrictedError, match="allow_callbacks"):
        d["cb"] = reflectmgr.byref(_Callback())
    with reflectmgr.Manager(serializer="restricted", allow_callbacks=True) as m:
        d = m.dict()
        cb = _Callback()
        d["cb"] = reflectmgr.byref(cb)
        assert d["cb"].hello() == "from the client" and cb.calls == 1


def test_only_the_owner_stops_a_restricted_manager() -> None:
    m = reflectmgr.Manager(serializer="restricted")
    with m:
        other = second_session(m)
        try:
            with pytest.raises(reflectmgr.RestrictedError, match="only the process that started"):
                other.client.call(Op.SHUTDOWN, 0)
            with pytest.raises(reflectmgr.RestrictedError):
                other.client.call(Op.SHUTDOWN, 0, b"guess" * 8)
            assert other.dict(a=1)["a"] == 1  # still serving
        finally:
            other.close()
        pid = m.pid
        assert pid is not None
    wait_until(lambda: gone(pid), DEATH, "the manager process to exit")  # the owner stopped it


def test_restricted_options_are_checked() -> None:
    with pytest.raises(ValueError, match="serializer"):
        reflectmgr.Manager(serializer="json")
    with pytest.raises(ValueError, match="restricted"):
        reflectmgr.Manager(allowed=[Inventory])
    with pytest.raises(TypeError, match="allowed takes"):
        reflectmgr.Manager(serializer="restricted", allowed=["Inventory"])


def _inc(d: Any, k: str) -> None:
    d[k] = d.get(k, 0) + 1


def test_an_executor_works_with_a_restricted_manager(rm: reflectmgr.Manager) -> None:
    d = rm.dict()
    with rm.executor(2) as pool:
        list(pool.map(_inc, [d] * 3, ["a", "b", "c"]))  # tasks run in workers, not in the manager
    assert d == {"a": 1, "b": 1, "c": 1}
