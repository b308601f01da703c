"""Which requests the manager's dispatcher may run itself, and how it tries those that could block.

The dispatcher (dispatcher.py) serves every shared-memory client from one thread. It must never
block, never run code that could call back into a client (a callback waits for that client, and
the client may need the dispatcher to answer it), and never run code whose effect depends on which
thread runs it (an ``RLock`` remembers its owner thread). So a request runs there only when:

- it is an owner service that runs no user code (release, ping, root, stats, pins), or
- its target is a plain built-in container (dict, list, set, deque, array, a Namespace...) and
  every argument is a plain value (numbers, strings, bytes, None, or small flat tuples, lists,
  sets and dicts of those), and the client holds no ``byref`` objects in the manager, or
- its target is one of the stdlib's synchronisation objects whose every method is thread-neutral
  (``Lock``, ``Semaphore``, ``Event``, ``Queue``) and the call can be completed without waiting:
  ``acquire`` takes a free lock, ``get`` finds an item, ``wait`` finds the event set. When it
  cannot, :class:`WouldBlock` sends the request, unchanged, to the client's own thread, which runs
  the real (blocking) call.

Everything else (user objects, ``RLock``, ``Condition``, ``Barrier``, ``new()``) goes to the
connection's own thread, as it did before there was a dispatcher. So do requests carrying
releases when the client has ``byref`` objects in the manager: a release may run a ``__del__``
that calls back into it.
"""

from __future__ import annotations

import array
import collections
import queue
import threading
import types
from collections.abc import Callable
from typing import Any

from .._wire.dunders import DUNDERS
from .._wire.opcodes import Op
from .dispatch import HANDLERS, NO_CALL, Handler
from .queues import Queue


class WouldBlock(Exception):  # noqa: N818 - a signal to hand the call over, not an error
    """Raised by a trial handler: the call must wait, so it goes to the connection's thread."""


_SERVICES = frozenset(int(op) for op in (Op.ROOT, Op.STATS, Op.RELEASE, Op.PING, Op.PIN, Op.CLAIM, Op.ADOPT))
_OBJECT_OPS = frozenset(
    int(op)
    for op in (Op.GETATTR, Op.SETATTR, Op.DELATTR, Op.CALLMETHOD, Op.DUNDER, Op.ITER, Op.NEXT_BATCH, Op.VALUE, Op.DIR)
)
_CALLMETHOD, _DUNDER = int(Op.CALLMETHOD), int(Op.DUNDER)

_SCALARS = frozenset((int, float, bool, type(None), str, bytes, complex))
_FLAT = frozenset((tuple, list, set, frozenset))
_FLAT_MAX = 32


def _iterator_types() -> set[type]:
    samples: list[Any] = [[], {}, set(), b"", bytearray(), (), collections.deque(), array.array("b")]
    out: set[type] = set()
    for sample in samples:
        out.add(type(iter(sample)))
        if hasattr(sample, "__reversed__"):
            out.add(type(reversed(sample)))
    d: dict[Any, Any] = {}
    out.update({type(iter(d.keys())), type(iter(d.values())), type(iter(d.items()))})
    return out


# Types built by the layers above (the manager's Namespace) join with add_plain_target().
PLAIN_TARGETS: set[type] = set(
    {
        dict,
        list,
        set,
        bytearray,
        collections.deque,
        collections.OrderedDict,
        collections.Counter,
        array.array,
        types.SimpleNamespace,
    }
    | _iterator_types()
)


def add_plain_target(kind: type) -> None:
    """``kind`` runs no user code on attribute or item access (an attribute bag, a container)."""
    PLAIN_TARGETS.add(kind)


def plain(value: Any) -> bool:
    """A value whose use runs no user code: a scalar, or a small flat container of scalars."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind in _FLAT:
        return len(value) <= _FLAT_MAX and all(type(v) in _SCALARS for v in value)
    if kind is dict:
        return len(value) <= _FLAT_MAX and all(type(k) in _SCALARS and type(v) in _SCALARS for k, v in value.items())
    return False


# -- trials for the stdlib's thread-neutral synchronisation objects ----------------------------
def _blocking(args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, ...]) -> bool | None:
    """The ``blocking`` flag of ``acquire(blocking=True, timeout=-1)``-like arguments, or None if
    the arguments are not of that shape (the real call will say what is wrong)."""
    if len(args) > len(names) or any(k not in names or k in names[: len(args)] for k in kwargs):
        return None
    if args:
        return bool(args[0])
    return bool(kwargs.get(names[0], True))


def _acquire(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    blocking = _blocking(args, kwargs, ("blocking", "timeout"))
    if blocking is None or (not blocking and (len(args) > 1 or "timeout" in kwargs)):
        raise WouldBlock  # the real call says what is wrong (a timeout for a call that does not wait)
    if obj.acquire(False):
        return True
    if blocking:
        raise WouldBlock
    return False


def _enter(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if args or kwargs or not obj.acquire(False):
        raise WouldBlock
    return True


def _event_wait(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if len(args) > 1 or any(k != "timeout" for k in kwargs) or not obj.is_set():
        raise WouldBlock
    return True


def _odd_timeout(block: Any, timeout: Any) -> bool:
    """A timeout the real call may refuse (a negative one, with ``block``): let it say so."""
    return bool(block) and timeout is not None and not (type(timeout) in (int, float) and timeout >= 0)


def _queue_put(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not args or len(args) > 3 or any(k not in ("block", "timeout") for k in kwargs):
        raise WouldBlock
    block = args[1] if len(args) > 1 else kwargs.get("block", True)
    if _odd_timeout(block, args[2] if len(args) > 2 else kwargs.get("timeout")):
        raise WouldBlock
    try:
        obj.put(args[0], False)
    except queue.Full:
        if block:
            raise WouldBlock from None
        raise
    return None


def _queue_get(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if len(args) > 2 or any(k not in ("block", "timeout") for k in kwargs):
        raise WouldBlock
    block = args[0] if args else kwargs.get("block", True)
    if _odd_timeout(block, args[1] if len(args) > 1 else kwargs.get("timeout")):
        raise WouldBlock
    try:
        return obj.get(False)
    except queue.Empty:
        if block:
            raise WouldBlock from None
        raise


def _queue_join(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if args or kwargs or obj.unfinished_tasks:
        raise WouldBlock
    return None


def _run(obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return getattr(obj, name)(*args, **kwargs)


Trial = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]
_NEUTRAL: dict[type, dict[str, Trial | None]] = {
    # None: the method never blocks, run it as it is
    type(threading.Lock()): {
        "acquire": _acquire,
        "release": None,
        "locked": None,
        "__enter__": _enter,
        "__exit__": None,
    },
    threading.Semaphore: {"acquire": _acquire, "release": None, "__enter__": _enter, "__exit__": None},
    threading.BoundedSemaphore: {"acquire": _acquire, "release": None, "__enter__": _enter, "__exit__": None},
    threading.Event: {"set": None, "clear": None, "is_set": None, "wait": _event_wait},
    queue.Queue: {
        "put": _queue_put,
        "get": _queue_get,
        "put_nowait": None,
        "get_nowait": None,
        "qsize": None,
        "empty": None,
        "full": None,
        "task_done": None,
        "join": _queue_join,
    },
}
_NEUTRAL[Queue] = _NEUTRAL[queue.Queue]  # the manager's own (queues.py)
_DUNDER_NAMES = [d.name for d in DUNDERS]


def _trial_method(ctx: Any, oid: int, name: str, args: Any, kwargs: Any) -> Any:
    obj = ctx.table.resolve(oid)
    trial = _NEUTRAL[type(obj)][name]
    if trial is None:
        return _run(obj, name, args, kwargs)
    return trial(obj, args, kwargs)


def _trial_dunder(ctx: Any, oid: int, index: int, args: Any) -> Any:
    obj = ctx.table.resolve(oid)
    name = _DUNDER_NAMES[index]
    trial = _NEUTRAL[type(obj)][name]
    if trial is None:
        return HANDLERS[_DUNDER](ctx, oid, index, args)
    return trial(obj, args, {})


def _nothing(*_: Any) -> None:
    return None


def calls_back(peer: Any) -> bool:
    """True if the client's ``byref`` objects live in the manager: then user code (a comparison,
    a ``__del__`` run by a release) may call back into it."""
    importer = peer.importer
    return importer is not None and len(importer.cache) > 0


def inline_handler(peer: Any, releases: Any, op: Any, oid: Any, args: tuple[Any, ...]) -> Handler | None:
    """The handler the dispatcher may run for this request itself, or None (the connection's
    thread must run it). Releases run ``__del__`` methods, so they count too."""
    if releases and calls_back(peer):
        return None
    if op is NO_CALL:  # releases alone (the call failed to load and was answered)
        return _nothing
    if type(op) is not int:
        return None
    if op in _SERVICES:
        return HANDLERS[op]
    if op not in _OBJECT_OPS:
        return None
    try:
        target = peer.table.resolve(oid)
    except Exception:  # a released id: the handler raises the same error, at no risk
        return HANDLERS[op]
    kind = type(target)
    if kind in PLAIN_TARGETS:
        if calls_back(peer):
            return None  # a comparison with one of its objects stored here would call back
        return HANDLERS[op] if all(plain(a) for a in args) else None
    methods = _NEUTRAL.get(kind)
    if methods is None:
        return None
    # A peer's request may have any shape: only a well-formed one is tried here.
    if op == _CALLMETHOD and len(args) == 3 and type(args[0]) is str and args[0] in methods:
        return _trial_method if type(args[1]) is tuple and type(args[2]) is dict else None
    if op == _DUNDER and len(args) == 2 and type(args[0]) is int and 0 <= args[0] < len(_DUNDER_NAMES):
        if _DUNDER_NAMES[args[0]] in methods and type(args[1]) is tuple:
            return _trial_dunder
    return None
