"""Built-in exceptions travel by name and arguments (_wire/exceptions.py): rebuilt the same as
unpickling would, and nothing but an exception class is ever called."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from reflectmgr._wire.exceptions import compact, rebuild
from reflectmgr.errors import ProtocolError, RemoteError, as_remote


def _same(a: BaseException, b: BaseException) -> bool:
    return type(a) is type(b) and a.args == b.args and str(a) == str(b) and a.__dict__ == b.__dict__


@pytest.mark.parametrize(
    "exc",
    [
        KeyError("missing"),
        KeyError(("a", 1)),
        StopIteration(),
        StopIteration(42),
        TypeError("bad operand", 3),
        FileNotFoundError(2, "No such file or directory", "/nowhere"),
        OSError(13, "Permission denied"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        KeyboardInterrupt(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_builtin_exception_comes_back_as_unpickling_gives_it(exc: BaseException) -> None:
    named = compact(exc)
    assert named is not None and named[0] == type(exc).__name__
    again = rebuild(pickle.loads(pickle.dumps(named)))
    assert _same(again, pickle.loads(pickle.dumps(exc)))
    remote = rebuild(named, remote=True)  # built at once as what as_remote makes of it
    assert _same(remote, as_remote(again))
    assert isinstance(remote, RemoteError) == isinstance(exc, Exception)
    if isinstance(exc, OSError):
        assert (again.errno, again.strerror, again.filename) == (exc.errno, exc.strerror, exc.filename)  # type: ignore[attr-defined]


class CustomError(Exception):
    pass


def _with_note() -> BaseException:
    exc = KeyError("k")
    exc.add_note("looked in the cache first")
    return exc


def _with_attribute() -> BaseException:
    exc = ValueError("v")
    exc.code = 7  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    "exc",
    [CustomError("x"), _with_note(), _with_attribute(), ExceptionGroup("g", [KeyError("k")]), KeyError(object())],
    ids=["user class", "notes", "attribute", "group", "argument not plain"],
)
def test_anything_more_than_name_and_plain_arguments_is_pickled_whole(exc: BaseException) -> None:
    assert compact(exc) is None


@pytest.mark.parametrize(
    "named",
    [
        ("print", ("hello",)),
        ("open", ("/etc/passwd",)),
        ("NoSuchError", ()),
        ("KeyError", "k"),
        ("KeyError",),
        ("UnicodeDecodeError", ()),
        "KeyError",
        5,
    ],
    ids=[
        "a builtin function",
        "open",
        "unknown name",
        "args not a tuple",
        "short",
        "wrong arguments",
        "a string",
        "an int",
    ],
)
def test_a_malformed_reply_is_a_protocol_error_and_calls_nothing(named: Any) -> None:
    with pytest.raises(ProtocolError):
        rebuild(named)
