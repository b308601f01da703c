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

dispatch.py sends these methods here (by name, and ``__enter__``); one that does not wait pays
two clock reads: only one that took longer than ``WAITED_NS`` is looked after (a wait cut short
sooner than that, and a reply already sent, may still be lost with their client). Objects of the
user's that wait in their own code get no such care.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .._wire.dunders import DUNDERS
from .queues import Queue


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
WAITED_NS = 100_000  # a call that took longer is taken to have waited
_clock = time.monotonic_ns
# The methods dispatch.py sends here (the rest run as they are): by name, and __enter__.
NAMES = frozenset(name for methods in UNDO.values() for name in methods if not name.startswith("__"))
ENTER = [d.name for d in DUNDERS].index("__enter__")
_ENTER_REMOTE = DUNDERS[ENTER].remote


def call(ctx: Any, oid: int, name: str, args: Any, kwargs: Any) -> Any:
    """``obj.name(*args, **kwargs)``, looked after if it waits (see the module)."""
    obj = ctx.table.resolve(oid)
    began = _clock()
    result = getattr(obj, name)(*args, **kwargs)
    if _clock() - began > WAITED_NS:
        _settle(obj, name, result)
    return result


def enter(ctx: Any, oid: int, args: Any) -> Any:
    """``obj.__enter__(*args)``, looked after if it waits."""
    obj = ctx.table.resolve(oid)
    began = _clock()
    result = _ENTER_REMOTE(obj, *args)
    if _clock() - began > WAITED_NS:
        _settle(obj, "__enter__", result)
    return result


def _settle(obj: Any, name: str, result: Any) -> None:
    """If ``obj.name`` is a call to look after and the client of the request being served left
    while it waited: give back what it took, and raise ``EOFError`` (nobody is there for the
    reply)."""
    undo = UNDO.get(type(obj), {}).get(name)
    if undo is None:
        return
    from .channel import serving  # the channel builds on the handlers, not the reverse

    channel = serving()
    if channel is None:
        return
    try:
        channel.transport.check_peer()
    except (EOFError, OSError):
        undo(obj, result)
        raise
