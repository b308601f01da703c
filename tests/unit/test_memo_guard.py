"""The memo guard (reflectmgr/_wire/memo_guard.py): every pickle Python writes passes it; one
naming a memo index beyond its own size is refused before the C unpickler allocates for it."""

from __future__ import annotations

import collections
import datetime
import io
import pickle
import struct
import sys

import cloudpickle
import pytest

from reflectmgr._wire.memo_guard import check, needed

# Everything the walk must step over: short and long strings and bytes, ints of every width,
# floats, globals, reduce, sets, frames, out-of-band buffers' placeholders.
SAMPLE = {
    "short": "reflectmgr",
    "long": "r" * 300 + "p" * 300,
    "bytes": (b"rp" * 200, b"r"),
    "ints": (0, 114, 0x7272, 0x72727272, 2**70, -(2**40)),
    "float": 3.25,
    "tree": [{"a": (1, None, True)}, {"b", "r"}, frozenset({"p"})],
    "global": collections.OrderedDict(p=1, r=2),
    "date": datetime.date(2026, 12, 2),
    "array": bytearray(b"p\n" * 10),
    "shared": ["x"] * 3,
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol_passes_and_loads(protocol: int) -> None:
    # Protocols 0-3 memoize with explicit PUT/BINPUT/LONG_BINPUT indices: below the size.
    data = pickle.dumps(SAMPLE, protocol)
    check(data)
    check(bytearray(data))
    check(memoryview(data))
    assert pickle.loads(data) == SAMPLE


def test_many_memoized_objects_in_protocol_2_pass() -> None:
    # Over 256 memoized objects: LONG_BINPUT with growing indices, all below the size.
    data = pickle.dumps([str(i) for i in range(2000)], 2)
    assert b"r" in data
    check(data)


def test_cloudpickled_functions_pass() -> None:
    data = cloudpickle.dumps(lambda r, p=3: r * p + len("rp"), protocol=5)
    check(data)
    assert pickle.loads(data)(2) == 8


# A request whose REDUCE (R) had one bit flipped into LONG_BINPUT (r): the fuzz's finding.
FLIPPED = (
    b"\x80\x05\x95:\x00\x00\x00\x00\x00\x00\x00(\x8c\x18reflectmgr._wire.opcodes\x94\x8c\x03Msg"
    b"\x94\x93\x94K\x00\x85\x94r\x94)K\nK=\x8c\x01x\x14J\x01\x86\x94t\x94."
)


@pytest.mark.parametrize(
    "data",
    [
        FLIPPED,
        b"\x80\x02Nr" + struct.pack("<I", 1 << 28) + b".",
        b"Np300000000\n.",
        b"Np 00000000000000000300000000\n.",
        b"\x80\x05\x95\x0e\x00\x00\x00\x00\x00\x00\x00\x8c\x03abc\x94Nr\x00\x00\x00\x10.",
    ],
    ids=["bit-flip", "long-binput", "put", "put-padded", "inside-a-frame"],
)
def test_a_memo_index_beyond_the_size_is_refused(data: bytes) -> None:
    for form in (data, bytearray(data), memoryview(data)):
        with pytest.raises(pickle.UnpicklingError, match="memo index"):
            check(form)


@pytest.mark.parametrize("data", [b"", b"\x80", b"\x80\x05\x8c\xff", b"p12", b"pabc\n.", b"\x14r", b"\x80\x05X"])
def test_what_the_walk_cannot_follow_is_left_to_the_unpickler(data: bytes) -> None:
    check(data)  # no verdict: the unpickler refuses these itself
    with pytest.raises((pickle.UnpicklingError, EOFError, ValueError)):
        pickle.loads(data)


def test_needed_agrees_with_what_the_unpickler_allocates() -> None:
    unpickler = pickle.Unpickler(io.BytesIO(b"\x80\x02Nr\x00\x00\x04\x000N."))  # index 2**18
    unpickler.load()
    assert needed() == (sys.getsizeof(unpickler) >= (1 << 18) * 8)


HUGE_PUT = b"r" + struct.pack("<I", 1 << 28)


@pytest.mark.parametrize(
    "prefix",
    [
        b"I12\n",  # a line
        b"cbuiltins\nlen\n",  # two lines
        b"X\x03\x00\x00\x00abc",  # a four-byte length
        b"\x8e\x02\x00\x00\x00\x00\x00\x00\x00rr",  # an eight-byte length, holding r bytes
        b"\x8c\x02pr\x94",  # a one-byte length, then MEMOIZE
        b"]\x94(K\x01e",  # a list
        b"\x8a\x01r",  # LONG1
        b"h\x00j\x00\x00\x00\x00q\x01",  # gets and a small put
        b"p0\n",  # a put of a small index
    ],
)
def test_a_huge_index_is_found_after_any_opcode(prefix: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError, match="memo index"):
        check(b"\x80\x04" + prefix + HUGE_PUT + b".")


def test_the_walk_knows_every_opcode() -> None:
    import pickletools

    from reflectmgr._wire.memo_guard import _table

    table = _table()
    for opcode in pickletools.opcodes:
        code = ord(opcode.code)
        stepped = code in table.counted or code in table.lines or code == 0x72
        run = table.run.match(bytes([code, 0]) + bytes(8))
        assert stepped or (run is not None and run.end() > 0), opcode.name


def test_small_pickles_that_passed_are_remembered_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from reflectmgr._wire import memo_guard

    monkeypatch.setattr(memo_guard, "_passed", {})
    monkeypatch.setattr(memo_guard, "_REMEMBERED", 3)
    request = pickle.dumps((0, (), 5, 7, ("acquire", (), {})), 5)
    walks: list[bytes] = []
    walk = memo_guard._walk
    monkeypatch.setattr(memo_guard, "_walk", lambda data: (walks.append(bytes(data)), walk(data)))
    check(request)
    check(bytearray(request))  # the same bytes: looked up, not walked again
    assert walks == [request]
    for _ in range(2):  # a refused pickle is never remembered
        with pytest.raises(pickle.UnpicklingError):
            check(FLIPPED)
    assert len(walks) == 3 and FLIPPED not in memo_guard._passed
    for i in range(5):
        check(pickle.dumps(("release", i), 5))
    assert len(memo_guard._passed) <= 3
