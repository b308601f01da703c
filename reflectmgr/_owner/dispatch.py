"""Dispatch: one handler per opcode, run by whichever side owns the object.

A handler takes ``(ctx, oid, *args)``, its own parameters naming the operation's record (see
``_wire/opcodes.py``), and returns the result; the channel applies the
value-or-reference rule to it. ``ctx`` is the side's :class:`HandlerContext`: its object table, the account
(the peer's references) and, on a manager, the services (``server``); a client serving callbacks
has no services and refuses those opcodes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from itertools import islice
from typing import Any, Protocol

from .._wire.dunders import DUNDERS
from .._wire.opcodes import Op
from ..errors import ProtocolError
from . import waits
from .export import Ref, Value
from .table import Account, ObjectTable


class Services(Protocol):
    root: dict[str, Any]
    # typeid -> (callable, exposed, method_to_typeid): what BaseManager.register declared
    registry: dict[str, tuple[Any, Any, Any]]

    def stats(self) -> Any: ...

    def stop(self) -> None: ...

    def pid(self) -> int: ...


class HandlerContext(Protocol):
    @property
    def table(self) -> ObjectTable: ...

    @property
    def account(self) -> Account: ...

    @property
    def server(self) -> Services | None: ...


Handler = Callable[..., Any]  # (ctx: HandlerContext, oid: int, *args) -> result
# The op of a request whose call failed to load (the peer has the error as its answer): only its
# releases count. Not None, which a peer may send as an op (and is answered "unknown operation").
NO_CALL: Any = object()
HANDLERS: dict[int, Handler] = {}


def handler(op: Op) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[int(op)] = fn
        return fn

    return register


def _services(ctx: HandlerContext) -> Services:
    if ctx.server is None:
        raise ProtocolError("this peer serves objects only, not manager services")
    return ctx.server


@handler(Op.GETATTR)
def _getattr(ctx: HandlerContext, oid: int, name: str) -> Any:
    return getattr(ctx.table.resolve(oid), name)


@handler(Op.SETATTR)
def _setattr(ctx: HandlerContext, oid: int, name: str, value: Any) -> Any:
    setattr(ctx.table.resolve(oid), name, value)


@handler(Op.DELATTR)
def _delattr(ctx: HandlerContext, oid: int, name: str) -> Any:
    delattr(ctx.table.resolve(oid), name)


@handler(Op.CALL)
def _call(ctx: HandlerContext, oid: int, args: Any, kwargs: Any) -> Any:
    return ctx.table.resolve(oid)(*args, **kwargs)


@handler(Op.CALLMETHOD)
def _callmethod(ctx: HandlerContext, oid: int, name: str, args: Any, kwargs: Any) -> Any:
    if name in waits.NAMES:  # acquire, get, wait...: given back if the client leaves meanwhile
        return waits.call(ctx, oid, name, args, kwargs)
    return getattr(ctx.table.resolve(oid), name)(*args, **kwargs)


_REMOTE = [d.remote for d in DUNDERS]
_ENTER = waits.ENTER


@handler(Op.DUNDER)
def _dunder(ctx: HandlerContext, oid: int, index: int, args: Any) -> Any:
    if index == _ENTER:  # as acquire() (waits.py)
        return waits.enter(ctx, oid, args)
    return _REMOTE[index](ctx.table.resolve(oid), *args)


@handler(Op.ITER)
def _iter(ctx: HandlerContext, oid: int, reverse: bool) -> Any:
    """A private iterator over the object, made now and stepped by NEXT_BATCH from the first
    ``next()`` on: made now so that it sees what happens to the container in between (a dict
    changed before the first ``next()`` raises there, as a local iterator would).

    An object that is its own iterator (a generator, a file) is shared state: prefetching would
    consume items other clients should see, so the caller gets ``None`` and steps it one by one.
    """
    obj = ctx.table.resolve(oid)
    it = reversed(obj) if reverse else iter(obj)
    return None if it is obj else Ref(it)


@handler(Op.NEXT_BATCH)
def _next_batch(ctx: HandlerContext, oid: int, size: int) -> Any:
    items = list(islice(ctx.table.resolve(oid), size))
    return (len(items) < size, items)


@handler(Op.VALUE)
def _value(ctx: HandlerContext, oid: int) -> Any:
    return Value(ctx.table.resolve(oid))


@handler(Op.COPY)
def _copy(ctx: HandlerContext, oid: int) -> Any:
    return copy.copy(ctx.table.resolve(oid))  # by the value-or-reference rule, as d.copy() is


@handler(Op.DIR)
def _dir(ctx: HandlerContext, oid: int) -> Any:
    return sorted(dir(ctx.table.resolve(oid)))


@handler(Op.NEW)
def _new(ctx: HandlerContext, oid: int, factory: Any, args: Any, kwargs: Any) -> Any:
    _services(ctx)
    return Ref(factory(*args, **kwargs))


@handler(Op.CREATE)
def _create(ctx: HandlerContext, oid: int, typeid: str, args: Any, kwargs: Any) -> Any:
    """A registered typeid, built by the callable the *server* registered (remote managers)."""
    try:
        factory, exposed, _ = _services(ctx).registry[typeid]
    except KeyError:
        raise KeyError(f"typeid {typeid!r} is not registered with this manager") from None
    if factory is None:
        raise TypeError(f"typeid {typeid!r} was registered without a callable on the server side")
    obj = factory(*args, **kwargs)
    return (Ref(obj), tuple(exposed) if exposed is not None else public_methods(obj))


def public_methods(obj: Any) -> tuple[str, ...]:
    """multiprocessing's default exposure: callable attributes whose names do not start with _."""
    return tuple(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))


@handler(Op.CALLMETHOD_REF)
def _callmethod_ref(ctx: HandlerContext, oid: int, name: str, args: Any, kwargs: Any) -> Any:
    return Ref(getattr(ctx.table.resolve(oid), name)(*args, **kwargs))


@handler(Op.ROOT)
def _root(ctx: HandlerContext, oid: int) -> Any:
    return Ref(_services(ctx).root)


@handler(Op.STATS)
def _stats(ctx: HandlerContext, oid: int) -> Any:
    return _services(ctx).stats()


@handler(Op.DEBUG_INFO)
def _debug_info(ctx: HandlerContext, oid: int) -> Any:
    """What multiprocessing's ``Server.debug_info`` lists: every held object, by id, with its
    count of references held by clients and the start of its ``str`` (user code: runs here, on the
    connection's thread, outside the table's lock)."""
    table = ctx.table
    with table.lock:
        entries = sorted((oid, entry[0], entry[1]) for oid, entry in table.objects.items())
    return [(oid, count, str(obj)[:75]) for oid, obj, count in entries]


@handler(Op.RELEASE)
def _release(ctx: HandlerContext, oid: int) -> Any:
    return None  # the releases rode in the message header and are already applied


@handler(Op.PING)
def _ping(ctx: HandlerContext, oid: int) -> Any:
    return None


@handler(Op.PIN)
def _pin(ctx: HandlerContext, oid: int, oids: Any) -> Any:
    return ctx.table.pin(oids)


@handler(Op.CLAIM)
def _claim(ctx: HandlerContext, oid: int, token: bytes) -> Any:
    return Ref(ctx.table.claim(token, oid))


@handler(Op.ADOPT)
def _adopt(ctx: HandlerContext, oid: int, token: bytes | None, oids: Any) -> Any:
    """A forked child takes over the references it inherited (pinned by its parent at fork)."""
    return ctx.table.adopt(ctx.account, token, oids)


@handler(Op.SHUTDOWN)
def _shutdown(ctx: HandlerContext, oid: int, secret: bytes = b"") -> Any:
    """``secret``: the owner's, which a restricted manager checks (restricted.py); others ignore it."""
    _services(ctx).stop()
