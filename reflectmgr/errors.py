"""Every public exception of reflectmgr.

Vocabulary (after trio): *Closed* means you closed it; *Broken* means the other side died or the
link broke. Every error pickles, so it can cross a process boundary itself.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.managers as _stdlib_managers
import pickle
from typing import Any


class ReflectmgrError(Exception):
    """Root of every error raised by reflectmgr itself (not by your objects)."""


class ManagerClosedError(ReflectmgrError):
    """The manager (or this client's connection to it) was shut down on purpose."""


class BrokenManagerError(ReflectmgrError):
    """The manager died or the link to it broke; the OS error, if any, is the ``__cause__``."""


class ManagerTimeoutError(ReflectmgrError, TimeoutError):
    """The manager did not answer within the timeout (``Manager(timeout=...)``, ``connect(timeout=...)``).

    The connection that waited is dropped (a late answer must not reach the next call); the call
    itself may still run in the manager.
    """


class AuthenticationError(ReflectmgrError, multiprocessing.AuthenticationError):
    """The HMAC challenge failed: the two sides do not share the same authkey."""


class RestrictedError(ReflectmgrError):
    """A restricted manager (``Manager(serializer="restricted")``) refused the request: a type or
    function it does not allow, a private name, a factory it does not offer. Nothing ran."""


class ProtocolError(ReflectmgrError):
    """A peer sent bytes that are not a valid reflectmgr frame or message."""


class ReflectmgrPicklingError(ReflectmgrError, pickle.PicklingError):
    """A message could not be pickled; the text names the offending type and where it sat.

    Raised by :func:`pickling_error`: when pickling failed with another type of exception (a
    ``TypeError`` for a lock, whatever a ``__reduce__`` raised), the instance is of that type too,
    and the original exception is its ``__cause__``."""


_pickling_types: dict[type, type] = {}


def _pickling_type(original: type | None) -> type[ReflectmgrPicklingError]:
    """ReflectmgrPicklingError combined with ``original`` (made once per type), or alone."""
    if original is None:
        return ReflectmgrPicklingError
    combined = _pickling_types.get(original)
    if combined is None:
        try:
            combined = type(
                "ReflectmgrPicklingError",
                (ReflectmgrPicklingError, original),
                {
                    "__module__": __name__,
                    "__qualname__": "ReflectmgrPicklingError",
                    "__init__": ReflectmgrPicklingError.__init__,  # one message, whatever the other type takes
                    "__str__": ReflectmgrPicklingError.__str__,
                    "__reduce__": lambda self: (_rebuild_pickling_error, (original, str(self))),
                },
            )
        except Exception:
            combined = ReflectmgrPicklingError
        _pickling_types[original] = combined
    return combined


def _rebuild_pickling_error(original: type | None, message: str) -> ReflectmgrPicklingError:
    return _pickling_type(original)(message)


def pickling_error(message: str, cause: BaseException | None) -> ReflectmgrPicklingError:
    """The error for a message that did not pickle because of ``cause``: a ReflectmgrPicklingError
    that is also of ``cause``'s type, so that ``except TypeError`` (or whatever pickling raised
    locally) still catches it. The caller raises it ``from cause``."""
    plain = not isinstance(cause, Exception) or isinstance(cause, pickle.PicklingError)
    return _pickling_type(None if plain else type(cause))(message)


class LockOwnerDied(ReflectmgrError):  # noqa: N818 - named as EOWNERDEAD reads, not as an error
    """A robust lock (``m.Lock(robust=True)``) was acquired after its previous owner died holding it.

    Raised by ``acquire()`` *with the lock held* (as ``EOWNERDEAD`` of POSIX robust mutexes): the
    state it protects may be half-updated; repair it, then release. ``with lock:`` releases the
    lock again before raising it (its body does not run)."""


class ReentrantCallError(ReflectmgrError):
    """A call made by code that a garbage collection ran while this thread was inside reflectmgr's
    own bookkeeping (a ``__del__`` run at that moment), which cannot be served there: sending an
    object by reference while the object table is being updated, or calling a manager while a
    forked child takes over the proxies it inherited. Nothing was sent; the update goes on. Make
    such calls from ordinary code (a ``__del__`` may hand the work to another thread)."""


class ReleasedError(ReflectmgrError):
    """The remote object behind a proxy no longer exists (it was released or its owner went away)."""


class RemoteError(ReflectmgrError, _stdlib_managers.RemoteError):
    """An exception raised on the other side of a connection.

    Two kinds of instances:

    - An exception of the referent that pickles arrives as an instance of a subclass of both its
      own type and this class (see :func:`as_remote`): ``except ValueError`` and ``except
      RemoteError`` both catch it, as do ``multiprocessing.managers.RemoteError`` handlers.
    - One that does not pickle arrives as a plain ``RemoteError``: its type name, message and
      traceback as text.
    """

    def __init__(self, type_name: str, message: str = "", traceback_text: str = "") -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class _ReflectedError(RemoteError):
    """The RemoteError half of the types :func:`as_remote` makes; it comes after the original
    type's own classes in the MRO, so it must be transparent to them: their ``super().__init__``
    and ``super().__str__`` reach Exception's, as without it. Its attributes are computed, and
    only when the instance has none of the name (the original type's own attributes win)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Exception.__init__(self, *args, **kwargs)

    def __str__(self) -> str:
        return Exception.__str__(self)

    def __getattr__(self, name: str) -> str:
        original: Any = type(self).__bases__[0]
        if name == "type_name":
            return (
                original.__name__
                if original.__module__ == "builtins"
                else f"{original.__module__}.{original.__qualname__}"
            )
        if name == "message":
            return str(original.__str__(self))
        if name == "traceback_text":
            return str(self.__cause__) if self.__cause__ is not None else ""
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


_reflected_types: dict[type, type | None] = {}


def _reduce_as(original: Any) -> Any:
    def __reduce__(self: BaseException) -> Any:  # noqa: N807
        rv = original.__reduce__(self)
        if isinstance(rv, tuple) and rv and rv[0] is type(self):
            rv = (original, *rv[1:])  # pickles, and so travels on, as the original type
        return rv

    return __reduce__


def _reflected_type(cls: type) -> type | None:
    """The subclass of ``cls`` and RemoteError that stands for ``cls`` (made once per type), or
    None where Python cannot combine them (a type that refuses subclasses or a layout clash)."""
    ns: dict[str, Any] = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__reduce__": _reduce_as(cls),
    }
    try:
        return type(cls.__name__, (cls, _ReflectedError), ns)
    except Exception:
        return None


def reflected_type(cls: type) -> type | None:
    """The type of what :func:`as_remote` gives for an instance of ``cls`` (made once per type), or
    None where that is the instance itself."""
    try:
        return _reflected_types[cls]
    except KeyError:
        pass
    made = None
    if issubclass(cls, Exception) and not issubclass(cls, (ReflectmgrError, _stdlib_managers.RemoteError)):
        made = _reflected_type(cls)
    _reflected_types[cls] = made
    return made


def as_remote(exc: BaseException) -> BaseException:
    """``exc`` (unpickled from the other side) as an instance of its reflected type: the same
    type name, message, attributes and pickle, and also a :class:`RemoteError`. Returned as is:
    reflectmgr's own errors, exceptions that are not ``Exception`` s, and types that cannot be
    combined or rebuilt."""
    cls = type(exc)
    reflected: Any = reflected_type(cls)
    if reflected is None:
        return exc
    new: BaseException
    try:
        rv: Any = exc.__reduce__()
        if isinstance(rv, tuple) and len(rv) >= 2 and rv[0] is cls:
            try:
                new = reflected(*rv[1])  # what unpickling did, with the reflected type
            except Exception:  # an __init__ that does not take its own args: built without it
                new = built_without_init(reflected, exc.args, exc.__dict__)
            else:
                if len(rv) > 2 and rv[2]:
                    new.__setstate__(rv[2])
        else:  # a custom reduce: the same args and attributes on a bare instance
            new = built_without_init(reflected, exc.args, exc.__dict__)
    except Exception:
        return exc
    return new


def built_without_init(cls: Any, args: tuple[Any, ...], state: dict[str, Any] | None) -> BaseException:
    """An instance of exception class ``cls`` with ``args`` and the attributes ``state``, made by
    ``__new__`` as an exception's ``args`` are, ``__init__`` not called (also what
    ``_wire/exceptions.without_init`` pickles: an exception whose ``__init__`` refuses its args)."""
    new: BaseException = cls.__new__(cls, *args)
    new.args = args
    if state:
        new.__dict__.update(state)
    return new


class RemoteTraceback(Exception):  # noqa: N818 - named like concurrent.futures' _RemoteTraceback
    """Carries the traceback of the side that raised; attached as ``__cause__`` (like concurrent.futures).

    ``tb`` is its text. A manager sends the traceback captured, not formatted (see
    ``_wire/tracebacks.py``): the text is made when first read, so an exception that is caught and
    never printed costs no formatting."""

    def __init__(self, tb: Any) -> None:
        super().__init__(tb)
        self._tb = tb

    @property
    def tb(self) -> str:
        if not isinstance(self._tb, str):
            from ._wire.tracebacks import render  # the wire layer builds on this module

            self._tb = f'\n"""\n{render(self._tb)}"""'
        return self._tb

    def __str__(self) -> str:
        return self.tb


__all__ = [
    "AuthenticationError",
    "BrokenManagerError",
    "LockOwnerDied",
    "ManagerClosedError",
    "ManagerTimeoutError",
    "ProtocolError",
    "ReflectmgrError",
    "ReflectmgrPicklingError",
    "ReleasedError",
    "RemoteError",
    "RemoteTraceback",
]
