"""Refuse a pickle that would make CPython's C unpickler allocate out of proportion to it.

The C unpickler keeps its memo in an array indexed by the ``PUT``/``LONG_BINPUT`` argument and
grows the array to twice an index it has not seen, zeroing every new slot under the GIL. So a
70-byte frame holding ``LONG_BINPUT 172698004`` makes the manager allocate and touch 2.7 GB,
stalling every client for seconds, and a larger index can bring in the OOM killer. CPython fixed
it late in 2025 (gh-115952); the Pythons we support do not all have the fix, and a bit flip in a
``REDUCE`` (``R``) makes a ``LONG_BINPUT`` (``r``), which is how the fuzz found it
(``benchmarks/fuzz.py --seed 579931532``).

A pickle cannot memoize more objects than it has bytes, and our encoder (protocol 5) never writes
an explicit index at all: it memoizes with ``MEMOIZE``. :func:`check` walks the opcodes, in C
where it can (a regular expression consumes the opcodes whose argument has a fixed or one-byte
length), and refuses an explicit index not below the pickle's length. A pickle with neither a
``p`` nor an ``r`` byte anywhere cannot hold one; that test is the common case and costs tens of
nanoseconds; the walk costs about 0.5 us for a 34-byte request (0.9 us for 81 bytes), and a
small pickle seen before (a repeated request) is looked up instead. Anything the walk cannot
follow is left to the unpickler, which refuses it itself.

Only a manager checks what it receives (a client trusts its manager), and only on a Python whose
unpickler has the flaw: :func:`needed` finds out once, from the size of an unpickler that has
loaded a ``LONG_BINPUT 65536`` (the flawed one holds a 1 MiB memo array for it).
"""

from __future__ import annotations

import functools
import io
import pickle
import re
import sys
from typing import Any

_PUT = _P = 0x70  # "p"
_LONG_BINPUT = _R = 0x72  # "r"
_SUSPECT = re.compile(rb"[pr]")
_NEWLINE = re.compile(rb"\n")


class _Table:
    """The walk's view of the opcodes, from ``pickletools`` (on first use: only a manager on a
    flawed Python walks): a regular expression that consumes any run of opcodes whose argument
    has a fixed size or a one-byte length (all but the memo puts), and how to step over the rest."""

    def __init__(self) -> None:
        import pickletools

        fixed: dict[int, list[int]] = {}
        counted1: list[int] = []
        self.counted = {}  # opcode -> size of its length field (4 or 8 bytes)
        self.lines = {}  # opcode -> number of newline-terminated arguments
        for opcode in pickletools.opcodes:
            code, arg = ord(opcode.code), opcode.arg
            if code in (_PUT, _LONG_BINPUT):
                continue
            if arg is None or arg.n >= 0:
                fixed.setdefault(0 if arg is None else arg.n, []).append(code)
            elif arg.n == pickletools.TAKEN_FROM_ARGUMENT1:
                counted1.append(code)
            elif arg.n in (pickletools.TAKEN_FROM_ARGUMENT4, pickletools.TAKEN_FROM_ARGUMENT4U):
                self.counted[code] = 4
            elif arg.n == pickletools.TAKEN_FROM_ARGUMENT8U:
                self.counted[code] = 8
            else:  # UP_TO_NEWLINE: GLOBAL and INST take two lines
                self.lines[code] = 2 if arg.name.endswith("pair") else 1
        self.lines[_PUT] = 1
        tokens = [_klass(codes) + (b".{%d}" % n if n else b"") for n, codes in sorted(fixed.items())]
        lengths = b"|".join(re.escape(bytes([n])) + (b".{%d}" % n if n else b"") for n in range(256))
        tokens.append(_klass(counted1) + b"(?:" + lengths + b")")
        # Possessive: a run never gives bytes back, which saves sre its backtracking records.
        self.run = re.compile(b"(?:" + b"|".join(tokens) + b")*+", re.DOTALL)


def _klass(codes: list[int]) -> bytes:
    return b"[" + b"".join(re.escape(bytes([c])) for c in codes) + b"]"


@functools.cache
def needed() -> bool:
    """Whether this Python's C unpickler sizes its memo by the largest index it is given."""
    probe = pickle.Unpickler(io.BytesIO(b"\x80\x02Nr\x00\x00\x01\x000N."))
    probe.load()
    return sys.getsizeof(probe) >= 65536 * 8


def check(data: Any) -> None:
    """Raise ``pickle.UnpicklingError`` if the pickle ``data`` (bytes, bytearray or a
    memoryview of bytes) names a memo index not below its own length."""
    if type(data) is memoryview:
        if _SUSPECT.search(data) is None:
            return
    elif _P not in data and _R not in data:  # int operands: a memchr each (a bytes one costs 10x)
        return
    if len(data) > _REMEMBERED_SIZE:
        _walk(data)
        return
    key = bytes(data)
    if key in _passed:
        return
    _walk(data)
    if len(_passed) >= _REMEMBERED:
        _passed.clear()
    _passed[key] = None


# Small pickles that passed, by their bytes: a request repeated as it is (a lock's acquire and
# release, a queue's put of the same item) is looked up instead of walked again (~60 ns against
# ~500 ns). At most _REMEMBERED of _REMEMBERED_SIZE bytes or less (under 0.3 MiB with the dict),
# emptied when full: a method call on one object is about 40 bytes.
_REMEMBERED, _REMEMBERED_SIZE = 1024, 128
_passed: dict[bytes, None] = {}


@functools.cache
def _table() -> _Table:
    return _Table()


def _walk(data: Any) -> None:
    table = _table()
    match, counted, lines, n = table.run.match, table.counted, table.lines, len(data)
    limit = n  # a pickle memoizes at most one object per byte
    pos = 0
    while True:
        pos = match(data, pos).end()  # type: ignore[union-attr]  # the pattern matches empty
        if pos >= n:
            return
        op = data[pos]
        if op == _LONG_BINPUT:
            if int.from_bytes(data[pos + 1 : pos + 5], "little") >= limit:
                raise pickle.UnpicklingError("a memo index beyond the pickle's size")
            pos += 5
        elif op in counted:
            width = counted[op]
            pos += 1 + width + int.from_bytes(data[pos + 1 : pos + 1 + width], "little")  # < 0: past the end
        elif op in lines:
            end = _line_end(data, pos + 1)
            if lines[op] == 2 and end >= 0:
                end = _line_end(data, end + 1)
            if end < 0:
                return  # no newline: the unpickler finds the pickle truncated
            if op == _PUT:
                try:
                    index = int(bytes(data[pos + 1 : end]))
                except ValueError:
                    return  # not a number: the unpickler refuses it
                if index >= limit:
                    raise pickle.UnpicklingError("a memo index beyond the pickle's size")
            pos = end + 1
        else:
            return  # not an opcode: the unpickler refuses the pickle


def _line_end(data: Any, start: int) -> int:
    if type(data) is memoryview:
        found = _NEWLINE.search(data, start)
        return -1 if found is None else found.start()
    return int(data.find(b"\n", start))
