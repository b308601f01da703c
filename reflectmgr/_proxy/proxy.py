"""The Proxy type, generated per remote type from the dunder table.

    TypeDesc (from the owner) --> proxy_class(desc) --> class <name>(Proxy):
                                                          one method per supported dunder
                                                          one function per plain method
                                                          __hash__ = None if the type is unhashable

So ``callable(p)``, ``len(p)``, ``hash(p)`` and ``iter(p)`` succeed or fail exactly where they
would on the real object. Every operation becomes ``link.call(op, oid, *args)``; the link (a client
connection pool, or the manager calling back into a client) is anything with that method.
Attributes of a proxy itself all start with ``_rm_``; every other name is the remote object's.
"""

from __future__ import annotations

import collections.abc
import sys
import time
from collections.abc import Iterator
from typing import Any, Protocol

from .._wire.codec import REMOTE_METHOD, PlainReduce, encoding_peer, resolve_local
from .._wire.dunders import DUNDERS, INDEX
from .._wire.opcodes import Op
from ..errors import ReflectmgrPicklingError, RemoteError

# Opcodes as plain ints: an IntEnum attribute lookup on every call costs more than the rest.
_GETATTR, _SETATTR, _DELATTR = int(Op.GETATTR), int(Op.SETATTR), int(Op.DELATTR)
_CALL, _CALLMETHOD, _DUNDER = int(Op.CALL), int(Op.CALLMETHOD), int(Op.DUNDER)
_ITER, _NEXT_BATCH, _DIR, _VALUE = int(Op.ITER), int(Op.NEXT_BATCH), int(Op.DIR), int(Op.VALUE)
_COPY = int(Op.COPY)

# First iteration batch, fetched at the first ``next()``: small, so ``next(iter(p))`` stays cheap;
# then doubling up to the cap, so 100 000 items take about 20 round trips while a batch never
# holds more than MAX_BATCH items.
FIRST_BATCH = 64
MAX_BATCH = 8192

TypeDesc = tuple[int, str, str, str, frozenset[int], frozenset[str]]


# Attributes a proxy never fetches: __dataclass_fields__ comes from the local class only
# (proxy_class; the remote fields' sentinel is not dataclasses' own here, so fields(p) answered
# []); numpy's __array_interface__ and __array_struct__ hold an address in the manager's memory,
# which numpy would read in this process (a crash, or another object's bytes): np.asarray(p)
# goes through the proxy's __array__, a copy made in the manager. The CUDA interface likewise.
_NOT_FORWARDED = frozenset(
    {"__dataclass_fields__", "__array_interface__", "__array_struct__", "__cuda_array_interface__"}
)


class Remote(Protocol):
    """The part of a Link that a proxy calls through (``proxy._rm_link``)."""

    def call(self, op: int, oid: int, *args: Any) -> Any: ...

    def transfer(self, proxy: Proxy) -> tuple[Any, ...]: ...

    def same_owner(self, other: object) -> bool: ...


class Proxy(PlainReduce):  # proxies reduce themselves with plain pickle (see codec.plain)
    """Base of every proxy class; ``isinstance(x, Proxy)`` is how to tell a proxy (see is_proxy)."""

    __slots__ = ("__weakref__", "_rm_link", "_rm_oid")
    _rm_oid: int
    _rm_link: Remote
    _rm_desc: TypeDesc
    _rm_local_class: type | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """``type(p)(...)`` builds a local object of the remote type, as ``p.__class__(...)`` does:
        the idiom for "another of the same kind" (``dataclasses.asdict``, ``copy`` helpers, a
        ``type(self)(...)`` in user code). Proxies themselves are made by :func:`new_proxy`."""
        local = cls._rm_local_class
        if local is None:
            raise TypeError(
                f"cannot build a local {cls.__qualname__} from its proxy's type: the class is not "
                f"importable in this process (its module {cls._rm_desc[1]!r} is not imported here)"
            )
        return local(*args, **kwargs)

    # Any: a proxy stands for an object of any type; its attributes are whatever the remote has.
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_rm_") or name in _NOT_FORWARDED:
            raise AttributeError(name)
        return self._rm_link.call(_GETATTR, self._rm_oid, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._rm_link.call(_SETATTR, self._rm_oid, name, value)

    def __delattr__(self, name: str) -> None:
        self._rm_link.call(_DELATTR, self._rm_oid, name)

    def __dir__(self) -> list[str]:
        return list(self._rm_link.call(_DIR, self._rm_oid))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        peer = encoding_peer()
        home = self._rm_link
        if peer is home or (peer is not None and home.same_owner(peer)):
            return (resolve_local, (self._rm_oid,))  # going home: arrives as the real object
        return self._rm_link.transfer(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self._rm_link.call(_VALUE, self._rm_oid)

    def __copy__(self) -> Any:
        """``copy.copy(p)``: the object's shallow copy, made in the manager; being fresh, it
        comes back by value, with the shared objects in it as proxies (as ``d.copy()`` does).
        It was ``p`` itself: a "copy" that changed with the original."""
        return self._rm_link.call(_COPY, self._rm_oid)

    # -- multiprocessing.managers.BaseProxy's API, for code written against it ----------------
    def _callmethod(self, methodname: str, args: tuple[Any, ...] = (), kwds: dict[str, Any] | None = None) -> Any:
        """Call a method of the referent, as ``BaseProxy._callmethod`` does.

        A private name (``_x``, not a dunder) raises :class:`~reflectmgr.RemoteError`, like a
        method the stdlib's proxy does not expose.
        """
        if methodname.startswith("_") and not (methodname.startswith("__") and methodname.endswith("__")):
            raise RemoteError("AttributeError", f"method {methodname!r} of {type(self).__qualname__!r} is not exposed")
        return self._rm_link.call(_CALLMETHOD, self._rm_oid, methodname, tuple(args), dict(kwds or {}))

    def _getvalue(self) -> Any:
        """A local copy of the referent (multiprocessing's name for reflectmgr.value)."""
        return self._rm_link.call(_VALUE, self._rm_oid)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        cls = type(self)
        return cls._rm_local_class or cls


def remote_method(name: str, qualname: str) -> Any:
    """A method of the remote type, for its proxy class: ``p.name(...)`` is one CALLMETHOD round
    trip. A plain function, so Python binds and calls it as any method, with no descriptor or
    bound object of ours in between (that took half the client's own Python time on a small
    call). A bound one pickles as ``getattr(proxy, name)``, as multiprocessing's did: by the
    method object's own reduce, or by the codec's (``_wire/codec.py``, for cloudpickle), which
    knows it by its ``REMOTE_METHOD`` attribute."""

    def method(self: Proxy, *args: Any, **kwargs: Any) -> Any:
        return self._rm_link.call(_CALLMETHOD, self._rm_oid, name, args, kwargs)

    method.__name__ = name
    method.__qualname__ = f"{qualname}.{name}"
    method.__module__ = "reflectmgr.proxy"
    setattr(method, REMOTE_METHOD, name)
    return method


def _batches(it: Proxy) -> Iterator[Any]:
    """Local iterator over a private remote iterator, fetched in growing batches.

    The remote iterator exists from ``iter()``; the first batch comes at the first ``next()``.
    So what happens to the container between ``iter()`` and the first ``next()`` is seen, as with
    a local iterator; changes made while a batch is being consumed are seen at the next batch
    (a dict changed meanwhile raises ``RuntimeError`` there). A generator: the items of a batch
    are handed out by ``yield from`` over its list, with no Python call of ours per item."""
    call, oid = it._rm_link.call, it._rm_oid
    size = FIRST_BATCH
    while True:
        done, items = call(_NEXT_BATCH, oid, size)
        if done:
            del it  # drop the remote iterator now, not when this one dies
            yield from items
            return
        yield from items
        size = min(size * 2, MAX_BATCH)


def _iterate(self: Proxy, reverse: bool) -> Iterator[Any]:
    it = self._rm_link.call(_ITER, self._rm_oid, reverse)
    if it is None:
        return self  # the remote object is its own iterator
    return _batches(it)


def _iter(self: Proxy) -> Iterator[Any]:
    return _iterate(self, False)


def _reversed(self: Proxy) -> Iterator[Any]:
    return _iterate(self, True)


def _call(self: Proxy, *args: Any, **kwargs: Any) -> Any:
    return self._rm_link.call(_CALL, self._rm_oid, args, kwargs)


def _array(self: Proxy, dtype: Any = None, copy: bool | None = None) -> Any:
    """numpy's conversion (``np.asarray(p)``, a ufunc on ``p``): a local array, copied from the
    manager's object there (see dunders._array_copy)."""
    if copy is False:
        raise ValueError("a proxy's array is a local copy of the manager's object: copy=False cannot hold")
    result = self._rm_link.call(_DUNDER, self._rm_oid, _ARRAY, ())
    return result if dtype is None else result.astype(dtype, copy=False)


def _buffer(self: Proxy, flags: int) -> memoryview:
    """The buffer protocol (Python 3.12+: ``memoryview(p)``, ``f.write(p)``, ``hashlib``): a
    read-only view of a copy of the manager's buffer, its format and shape kept. A request to
    write through it (``f.readinto(p)``) raises ``BufferError``: the writes would be lost."""
    view = self._rm_link.call(_DUNDER, self._rm_oid, _BUFFER, ())
    return memoryview(view).toreadonly()


def _make_dunder(index: int) -> Any:
    def dunder(self: Proxy, *args: Any) -> Any:
        return self._rm_link.call(_DUNDER, self._rm_oid, index, args)

    dunder.__name__ = dunder.__qualname__ = DUNDERS[index].name
    return dunder


def _make_exit(index: int) -> Any:
    def __exit__(self: Proxy, exc_type: Any, exc: Any, tb: Any) -> Any:  # noqa: N807
        # Tracebacks do not pickle; an exception that does not pickle travels as its type only.
        try:
            return self._rm_link.call(_DUNDER, self._rm_oid, index, (exc_type, exc, None))
        except ReflectmgrPicklingError:
            return self._rm_link.call(_DUNDER, self._rm_oid, index, (exc_type, None, None))

    return __exit__


_ARRAY, _BUFFER = INDEX["__array__"], INDEX["__buffer__"]
_SPECIAL = {"__iter__": _iter, "__reversed__": _reversed, "__call__": _call, "__array__": _array, "__buffer__": _buffer}
_DUNDER_METHODS = [
    _SPECIAL.get(d.name) or (_make_exit(i) if d.name == "__exit__" else _make_dunder(i)) for i, d in enumerate(DUNDERS)
]
_TPFLAGS_SEQUENCE, _TPFLAGS_MAPPING = 1 << 5, 1 << 6  # Py_TPFLAGS_SEQUENCE, Py_TPFLAGS_MAPPING
_HASH = next(i for i, d in enumerate(DUNDERS) if d.name == "__hash__")


def proxy_class(desc: TypeDesc) -> type[Proxy]:
    """Generate the proxy class for a remote type description."""
    _tid, module, qualname, name, supported, methods = desc
    ns: dict[str, Any] = {"__slots__": (), "_rm_desc": desc, "__module__": "reflectmgr.proxy"}
    for m in methods:
        if not m.startswith("_rm_"):
            ns[m] = remote_method(m, qualname)
    for i in supported:
        # An array converts through __array__, a writable copy: given a __buffer__ too, numpy
        # would take the buffer first, and make the copy read-only.
        if i != _BUFFER or _ARRAY not in supported:
            ns[DUNDERS[i].name] = _DUNDER_METHODS[i]
    if _HASH not in supported:
        ns["__hash__"] = None
    ns.update(LOCAL_METHODS.get((module, qualname), {}))
    local = ns["_rm_local_class"] = _local_class(module, qualname)
    if local is not None and hasattr(local, "__dataclass_fields__"):
        # dataclasses looks at type(p): fields(), asdict(), astuple() and replace() then work on
        # a proxy, reading each field remotely (replace() builds a local object, as p.__class__).
        ns["__dataclass_fields__"] = local.__dataclass_fields__
        ns["__dataclass_params__"] = getattr(local, "__dataclass_params__", None)
    # "list proxy": in the errors of code that wants the real type ("heappush() argument 1 must
    # be list, not list proxy", "Object of type dict proxy is not JSON serializable").
    cls: type[Proxy] = type(f"{name} proxy", (Proxy,), ns)
    cls.__qualname__ = qualname
    if local is not None:
        # A match statement's sequence and mapping patterns look at the type's flags, not at
        # isinstance: registering with the ABC sets them (case [x, *rest] on a list proxy).
        if local.__flags__ & _TPFLAGS_SEQUENCE:
            collections.abc.Sequence.register(cls)
        elif local.__flags__ & _TPFLAGS_MAPPING:
            collections.abc.Mapping.register(cls)
    return cls


def _condition_wait_for(self: Any, predicate: Any, timeout: float | None = None) -> Any:
    """Condition.wait_for runs here, like multiprocessing's ConditionProxy: the predicate reads
    this process's state, and each wait is one remote call."""
    result = predicate()
    if result:
        return result
    endtime = time.monotonic() + timeout if timeout is not None else None
    while not result:
        if endtime is not None:
            waittime = endtime - time.monotonic()
            if waittime <= 0:
                break
        else:
            waittime = None
        self.wait(waittime)
        result = predicate()
    return result


# Methods a proxy runs locally instead of remotely, by remote (module, qualname).
LOCAL_METHODS: dict[tuple[str, str], dict[str, Any]] = {
    ("threading", "Condition"): {"wait_for": _condition_wait_for},
}


def _local_class(module: str, qualname: str) -> type | None:
    """The same class on this side, if its module is already imported (never imports anything)."""
    obj: Any = sys.modules.get(module)
    if obj is None and module == "__mp_main__":
        obj = sys.modules.get("__main__")
    for part in qualname.split("."):
        if obj is None or part == "<locals>":
            return None
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


_set = object.__setattr__


def new_proxy(cls: type[Proxy], oid: int, peer: Remote) -> Proxy:
    p = object.__new__(cls)
    _set(p, "_rm_oid", oid)
    _set(p, "_rm_link", peer)
    return p


def is_proxy(obj: object) -> bool:
    """True if ``obj`` is a reflectmgr proxy (``isinstance`` may say it is the remote type too)."""
    return issubclass(type(obj), Proxy)
