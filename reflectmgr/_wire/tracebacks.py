"""A traceback as it travels: captured where the exception was raised, formatted where it is read.

Formatting is most of what an exception costs to send: CPython's traceback formatting parses each
frame's source line to place its ``^^^`` markers (3.11+), tens of microseconds per frame, and
most remote exceptions are caught (``except KeyError``) and never printed. So the raising side
only captures, per exception of the chain, its frames (file, line numbers and columns, function,
source line) and its last line(s) (``format_exception_only``); the receiving side formats that
when the text is first asked for (``RemoteTraceback.__str__``, a printed traceback), with the
same markers, using only the public ``traceback`` API.

The frames every request passes through on its way to the object (the channel's dispatch, the
handlers, the dunder table) are left out: what is captured starts at the object's own code. An
exception raised by a built-in operation that a handler ran directly (a dict's missing key, a
``getattr`` that fails: ``hasattr`` on a proxy) has no frame left, and nothing to tell beyond its
type and message, which the caller's own traceback shows: ``capture`` gives None, and the reply
carries no traceback (half of what such an exception cost to send and raise).

    capture(exc) -> ((link, frames, exception_lines), ...)   oldest first; tuples, str and ints
                    or None: one exception, no frame of the object's code
    render(captured) -> the text traceback.format_exception would have given (without those frames)
"""

from __future__ import annotations

import itertools
import linecache
import os
import traceback
from typing import Any

Frame = tuple[str, int, str, str, Any, Any, Any]  # file, line, function, source, end line, col, end col
# the sentence printed after this exception ("" for the last), its frames, its last line(s)
Entry = tuple[str, tuple[Frame, ...], tuple[str, ...]]

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_HEADER = "Traceback (most recent call last):\n"

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The request's way to the object, in every process that serves requests (a manager, a client
# serving callbacks): its frames come first in a traceback caught by the channel.
_PLUMBING = frozenset(
    os.path.join(_PACKAGE, *parts)
    for parts in (
        ("_owner", "channel.py"),
        ("_owner", "dispatch.py"),
        ("_owner", "inline.py"),
        ("_owner", "waits.py"),
        ("_wire", "dunders.py"),
    )
)


def capture(exc: BaseException) -> tuple[Entry, ...] | str | None:
    """What :func:`render` needs, without formatting it; None for one exception with no frame of
    the object's code. An exception group's members are formatted at once (rare, and the tree
    does not fit the flat form)."""
    if exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__):
        if not isinstance(exc, BaseExceptionGroup):  # the common case: one exception, no chain
            frames = _frames(exc.__traceback__)
            return (("", frames, _last_lines(exc)),) if frames else None
    entries: list[Entry] = []
    seen: set[int] = set()
    link = ""  # how the newer exception reached this one: printed after this one
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BaseExceptionGroup):
            return "".join(traceback.format_exception(exc))
        seen.add(id(current))
        entries.append((link, _frames(current.__traceback__), _last_lines(current)))
        if current.__cause__ is not None:
            link, current = _CAUSE, current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            link, current = _CONTEXT, current.__context__
        else:
            current = None
    return tuple(reversed(entries))


def _frames(tb: Any) -> tuple[Frame, ...]:
    """What ``traceback.extract_tb`` gives, from the first frame past the request's plumbing,
    without its ``stat`` of every file on every call: the source comes from linecache as loaded
    (a file edited since is shown as it was first read)."""
    while tb is not None and tb.tb_frame.f_code.co_filename in _PLUMBING:
        tb = tb.tb_next
    out = []
    while tb is not None:
        code = tb.tb_frame.f_code
        frame = _seen.get((code, tb.tb_lasti))
        out.append(frame if frame is not None else _frame(code, tb.tb_lasti, tb.tb_lineno))
        tb = tb.tb_next
    return tuple(out)


# (code, instruction offset) -> the frame as captured. A raise point is met again and again (a
# missing key, a StopIteration): its position (found by walking the code's position table from
# the start) and its source line are looked up once.
_seen: dict[tuple[Any, int], Frame] = {}
_SEEN_KEPT = 4096


def _frame(code: Any, lasti: int, lineno: int | None) -> Frame:
    line, end_line, col, end_col = next(
        itertools.islice(code.co_positions(), lasti // 2, None) if lasti >= 0 else iter(()),
        (lineno, None, None, None),
    )
    # The source line as in the file (not stripped): the markers' columns count from its start.
    source = linecache.getline(code.co_filename, line) if line else ""
    frame = (code.co_filename, line or 0, code.co_name, source, end_line, col, end_col)
    if lasti >= 0:
        if len(_seen) >= _SEEN_KEPT:
            _seen.clear()
        _seen[(code, lasti)] = frame
    return frame


def _last_lines(exc: BaseException) -> tuple[str, ...]:
    """``traceback.format_exception_only``, without building a TracebackException in the common
    case (no notes, not a SyntaxError, whose lines show the offending code)."""
    if isinstance(exc, SyntaxError) or getattr(exc, "__notes__", None) is not None:
        return tuple(traceback.format_exception_only(type(exc), exc))
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ in ("__main__", "builtins") else f"{cls.__module__}.{cls.__qualname__}"
    try:
        text = str(exc)
    except Exception:
        text = "<exception str() failed>"
    return (f"{name}: {text}\n" if text else f"{name}\n",)


def render(captured: tuple[Entry, ...] | str | None) -> str:
    """The text ``traceback.format_exception`` gave where the exception was raised ("" for None)."""
    if captured is None:
        return ""
    if isinstance(captured, str):
        return captured
    out: list[str] = []
    for link, frames, lines in captured:  # oldest first; each link is the sentence after its entry
        if frames:
            out.append(_HEADER)
            summaries = [
                traceback.FrameSummary(
                    file, line, name, lookup_line=False, line=source, end_lineno=end_line, colno=col, end_colno=end_col
                )
                for file, line, name, source, end_line, col, end_col in frames
            ]
            out.extend(traceback.StackSummary.from_list(summaries).format())
        out.extend(lines)
        out.append(link)
    return "".join(out)
