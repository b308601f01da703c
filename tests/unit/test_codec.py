"""The codec: fast path, cloudpickle fallback, and errors that say what did not pickle."""

from __future__ import annotations

import pickle
import threading

import pytest

from reflectmgr._wire import codec
from reflectmgr.errors import ReflectmgrPicklingError


def test_round_trip_plain_and_lambdas() -> None:
    flags, payload = codec.encode((0, (), 5, 1, "k", [1, 2], None))
    assert codec.decode(flags, payload) == (0, (), 5, 1, "k", [1, 2], None)
    flags, payload = codec.encode((0, (), 5, 1, lambda x: x * 2, None, None))
    assert codec.decode(flags, payload)[4](21) == 42


def test_unpicklable_argument_is_named() -> None:
    lock = threading.Lock()
    with pytest.raises(ReflectmgrPicklingError) as info:
        codec.encode((0, (), 4, 1, (1, lock), {}, None))
    assert "_thread.lock" in str(info.value)
    assert isinstance(info.value, pickle.PicklingError)
    err = codec.diagnose_call((1, lock), {}, info.value)
    assert "argument 1" in str(err) and "lock" in str(err)
    err = codec.diagnose_call((), {"cb": lock}, info.value)
    assert "keyword argument 'cb'" in str(err)


def test_errors_pickle() -> None:
    import reflectmgr

    for exc in (
        reflectmgr.RemoteError("T", "m", "tb"),
        reflectmgr.BrokenManagerError("x"),
        reflectmgr.AuthenticationError("x"),
        reflectmgr.ReflectmgrPicklingError("x"),
        reflectmgr.ManagerClosedError("x"),
        reflectmgr.RemoteTraceback("tb"),
    ):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
