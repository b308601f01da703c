"""A traceback captured where it was raised and rendered where it is read reads as if formatted there."""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable

import pytest

import reflectmgr
from reflectmgr._wire.tracebacks import capture, render


class LocalError(Exception):
    pass


def _inner(d: dict[str, int]) -> int:
    return d["x"]


def _caused() -> None:
    try:
        _inner({})
    except KeyError as exc:
        raise ValueError("wrapped") from exc


def _during() -> None:
    try:
        {}["y"]
    except KeyError:
        1 / 0  # noqa: B018


def _noted() -> None:
    exc = ValueError("with a note")
    exc.add_note("a note")
    raise exc


def _syntax() -> None:
    compile("x = (", "<snippet>", "exec")


def _multiline() -> int:
    return (1 +
            {}["k"])  # fmt: skip


def _empty_message() -> None:
    raise LocalError


def _group() -> None:
    raise ExceptionGroup("several", [ValueError("a"), KeyError("b")])


def _unprintable() -> None:
    class UnprintableError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    raise UnprintableError


CASES: list[Callable[[], object]] = [
    lambda: _inner({}),
    _caused,
    _during,
    _noted,
    _syntax,
    _multiline,
    _empty_message,
    _group,
    _unprintable,
]


@pytest.mark.parametrize("raiser", CASES)
def test_render_of_a_capture_is_what_format_exception_gives(raiser: Callable[[], object]) -> None:
    with pytest.raises(BaseException) as info:
        raiser()
    captured = pickle.loads(pickle.dumps(capture(info.value)))  # it travels as plain data
    assert render(captured) == "".join(traceback.format_exception(info.value))


def test_remote_traceback_formats_on_first_read_and_pickles() -> None:
    try:
        _caused()
    except ValueError as exc:
        rt = reflectmgr.RemoteTraceback(capture(exc))
        text = "".join(traceback.format_exception(exc))
    assert str(rt) == f'\n"""\n{text}"""' and rt.tb == str(rt)
    assert str(pickle.loads(pickle.dumps(rt))) == str(rt)
    assert str(reflectmgr.RemoteTraceback("as text")) == "as text"
