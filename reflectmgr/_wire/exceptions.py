"""Built-in exceptions on the wire by name: ``("KeyError", args)``, not the pickled object.

Pickling an exception saves its class as a global and loading it finds the class again, which
imports the module on every call: about 4 us to dump and 3.5 us to load a ``KeyError`` here,
against 0.3 us for its name and arguments. Most exceptions a call raises are built-ins with plain
arguments and no attributes (a missing key, ``StopIteration``, a ``TypeError``): those travel as
the name and the arguments their ``__reduce__`` gives, which is what unpickling would call the
class with, and are built again the same way. Anything else (attributes, notes, a class of the
user's) is pickled as before.
"""

from __future__ import annotations

import builtins
from typing import Any

from ..errors import ProtocolError, built_without_init, reflected_type
from .codec import plain


def compact(exc: BaseException) -> tuple[str, tuple[Any, ...]] | None:
    """``(name, args)`` for a built-in exception that needs nothing else, or None."""
    cls = type(exc)
    if cls.__module__ != "builtins":
        return None
    reduced = exc.__reduce__()  # (cls, args), or (cls, args, attributes) when it has any
    if type(reduced) is not tuple or len(reduced) != 2 or reduced[0] is not cls or type(reduced[1]) is not tuple:
        return None
    if not plain(reduced[1]):
        return None
    return cls.__name__, reduced[1]


def rebuild(named: Any, remote: bool = False) -> BaseException:
    """The exception that :func:`compact` described; with ``remote``, as what
    :func:`~reflectmgr.errors.as_remote` makes of it, built at once (unpickling builds an
    instance of the class from the same arguments)."""
    if type(named) is tuple and len(named) == 2 and type(named[0]) is str and type(named[1]) is tuple:
        cls = getattr(builtins, named[0], None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            made: type[BaseException] = (reflected_type(cls) or cls) if remote else cls
            try:
                return made(*named[1])
            except Exception as exc:  # arguments that class does not take: not what compact() sent
                raise ProtocolError(f"malformed error reply: {named!r:.200}") from exc
    raise ProtocolError(f"malformed error reply: {named!r:.200}")


def without_init(exc: BaseException) -> Any:
    """A stand-in that pickles ``exc`` as its class, ``args`` and attributes, to be built again
    by :func:`~reflectmgr.errors.built_without_init`; None if its class has a reduce of its own
    (which then says how it travels, or that it does not)."""
    cls = type(exc)
    if cls.__reduce__ is not BaseException.__reduce__ or cls.__reduce_ex__ is not object.__reduce_ex__:
        return None
    return _WithoutInit(exc)


class _WithoutInit:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        return (built_without_init, (type(exc), exc.args, exc.__dict__ or None))
