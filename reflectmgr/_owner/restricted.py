"""Restricted mode: what a manager loads and runs for peers it does not trust with code.

    Manager(("0.0.0.0", 5000), serializer="restricted", allowed=[Order, make_report])

A normal manager unpickles anything an authenticated peer sends, and pickle runs code: holding
the authkey means running code in the manager. A restricted manager instead

- unpickles only the globals of an allow-list (find_class): plain data types (complex, slice,
  range, datetime, Decimal, Fraction, UUID, OrderedDict, deque), reflectmgr's own factories and
  wire helpers, builtin exception types, and what ``allowed`` names; a function or class sent by
  value (cloudpickle), ``os.system``, ``getattr``, anything else is refused before it is called;
- builds with ``new()`` only its factories (dict, list, Namespace, the synchronization
  primitives, Queue, Value, Array) and the types and callables of ``allowed``;
- refuses private and special attribute names (``_x``, ``__class__``, ``__globals__``) in
  attribute and method operations; the special methods of the protocol table (``__getitem__``,
  ``__len__``, ...) stay, as they are what a proxy forwards;
- accepts no references to clients' objects (``byref``), so it never calls back into a client,
  unless ``allow_callbacks=True``;
- stops (SHUTDOWN) only for the process that started it, which alone knows a secret made at start.

Refusals are :class:`~reflectmgr.errors.RestrictedError` answers: nothing ran, the connection
goes on. What this does not do: isolate peers from each other (every authenticated peer can reach
every shared object, through ``root`` or by id), bound CPU or memory per peer, or protect clients
from the manager (they unpickle its answers normally: the manager is trusted by its clients).
"""

from __future__ import annotations

import array
import builtins
import collections
import datetime
import decimal
import fractions
import hmac
import io
import pickle
import queue
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from .._wire import codec
from .._wire.dunders import INDEX
from .._wire.memo_guard import check as check_memo
from .._wire.memo_guard import needed as memo_needed
from .._wire.opcodes import Msg, Op
from ..errors import RestrictedError
from .queues import Queue

# Plain data: constructing these runs no code of the sender's choosing.
SAFE_VALUES: tuple[Any, ...] = (
    complex,
    slice,
    range,
    set,
    frozenset,
    bytearray,
    datetime.date,
    datetime.datetime,
    datetime.time,
    datetime.timedelta,
    datetime.timezone,
    decimal.Decimal,
    fractions.Fraction,
    uuid.UUID,
    uuid.SafeUUID,
    collections.OrderedDict,
    collections.deque,
    array._array_reconstructor,  # type: ignore[attr-defined]
    # how values and references travel (codec.py): out-of-band buffers, a proxy coming home
    codec._as_bytes,
    codec._as_bytearray,
    codec._as_memoryview,
    codec.resolve_local,
    Msg,
    Op,
)
EXCEPTIONS: tuple[type[BaseException], ...] = tuple(
    v for v in vars(builtins).values() if isinstance(v, type) and issubclass(v, BaseException)
)


def default_factories() -> tuple[Any, ...]:
    """What ``Manager``'s own factories build (their ``new()`` targets)."""
    import multiprocessing.managers

    from .._manager.namespace import Namespace, identity
    from .robust import RobustLock

    return (
        dict,
        list,
        Namespace,
        identity,
        threading.Lock,
        threading.RLock,
        RobustLock,
        threading.Semaphore,
        threading.BoundedSemaphore,
        threading.Condition,
        threading.Event,
        threading.Barrier,
        queue.Queue,
        Queue,
        multiprocessing.managers.Value,  # type: ignore[attr-defined]
        array.array,
    )


def _name(obj: Any) -> tuple[str, str]:
    return getattr(obj, "__module__", None) or "builtins", obj.__qualname__


class Restriction:
    """The allow-lists of one restricted manager, and the checks that apply them."""

    def __init__(self, allowed: Iterable[Any] = (), allow_callbacks: bool = False, owner_secret: bytes = b"") -> None:
        allowed = tuple(allowed)
        for obj in allowed:
            if not callable(obj) or not hasattr(obj, "__qualname__"):
                raise TypeError(f"allowed takes types and functions, not {obj!r}")
        self.factories = {id(f): f for f in (*default_factories(), *allowed)}
        names = (*SAFE_VALUES, *self.factories.values())
        if allow_callbacks:
            from .._proxy.byref import _load_exported

            names += (_load_exported, *EXCEPTIONS)  # a client's object by reference; a callback's exception
        self.globals: dict[tuple[str, str], Any] = {_name(obj): obj for obj in names}
        self.allow_callbacks = allow_callbacks
        self.owner_secret = owner_secret

    def find_class(self, module: str, name: str) -> Any:
        obj = self.globals.get((module, name))
        if obj is None and (module, name) == _BYREF:
            raise RestrictedError(
                "this restricted manager accepts no references to clients' objects (byref, callbacks): "
                "its owner allows them with Manager(allow_callbacks=True)"
            )
        if obj is None:
            raise RestrictedError(
                f"{module}.{name} is not allowed by this restricted manager: nothing was run "
                "(the manager's owner allows types and functions with Manager(allowed=[...]))"
            )
        return obj

    def loads(self, payload: Any, persistent_load: Callable[[Any], Any] | None = None, buffers: Any = None) -> Any:
        if memo_needed():
            check_memo(payload)
        return _Unpickler(io.BytesIO(payload), self, persistent_load, buffers).load()

    def check(self, op: int, args: tuple[Any, ...]) -> None:
        """Raise RestrictedError if the request may not run here."""
        if op in _NAMED:
            name = args[0] if args else None
            if type(name) is not str:
                raise RestrictedError(f"operation {Op(op).name} needs an attribute name")
            if name.startswith("_") and name not in INDEX:
                raise RestrictedError(f"private and special names ({name!r}) are not reachable in a restricted manager")
        elif op == _NEW:
            factory = args[0] if args else None
            if self.factories.get(id(factory)) is not factory:
                raise RestrictedError(
                    f"new() of {factory!r} is not allowed by this restricted manager "
                    "(its owner allows factories with Manager(allowed=[...]))"
                )
        elif op == _SHUTDOWN:
            secret = args[0] if args else b""
            if type(secret) is not bytes or not hmac.compare_digest(secret, self.owner_secret):
                raise RestrictedError("only the process that started this restricted manager may stop it")


_NAMED = frozenset(int(op) for op in (Op.GETATTR, Op.SETATTR, Op.DELATTR, Op.CALLMETHOD, Op.CALLMETHOD_REF))
_NEW, _SHUTDOWN = int(Op.NEW), int(Op.SHUTDOWN)
_BYREF = ("reflectmgr._proxy.byref", "_load_exported")


class _Unpickler(pickle.Unpickler):
    def __init__(
        self, file: io.BytesIO, restriction: Restriction, load: Callable[[Any], Any] | None, buffers: Any
    ) -> None:
        super().__init__(file, buffers=buffers)
        self._restriction = restriction
        self._load = load

    def find_class(self, module: str, name: str) -> Any:
        return self._restriction.find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._load is None:
            raise pickle.UnpicklingError("references from a peer that may not send them")
        return self._load(pid)
