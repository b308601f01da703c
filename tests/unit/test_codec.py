"""The codec: fast path, cloudpickle fallback, and errors that say what did not pickle."""

from __future__ import annotations

import pickle
import threading

import pytest

from reflectmgr._wire import codec
from reflectmgr._wire.opcodes import FLAG_OOB
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


def test_large_buffers_leave_the_pickle_and_come_back_with_their_types() -> None:
    big = b"b" * codec.OOB_MIN
    arr = bytearray(b"a" * codec.OOB_MIN)
    view = memoryview(bytearray(8 * codec.OOB_MIN)).cast("d")
    msg = (0, (), 7, 1, "k", (big, arr, view, b"small"), {"kw": big})
    oob: list[object] = []
    flags, payload = codec.encode(msg, oob=oob)
    assert flags & FLAG_OOB and len(oob) == 4 and len(payload) < 1024
    buffers = [bytes(b.raw()) if b.raw().readonly else bytearray(b.raw()) for b in oob]  # as a transport delivers
    out = codec.decode(flags, payload, buffers=buffers)
    assert out[5][0] == big and type(out[5][0]) is bytes
    assert out[5][1] == arr and type(out[5][1]) is bytearray
    assert type(out[5][2]) is memoryview and out[5][2].format == "d" and out[5][2].tobytes() == view.tobytes()
    assert out[5][3] == b"small" and out[6] == {"kw": big}


def test_small_messages_take_no_out_of_band_path() -> None:
    oob: list[object] = []
    flags, _ = codec.encode((0, (), 7, 1, "k", (b"x" * (codec.OOB_MIN - 1),), None), oob=oob)
    assert not flags & FLAG_OOB and oob == []


def test_numpy_arrays_go_out_of_band() -> None:
    np = pytest.importorskip("numpy", reason="NumPy is not installed (pip install -e '.[test]' brings it)")
    arr = np.ones((512, 256))
    oob: list[object] = []
    flags, payload = codec.encode((0, (), 7, 1, (arr,), None, None), oob=oob)
    assert flags & FLAG_OOB and len(oob) == 1 and len(payload) < 1024
    out = codec.decode(flags, payload, buffers=[bytearray(oob[0].raw())])  # type: ignore[attr-defined]
    assert np.array_equal(out[4][0], arr)
