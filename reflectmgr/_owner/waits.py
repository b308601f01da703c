"""A call that waited in the manager for a client that left meanwhile: what it took, given back.

A client interrupted while it waits (Ctrl-C in ``q.get()``, an exception from a signal handler)
closes that connection, and a killed one is gone; the connection's thread is still in the call,
and would complete it for nobody: take the next item put in the queue (lost), acquire the lock
(held for ever: nobody is left to release it), consume the ``notify()`` another waiter needed.
So a call on the manager's synchronisation objects that has to wait looks at its connection when
the wait is over, and if the peer is gone gives back what it took, then ends the call as the
connection ends:

    Queue.get          -> the item goes back to the front of the queue (and a waiter is woken)
    Lock / RLock / Semaphore / BoundedSemaphore / Condition: acquire, __enter__ -> released
    Condition.wait, wait_for   -> the notification passed on, the lock wait() took back let go

A call that does not wait pays two clock reads: only one that took longer than ``WAITED_NS`` is
looked after (a wait cut short sooner than that, and a reply already sent, may still be lost with
their client). Objects of the user's that wait in their own code get no such care.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from .._wire.dunders import DUNDERS
from .._wire.opcodes import Op
from .queues import Queue

_CALLMETHOD, _DUNDER = int(Op.CALLMETHOD), int(Op.DUNDER)
_DUNDER_NAMES = [d.name for d in DUNDERS]


def _release(obj: Any, result: Any) -> None:
    if result:
        obj.release()


def _put_back(obj: Any, item: Any) -> None:
    with obj.mutex:
        obj.queue.appendleft(item)
        obj.not_empty.notify()


def _pass_on(obj: Any, result: Any) -> None:
    """``wait()`` took the condition's lock back before returning, for a client that is not there
    to release it (it did not hold it while it waited): the notification goes on to the next
    waiter, and the lock is let go, as often as it was held (an RLock's count)."""
    if result:
        obj.notify()
    release_save = getattr(obj, "_release_save", None)  # threading.Condition's: all of the count
    if release_save is not None:
        release_save()
    else:
        obj.release()


Undo = Callable[[Any, Any], None]
_LOCKS: dict[str, Undo] = {"acquire": _release, "__enter__": _release}
UNDO: dict[type, dict[str, Undo]] = {
    type(threading.Lock()): _LOCKS,
    type(threading.RLock()): _LOCKS,
    threading.Semaphore: _LOCKS,
    threading.BoundedSemaphore: _LOCKS,
    threading.Condition: {**_LOCKS, "wait": _pass_on, "wait_for": _pass_on},
    queue.Queue: {"get": _put_back},
    Queue: {"get": _put_back},
}
WAITED_NS = 100_000  # a call on the connection's thread that took longer is taken to have waited


def watched(op: Any, obj: Any, args: tuple[Any, ...]) -> tuple[str, Undo] | None:
    """``(method name, undo)`` if this request is a call to look after (see the module), else None."""
    undo = UNDO.get(type(obj))
    if undo is None:
        return None
    if op == _CALLMETHOD:
        name = args[0]
    elif op == _DUNDER and type(args[0]) is int and 0 <= args[0] < len(_DUNDER_NAMES):
        name = _DUNDER_NAMES[args[0]]
    else:
        return None
    how = undo.get(name) if type(name) is str else None
    return None if how is None else (name, how)


def settle(ctx: Any, transport: Any, op: int, oid: int, args: tuple[Any, ...], result: Any) -> Any:
    """``result`` of a call that waited: if it is one to look after and its client left while it
    waited, give back what it took and raise ``EOFError`` (nobody is there for the reply)."""
    try:
        obj = ctx.table.resolve(oid)
    except Exception:  # released meanwhile: nothing to look after
        return result
    found = watched(op, obj, args)
    if found is None:
        return result
    try:
        transport.check_peer()
    except (EOFError, OSError):
        found[1](obj, result)
        raise
    return result
