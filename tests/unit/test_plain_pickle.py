"""The common message's pickle in C (_wire/_plain.c): what it writes, pickle reads back equal;
what pickle writes, it reads equal or declines; and on mutated or random input it never returns
a value that pickle.loads would not (a wrong message is worse than a refused one)."""

from __future__ import annotations

import enum
import math
import os
import pickle
import random
from typing import Any

import pytest

from reflectmgr._wire import codec

plain = codec._plain
pytestmark = pytest.mark.skipif(plain is None, reason="_wire/_plain.c was not built here (no C compiler)")

LIMIT = 1 << 20
VALUES: list[Any] = [
    (0, (), 6, 140234567890123, (14, ("k",))),  # d["k"]'s request
    (1, (), 0),  # its reply
    (1, ((3, 1), (2, -1)), "x" * 300),  # releases, a long str
    (0, (), 5, 1, ("m", (1, 2.5, None, True, False, b"xy"), {"k": 1, "j": [1, 2, {"a": ()}]})),
    [],
    {},
    {1: "a", (1, 2): [3], None: {}, 2.5: b""},
    [[[[[]]]]],
    (1, 2, 3, 4, 5),
    ("é€\U0001f600", "\x00", ""),
    b"y" * 70_000,
    *(0, 1, 255, 256, 65535, 65536, -1, -(2**31), 2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63)),
    *(0.0, -0.0, 1e300, -1.5, math.inf, -math.inf),
]


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (True is not 1 here), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if type(a) in (tuple, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return len(a) == len(b) and all(
            _same(k1, k2) and _same(v1, v2) for (k1, v1), (k2, v2) in zip(a.items(), b.items(), strict=True)
        )
    if type(a) is float:
        return (a == b and math.copysign(1, a) == math.copysign(1, b)) or (a != a and b != b)
    return bool(a == b)


@pytest.mark.parametrize("value", VALUES, ids=[f"value{i}" for i in range(len(VALUES))])
def test_what_it_writes_pickle_reads_back_equal_and_so_does_it(value: Any) -> None:
    data = plain.dumps(value, LIMIT)
    assert data is not None
    assert _same(pickle.loads(data), value)
    assert _same(plain.loads(data), value)


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("value", VALUES, ids=[f"value{i}" for i in range(len(VALUES))])
def test_it_reads_what_pickle_writes(value: Any, protocol: int) -> None:
    assert _same(plain.loads(pickle.dumps(value, protocol)), value)


def test_nan_round_trips() -> None:
    assert math.isnan(plain.loads(plain.dumps(math.nan, LIMIT)))


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(Color.RED, id="IntEnum"),  # a subclass reduces to itself: pickle must write it
        pytest.param(Text("k"), id="str subclass"),
        pytest.param((1, Color.RED), id="IntEnum inside"),
        pytest.param(2**63, id="over 64 bits"),
        pytest.param(-(2**63) - 1, id="under 64 bits"),
        pytest.param("\udc80", id="lone surrogate"),
        pytest.param(1 + 2j, id="complex"),
        pytest.param({1, 2}, id="set"),
        pytest.param(object(), id="object"),
        pytest.param(lambda: 0, id="lambda"),
        pytest.param(range(3), id="range"),
        pytest.param(b"z" * 100, id="bytes over the limit"),  # the limit given below
        pytest.param(("a" * 60, "b" * 60), id="together over the limit"),
    ],
)
def test_anything_else_is_declined_not_guessed(value: Any) -> None:
    assert plain.dumps(value, 100) is None


def test_nesting_beyond_its_depth_is_declined() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = (deep,)
    assert plain.dumps(deep, LIMIT) is None
    assert _same(plain.loads(pickle.dumps(deep, 5)), deep) or plain.loads(pickle.dumps(deep, 5)) is None


def test_pickles_it_does_not_read_are_declined() -> None:
    shared = "k" * 3
    declined = [
        pickle.dumps((shared, shared), 5),  # the memo read back (BINGET)
        pickle.dumps((1, "k"), 2),  # BINPUT
        pickle.dumps(Color.RED, 5),  # a global and a reduce
        pickle.dumps(2**64, 5),  # LONG1 of 9 bytes
        b"",
        b"\x80\x05",
        b"\x80\x05N",  # no STOP
        b"\x80\x05NN.",  # two items at STOP
        b"\x80\x05N.trailing",
        b"\x80\x06N.",  # an unknown protocol
        b"N.",  # no PROTO
        b"\x80\x05(N.",  # a mark left open
        b"\x80\x05\x94N.",  # MEMOIZE of nothing: pickle raises
        b"\x80\x05\x85.",  # TUPLE1 of nothing: pickle raises
        b"\x80\x05}(]Nu.",  # an unhashable key: pickle raises
        b"\x80\x05\x8c\x02\xff\xfe\x94.",  # not UTF-8
        b"\x80\x05\x95\xff\x00\x00\x00\x00\x00\x00\x00N.",  # a frame longer than the data
    ]
    for data in declined:
        assert plain.loads(data) is None, data


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    if depth < 3 and rng.random() < 0.3:
        n = rng.randint(0, 5)
        kind = rng.choice("tld")
        if kind == "t":
            return tuple(_random_value(rng, depth + 1) for _ in range(n))
        if kind == "l":
            return [_random_value(rng, depth + 1) for _ in range(n)]
        return {rng.choice(["a", "b", 1, 2, (1,), 2.5, None]): _random_value(rng, depth + 1) for _ in range(n)}
    atoms = [None, True, False, 0, 1, 255, 256, 65536, -1, -(2**31), 2**63 - 1, 2**64, 1.5, "", "k", "é", b"ab"]
    return rng.choice([*atoms, "x" * 300, b"y" * 300])


def test_on_mutated_and_random_input_it_agrees_with_pickle_or_declines() -> None:
    seed = int(os.environ.get("REFLECTMGR_FUZZ_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    seeds = []
    for _ in range(200):
        value = _random_value(rng)
        seeds += [pickle.dumps(value, 5), pickle.dumps(value, 4)]
        data = plain.dumps(value, LIMIT)
        if data is not None:
            seeds.append(data)
    agreed = 0
    for _ in range(20_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) or 1)
            what = rng.random()
            if what < 0.5 and data:
                data[at] = rng.randrange(256)
            elif what < 0.75:
                del data[at : at + rng.randint(1, 3)]
            else:
                data[at:at] = bytes([rng.randrange(256)])
        if rng.random() < 0.1:
            data = bytearray(b"\x80\x05" + rng.randbytes(rng.randint(0, 12)))
        got = plain.loads(bytes(data))
        if got is None:
            continue
        try:
            want = pickle.loads(bytes(data))
        except Exception as exc:  # pickle refused it: then it must have been declined
            pytest.fail(f"seed {seed}: returned {got!r} where pickle.loads raised {exc!r} on {bytes(data)!r}")
        assert _same(got, want), f"seed {seed}: {got!r} != {want!r} on {bytes(data)!r}"
        agreed += 1
    assert agreed > 100, f"seed {seed}: too few mutations read to mean anything ({agreed})"


def test_the_codec_uses_it_unless_turned_off() -> None:
    wanted = os.environ.get("REFLECTMGR_NATIVE", "1") != "0"
    assert (codec.dumps_plain is plain.dumps) is wanted
    assert (codec.loads_plain is plain.loads) is wanted
