"""Encoding of messages: pickle protocol 5, cloudpickle where plain pickle is not enough.

    encode(msg)  --plain atoms/proxies-->  pickle.dumps            (fast path, ~0.3 us)
                 --anything else------->  cloudpickle Pickler      (lambdas, __main__ classes)
                 --with persistent_id-->  references to owner objects (FLAG_REFS set)
                 --with oob=[]--------->  large buffers left out of the pickle (FLAG_OOB set)

Out-of-band buffers: ``bytes``, ``bytearray`` and ``memoryview`` of OOB_MIN bytes or more, in the
message's first levels, and any object that pickles a ``PickleBuffer`` (NumPy arrays) at any
depth, are not copied into the pickle: the transport sends them from the object's own memory
(and the shared-memory transport through a segment). The receiver rebuilds each with its type.
A ``memoryview`` of any size travels (as a view over a private copy of its bytes).

How references cross: a proxy pickled inside a message for its own owner reduces to
``resolve_local(oid)``, which the receiving side resolves against the object table it installed
with :func:`swap_decoding`. Objects the owner sends *by reference* become persistent ids, which the
receiver turns into proxies with its ``persistent_load``. Both contexts are thread-local, so one
thread's decoding never sees another's table.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import struct
import threading
import types
from collections import ChainMap
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import cloudpickle

from ..errors import ReentrantCallError, ReflectmgrPicklingError, ReleasedError, pickling_error
from .opcodes import FLAG_OOB, FLAG_REFS, FLAG_RELEASES

PROTOCOL = 5

# Types that pickle by value with plain pickle, identically on every side.
ATOMS: frozenset[type] = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        type(Ellipsis),
        type(NotImplemented),
        range,
        slice,
    }
)
# Atoms, and classes that know how to reduce themselves with plain pickle. Proxy classes are not
# listed (one is generated per remote type and connection: the set would only grow); they derive
# from PlainReduce instead.
_PLAIN: set[type] = set(ATOMS)


class PlainReduce:
    """Base of classes whose instances plain pickle reproduces on the other side (proxies)."""

    __slots__ = ()


# Beyond this many items a container is sent through cloudpickle without scanning it first.
_SCAN_LIMIT = 32


# Buffers from this size on travel out of band: below it one copy into the pickle is cheaper than
# the bookkeeping (and small frames stay one write).
OOB_MIN = 64 * 1024
# Atoms that never travel out of band.
SCALARS: frozenset[type] = ATOMS - {bytes}
_BUFFER_TYPES = (bytes, bytearray, memoryview)


# The common message (a tuple of atoms, and tuples, lists and dicts of them) pickled and
# unpickled without a Pickler object, in C (_plain.c): the same protocol-5 pickle, so either end
# of a connection may lack it. dumps_plain(msg, limit) returns None for anything else (or a pickle
# over ``limit`` bytes), loads_plain(payload) returns None for any pickle it does not read (then
# pickle.loads does, with its errors): callers fall back to pickle. Messages are tuples, never
# None. Without a C compiler at install, or with REFLECTMGR_NATIVE=0 (for measuring), both
# always return None.
def _no_plain(*_args: Any) -> None:
    return None


try:
    from . import _plain
except ImportError:  # built without a C compiler
    _plain = None  # type: ignore[assignment]
dumps_plain: Callable[[Any, int], bytes | None] = _no_plain
loads_plain: Callable[[Any], Any] = _no_plain
if _plain is not None and os.environ.get("REFLECTMGR_NATIVE", "1") != "0":
    dumps_plain, loads_plain = _plain.dumps, _plain.loads


class LocalTable(Protocol):
    def resolve(self, oid: int) -> Any: ...


_tls = threading.local()
# The thread-local context itself, for hot paths that set ``table`` without a function call.
codec_context = _tls


def register_plain(cls: type) -> None:
    """Declare that instances of ``cls`` pickle correctly with plain pickle (proxies do)."""
    _PLAIN.add(cls)


# The hot path sets and restores these directly (a context manager costs ~1 us per message):
#     prev = swap_encoding(peer); try: ... finally: swap_encoding(prev)
def swap_encoding(peer: object) -> object | None:
    """Mark ``peer`` as the receiver of what this thread pickles now; returns the previous one."""
    prev = getattr(_tls, "peer", None)
    _tls.peer = peer
    return prev


def swap_decoding(table: LocalTable | None) -> LocalTable | None:
    """Install the table that resolves references arriving in this thread; returns the previous."""
    prev = getattr(_tls, "table", None)
    _tls.table = table
    return prev


def encoding_peer() -> object | None:
    return getattr(_tls, "peer", None)


def note_export(oid: int) -> None:
    """Record that pickling this message counted ``oid`` for the peer (a ``byref`` object), so
    that the sender can undo it if the rest of the message fails to pickle."""
    exported = getattr(_tls, "exported", None)
    if exported is not None:
        exported.append(oid)


# The releases of a message, pickled apart in front of it: "u32 length, pickle of the releases,
# pickle of the message". The receiver applies them even when the message itself fails to load.
_RELEASES_LEN = struct.Struct("!I")


def with_releases(flags: int, payload: bytes, releases: tuple[tuple[int, int], ...]) -> tuple[int, bytes]:
    prefix = pickle.dumps(releases, PROTOCOL)
    return flags | FLAG_RELEASES, _RELEASES_LEN.pack(len(prefix)) + prefix + payload


def split_releases(
    payload: bytes | bytearray, loads: Callable[[Any], Any] = pickle.loads
) -> tuple[memoryview, tuple[tuple[int, int], ...]]:
    """``(the message's own payload, the releases)`` of a FLAG_RELEASES frame."""
    view = memoryview(payload)
    (n,) = _RELEASES_LEN.unpack_from(view)
    end = _RELEASES_LEN.size + n
    releases = loads(view[_RELEASES_LEN.size : end])
    if type(releases) is not tuple:
        raise pickle.UnpicklingError("malformed releases")
    return view[end:], releases


def decoding_table() -> Any:
    table = getattr(_tls, "table", None)
    if table is None:
        raise ReleasedError("a reference arrived outside of a connection")
    return table


def resolve_local(oid: int) -> Any:
    """Unpickling hook: the real object behind a proxy that came home to its owner."""
    table: LocalTable | None = getattr(_tls, "table", None)
    if table is None:
        raise ReleasedError(f"object {oid:#x} arrived outside of a connection that owns it")
    return table.resolve(oid)


def plain(obj: Any, depth: int = 0) -> bool:
    """True if plain pickle reproduces ``obj`` on the other side (no function or class by value)."""
    t = type(obj)
    if t in _PLAIN:
        return True
    if depth > 2:
        return issubclass(t, PlainReduce)
    if t is tuple or t is list:
        if len(obj) > _SCAN_LIMIT:
            return False
        for x in obj:
            if type(x) not in _PLAIN and not plain(x, depth + 1):
                return False
        return True
    if t is dict:
        if len(obj) > _SCAN_LIMIT:
            return False
        for k, v in obj.items():
            if type(k) not in _PLAIN and not plain(k, depth + 1):
                return False
            if type(v) not in _PLAIN and not plain(v, depth + 1):
                return False
        return True
    return issubclass(t, PlainReduce)


# The attribute that marks a proxy's method (``_proxy/proxy.py``): its value is the remote name.
REMOTE_METHOD = "_rm_remote_method"


def _method_by_parts(method: types.MethodType) -> Any:
    return (types.MethodType, (method.__func__, method.__self__))  # what cloudpickle does


_cloud_method_reduce = cloudpickle.Pickler.dispatch_table.get(types.MethodType, _method_by_parts)


def _reduce_method(method: types.MethodType) -> Any:
    """A bound method, as cloudpickle would pickle it; a proxy's as ``getattr(proxy, name)``
    (by value it would be a function calling through ``_rm_link``, which the proxy no longer has
    once it arrives home as the real object)."""
    name = getattr(method.__func__, REMOTE_METHOD, None)
    if name is not None:
        return (getattr, (method.__self__, name))
    return _cloud_method_reduce(method)


def _cached_property(func: Any, attrname: str | None, doc: str | None) -> functools.cached_property[Any]:
    prop: functools.cached_property[Any] = functools.cached_property(func)
    prop.attrname, prop.__doc__ = attrname, doc  # (set by __set_name__, which a class by value skips)
    return prop


def _reduce_cached_property(prop: functools.cached_property[Any]) -> Any:
    """A ``functools.cached_property`` of a class sent by value: on Python 3.11 it holds an
    ``RLock``, which does not pickle, so that the whole class did not."""
    return (_cached_property, (prop.func, prop.attrname, prop.__doc__))


# cloudpickle builds a class sent by value empty, then sets its attributes: set then, __slots__
# does nothing, so the class it made had no slots (its instances a __dict__; one sent back by
# value did not load into the real class). Passed to the class's creation, it makes them. Not
# an empty one (a namedtuple's: typing.NamedTuple refuses it there, and it makes no slot).
_make_skeleton_class = getattr(cloudpickle.cloudpickle, "_make_skeleton_class", None)


def _with_slots(cls: type, reduced: Any) -> Any:
    if type(reduced) is not tuple or reduced[0] is not _make_skeleton_class or not cls.__dict__.get("__slots__"):
        return reduced
    newargs = list(reduced[1])
    newargs[3] = {**newargs[3], "__slots__": cls.__dict__["__slots__"]}  # (type, name, bases, type_kwargs, ...)
    return (reduced[0], tuple(newargs), *reduced[2:])


class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with a proxy's bound methods by name, and a class by value whole (its
    ``__slots__``, its ``cached_property``s on Python 3.11)."""

    dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
        {types.MethodType: _reduce_method, functools.cached_property: _reduce_cached_property},
        cloudpickle.Pickler.dispatch_table,
    )

    def reducer_override(self, obj: Any) -> Any:
        reduced = super().reducer_override(obj)
        if isinstance(obj, type):
            return _with_slots(obj, reduced)
        return reduced


def _cloud_dumps(obj: Any, buffer_callback: Any) -> bytes:
    """cloudpickle.dumps, with a proxy's bound methods pickled by name."""
    buf = io.BytesIO()
    Pickler(buf, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return buf.getvalue()


class _RefPickler(Pickler):
    def __init__(self, file: io.BytesIO, pid: Callable[[Any], Any], buffer_callback: Any) -> None:
        super().__init__(file, protocol=PROTOCOL, buffer_callback=buffer_callback)
        self._pid = pid

    def persistent_id(self, obj: Any) -> Any:
        return self._pid(obj)


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, load: Callable[[Any], Any], buffers: Any) -> None:
        super().__init__(file, buffers=buffers)
        self._load = load

    def persistent_load(self, pid: Any) -> Any:
        return self._load(pid)


# -- out-of-band buffers ---------------------------------------------------------------------------
def _as_bytes(buf: Any) -> bytes:
    return buf if type(buf) is bytes else bytes(buf)


def _as_bytearray(buf: Any) -> bytearray:
    return buf if type(buf) is bytearray else bytearray(buf)


def _as_memoryview(buf: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    view = memoryview(buf)
    if view.format != fmt or view.shape != shape:
        view = view.cast("B").cast(fmt, shape)  # type: ignore[call-overload]
    return view


class _Buffer:
    """A buffer in a message, pickled as a ``PickleBuffer`` so that it can leave the pickle."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce_ex__(self, protocol: Any) -> Any:
        obj = self.obj
        if type(obj) is bytes:
            return _as_bytes, (pickle.PickleBuffer(obj),)
        if type(obj) is bytearray:
            return _as_bytearray, (pickle.PickleBuffer(obj),)
        if not obj.c_contiguous:
            obj = memoryview(obj.tobytes()).cast("B").cast(obj.format, obj.shape)
        return _as_memoryview, (pickle.PickleBuffer(obj), obj.format, obj.shape)


register_plain(_Buffer)


def has_buffers(obj: Any, depth: int = 0) -> bool:
    """True if ``obj`` holds, in its first levels, a buffer to send out of band (or a memoryview)."""
    t = type(obj)
    if t is bytes or t is bytearray:
        return len(obj) >= OOB_MIN
    if t is memoryview:
        return True
    if depth > 2:
        return False
    if t is tuple or t is list:
        return len(obj) <= _SCAN_LIMIT and any(has_buffers(x, depth + 1) for x in obj)
    if t is dict:
        return len(obj) <= _SCAN_LIMIT and any(has_buffers(x, depth + 1) for x in obj.values())
    return False


def _wrap_buffers(obj: Any, depth: int = 0) -> Any:
    t = type(obj)
    if t is bytes or t is bytearray:
        return _Buffer(obj) if len(obj) >= OOB_MIN else obj
    if t is memoryview:
        return _Buffer(obj)
    if depth > 2:
        return obj
    if (t is tuple or t is list) and len(obj) <= _SCAN_LIMIT:
        return t(_wrap_buffers(x, depth + 1) for x in obj)
    if t is dict and len(obj) <= _SCAN_LIMIT:
        return {k: _wrap_buffers(v, depth + 1) for k, v in obj.items()}
    return obj


def _collector(oob: list[Any]) -> Callable[[pickle.PickleBuffer], bool]:
    def buffer_callback(buf: pickle.PickleBuffer) -> bool:
        with buf.raw() as raw:
            if raw.nbytes < OOB_MIN:
                return True  # small: in the pickle
        oob.append(buf)
        return False

    return buffer_callback


# -- encoding --------------------------------------------------------------------------------------
def encode_request(
    msg: tuple[Any, ...], args: tuple[Any, ...], oob: list[Any] | None = None, exported: list[int] | None = None
) -> tuple[int, bytes]:
    """:func:`encode` for a request whose header items are plain: only its ``args`` are checked
    (one by one: this is every method call's path). ``exported`` collects the ids of ``byref``
    objects counted for the peer while pickling (see :func:`note_export`)."""
    for x in args:
        if type(x) not in _PLAIN and not plain(x):
            return _encode_noting_exports(msg, oob, exported)
    if oob is not None:
        for x in args:
            if has_buffers(x):
                return _encode_noting_exports(msg, oob, exported)
    try:
        return 0, pickle.dumps(msg, PROTOCOL)
    except Exception:
        return _encode_noting_exports(msg, oob, exported)


def _encode_noting_exports(
    msg: tuple[Any, ...], oob: list[Any] | None, exported: list[int] | None
) -> tuple[int, bytes]:
    # byref() objects are not plain: only this path can meet them.
    _tls.exported = exported
    try:
        return encode(msg, oob=oob)
    finally:
        _tls.exported = None


def encode(
    msg: tuple[Any, ...], persistent_id: Callable[[Any], Any] | None = None, oob: list[Any] | None = None
) -> tuple[int, bytes]:
    """Pickle ``msg``; returns ``(flags, payload)``.

    With ``oob`` (a list), large buffers are appended to it instead of being copied into the
    payload, and FLAG_OOB is set if there are any. Raises :class:`ReflectmgrPicklingError`
    naming what could not be pickled. Nothing is sent or reserved before this returns, so a
    failure leaves the connection as it was.
    """
    callback = None
    if oob is not None:
        callback = _collector(oob)
        if has_buffers(msg, -1):
            msg = _wrap_buffers(msg, -1)
    try:
        if persistent_id is not None:
            buf = io.BytesIO()
            _RefPickler(buf, persistent_id, callback).dump(msg)
            flags, payload = FLAG_REFS, buf.getvalue()
        elif plain(msg):
            flags, payload = 0, pickle.dumps(msg, PROTOCOL, buffer_callback=callback)
        else:
            flags, payload = 0, _cloud_dumps(msg, callback)
    except (ReflectmgrPicklingError, ReentrantCallError):  # the latter: a byref() refused (see table.py)
        raise
    except RecursionError:
        raise
    except Exception as exc:
        if oob:
            oob.clear()
        raise pickling_error(_diagnose(msg, exc), exc) from exc
    return (flags | FLAG_OOB if oob else flags), payload


def decode(
    flags: int,
    payload: bytes | bytearray | memoryview,
    persistent_load: Callable[[Any], Any] | None = None,
    buffers: Any = None,
) -> Any:
    if flags & FLAG_REFS:
        if persistent_load is None:
            raise pickle.UnpicklingError("references from a peer that may not send them")
        return _RefUnpickler(io.BytesIO(payload), persistent_load, buffers).load()
    return pickle.loads(payload, buffers=buffers)


def _diagnose(msg: Any, exc: BaseException, label: str = "message") -> str:
    """Find the innermost part that does not pickle and say what and where it is."""
    where, culprit = _find_unpicklable(msg, label)
    kind = type(culprit)
    return (
        f"{where} is a {kind.__module__}.{kind.__qualname__} object, which cannot be pickled ({exc}). "
        "Arguments travel by value; pass an object that pickles, a proxy, or wrap it in "
        "reflectmgr.byref(obj) to pass it by reference."
    )


def diagnose_call(
    args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException, fn: Any = None
) -> ReflectmgrPicklingError:
    """The error for a call that does not pickle, naming what does not: the function or class
    called, when it travels too (``fn``: ``m.new(cls)``'s class, an executor task's function),
    else the argument by position or name."""
    if fn is not None and _fails(fn):
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        return pickling_error(
            f"{name}, called in the other process, travels by value there and cannot be pickled ({exc}): "
            "define it in a module both sides import, so that it travels by name, or keep what does "
            "not pickle (a lock, a file) out of its class attributes and globals.",
            exc,
        )
    for i, arg in enumerate(args):
        if _fails(arg):
            return pickling_error(_diagnose(arg, exc, f"argument {i}"), exc)
    for key, arg in kwargs.items():
        if _fails(arg):
            return pickling_error(_diagnose(arg, exc, f"keyword argument {key!r}"), exc)
    return pickling_error(_diagnose((args, kwargs), exc, "arguments"), exc)


def _fails(obj: Any) -> bool:
    try:
        _cloud_dumps(obj, None)
    except Exception:
        return True
    return False


def _find_unpicklable(obj: Any, where: str) -> tuple[str, Any]:
    children: list[tuple[str, Any]] = []
    if type(obj) in (tuple, list):
        children = [(f"{where}[{i}]", x) for i, x in enumerate(obj)]
    elif type(obj) is dict:
        children = [(f"{where}[{k!r}]", v) for k, v in obj.items()]
    for child_where, child in children:
        if _fails(child):
            return _find_unpicklable(child, child_where)
    return where, obj
