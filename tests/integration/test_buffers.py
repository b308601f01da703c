"""Large buffers travel out of band on every transport, and arrive with their own type."""

from __future__ import annotations

import array
import os

import pytest

import reflectmgr
from reflectmgr._transport.shm import RING_SIZE
from reflectmgr._wire.codec import OOB_MIN

from .objects import ArrayInterface, BufferProbe

SIZES = [OOB_MIN - 1, OOB_MIN, RING_SIZE, 3 * RING_SIZE + 7]


@pytest.mark.parametrize("size", SIZES, ids=["below-oob", "oob", "ring", "beyond-ring"])
def test_bytes_in_and_out(manager: reflectmgr.Manager, size: int) -> None:
    data = os.urandom(size)
    d = manager.dict()
    d["b"] = data
    back = d["b"]
    assert type(back) is bytes and back == data
    lst = manager.list()
    lst.append(data)  # a method call, not a dunder
    assert lst[0] == data and lst.count(data) == 1


def test_bytearray_keeps_its_type_both_ways(manager: reflectmgr.Manager) -> None:
    data = bytearray(os.urandom(RING_SIZE + 3))
    probe = manager.new(BufferProbe)
    assert probe.describe(data) == ("bytearray", "B", (len(data),), False, bytes(data))
    fresh = probe.double(data)  # a new bytearray in the manager: returned by value
    assert type(fresh) is bytearray and fresh == data * 2
    d = manager.dict(ba=data)
    assert reflectmgr.is_proxy(d["ba"])  # a mutable buffer that lives in the manager is shared
    copy = reflectmgr.value(d["ba"])
    assert type(copy) is bytearray and copy == data
    copy[0] ^= 0xFF  # a private, writable copy
    assert reflectmgr.value(d["ba"]) == data


def test_memoryviews_travel_as_views(manager: reflectmgr.Manager) -> None:
    probe = manager.new(BufferProbe)
    doubles = array.array("d", range(OOB_MIN))  # 512 KiB of float64
    kind, fmt, shape, readonly, raw = probe.describe(memoryview(doubles))
    assert (kind, fmt, shape, readonly, raw) == ("memoryview", "d", (OOB_MIN,), False, doubles.tobytes())
    small = memoryview(b"tiny and read-only")  # below the out-of-band size: still a view
    assert probe.describe(small) == ("memoryview", "B", (18,), True, b"tiny and read-only")
    back = probe.view(doubles.tobytes(), "d")
    assert type(back) is memoryview and back.format == "d" and back.tolist() == doubles.tolist()


def test_several_and_nested_buffers_in_one_call(manager: reflectmgr.Manager) -> None:
    a, b, c = os.urandom(OOB_MIN * 2), os.urandom(RING_SIZE * 2), os.urandom(OOB_MIN)
    d = manager.dict()
    d.update({"a": a, "b": b, "deep": {"x": [c, (a, 1)]}})
    assert d["a"] == a and d["b"] == b
    assert reflectmgr.value(d["deep"]) == {"x": [c, (a, 1)]}
    assert d.get("b") == b


def test_numpy_arrays_round_trip(manager: reflectmgr.Manager) -> None:
    np = pytest.importorskip("numpy", reason="NumPy is not installed (pip install -e '.[test]' brings it)")
    arr = np.arange(600 * 500, dtype=np.float64).reshape(600, 500)
    probe = manager.new(BufferProbe)
    kind, fmt, shape, readonly, raw = probe.describe(arr)
    assert (kind, fmt, shape, readonly, raw) == ("ndarray", "d", (600, 500), False, arr.tobytes())
    doubled = probe.double(arr)  # a fresh array: by value, out of band
    assert isinstance(doubled, np.ndarray) and doubled.dtype == arr.dtype and doubled.shape == arr.shape
    assert np.array_equal(doubled, arr * 2) and doubled.flags.writeable
    d = manager.dict(arr=arr)
    copy = reflectmgr.value(d["arr"])
    assert isinstance(copy, np.ndarray) and np.array_equal(copy, arr)


def test_numpy_converts_a_proxy_to_a_local_copy(manager: reflectmgr.Manager) -> None:
    # np.asarray(p) raised "invalid __array_struct__" for an array proxy; for an object exposing
    # __array_interface__ it read the manager's address in this process (a segfault here).
    np = pytest.importorskip("numpy", reason="NumPy is not installed (pip install -e '.[test]' brings it)")
    shared = manager.new(np.zeros, (200, 300))
    shared[:2] = 1.0  # (a slice assignment is done in the manager)
    local = np.asarray(shared)
    assert type(local) is np.ndarray and local.shape == (200, 300) and local.sum() == 600.0
    local[0, 0] = 5.0  # a copy: the manager's array is not changed through it
    assert shared[0, 0] == 1.0
    assert np.add(shared, 1).sum() == 600.0 + 60000 and (np.ones(200) @ shared).shape == (300,)
    assert np.asarray(shared, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="copy=False"):
        np.array(shared, copy=False)
    foreign = manager.new(ArrayInterface, 100_000)
    assert np.array_equal(np.asarray(foreign), np.arange(100_000))
    with pytest.raises(AttributeError):
        foreign.__array_interface__  # noqa: B018 - an address of the manager's: never fetched


def test_the_buffer_protocol_gives_a_read_only_copy(manager: reflectmgr.Manager) -> None:
    # Python 3.12+ lets a class serve the buffer protocol (__buffer__, PEP 688): memoryview(p),
    # f.write(p), hashlib and bytes.join take a shared bytearray or array. 3.11 has no such hook.
    import hashlib
    import io
    import sys

    shared = manager.new(bytearray, b"hello")
    if sys.version_info < (3, 12):
        with pytest.raises(TypeError, match="bytes-like object is required, not 'bytearray proxy'"):
            memoryview(shared)
        return
    view = memoryview(shared)
    assert view.tobytes() == b"hello" and view.readonly
    out = io.BytesIO()
    out.write(shared)
    assert out.getvalue() == b"hello" and b"-".join([shared, shared]) == b"hello-hello"
    assert hashlib.sha256(shared).digest() == hashlib.sha256(b"hello").digest()
    with pytest.raises(TypeError, match="read-write"):
        io.BytesIO(b"xyz").readinto(shared)  # writes through a copy would be lost: refused
    assert shared == bytearray(b"hello")
    doubles = memoryview(manager.new(array.array, "d", [1.0, 2.5]))
    assert (doubles.format, doubles.shape, doubles.tolist()) == ("d", (2,), [1.0, 2.5])
