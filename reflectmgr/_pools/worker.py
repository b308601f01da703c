"""What a pool worker runs (a process, or a subinterpreter): connect first, then run tasks.

Kept small and free of the manager machinery: a worker imports the client side only.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle

from .._manager import registry
from .._manager.client import Client, get_client
from .._wire.codec import plain
from .._wire.exceptions import without_init
from ..errors import ReflectmgrError

_client: Client | None = None


def init_worker(
    address: Any,
    authkey: bytes,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    ssl_context: Any = None,
) -> None:
    """Executor initializer: connect to the manager before the first task, then the user's one."""
    global _client
    if ssl_context is not None:
        with registry.lock:
            registry.tls[registry.key(address)] = ssl_context
    _client = get_client(address, authkey)
    _leave_with_the_owner()
    if initializer is not None:
        initializer(*initargs)


def _leave_with_the_owner() -> None:
    """Exit when the process that started this worker is gone. A pool's worker waits for its
    next task on a queue whose write end it holds itself, so it would never see its owner die (the
    standard executor's workers outlive a killed owner). multiprocessing gives every child a
    sentinel that becomes readable when its parent ends; a daemon thread waits on it."""
    import multiprocessing
    import threading

    sentinel = getattr(multiprocessing.parent_process(), "sentinel", None)
    if sentinel is None:  # not a child process (a subinterpreter of the owner)
        return

    def watch() -> None:
        import os
        from multiprocessing.connection import wait

        try:
            wait([sentinel])
        except OSError:  # closed by the task's own code: nothing left to watch
            return
        os._exit(_OWNER_GONE)

    threading.Thread(target=watch, name="reflectmgr-owner-watch", daemon=True).start()


_OWNER_GONE = 70  # the exit code of a worker whose owner died (EX_SOFTWARE)


def execute(blob: bytes) -> Any:
    """Run one task pickled by Client.pickle_task.

    Unpickling the task runs code of its arguments (``__reduce__``, ``__setstate__``): an
    exception there reaches the caller with its own type, except one that is not an
    ``Exception`` (``SystemExit``, ``KeyboardInterrupt``), which would pass through ``except
    Exception`` handlers and end the caller: it arrives as a ReflectmgrError.
    """
    try:
        fn, args, kwargs = pickle.loads(blob)
    except Exception:
        raise
    except BaseException as exc:
        raise ReflectmgrError(f"unpickling the task in the worker raised {exc!r}; the task did not run") from exc
    try:
        return fn(*args, **kwargs)
    finally:
        if _client is not None and _client.cache.has_acquires:
            # Borrowed proxies that the task never used in a call: register them before the
            # caller's future completes (and its proxies, which keep the objects alive, may go),
            # whether the task returned or raised.
            _client.flush()


def run_task(blob: bytes) -> Any:
    """Process workers: the result goes back through cloudpickle unless plain pickle suffices."""
    try:
        result = execute(blob)
    except BaseException as exc:
        _make_loadable(exc)
        raise
    if plain(result):
        return result  # the executor's own pickling does it (proxies reduce themselves)
    return _ByCloudpickle(result)


def _make_loadable(exc: BaseException) -> None:
    """Make sure the executor's pickle of ``exc`` loads in the caller. One whose ``__init__``
    refuses its own ``args`` (``super().__init__(msg)`` with other parameters) pickles, but
    loading it fails in the caller's result thread, which then breaks the whole pool ("terminated
    abruptly"); the standard executor does that. Its class is registered with the pickler of the
    executor's queues (this worker's only) to travel as ``without_init`` describes it."""
    cls = type(exc)
    if cls in _REGISTERED or without_init(exc) is None:
        return
    try:
        data = pickle.dumps(exc, protocol=5)
    except Exception:
        return  # does not pickle at all: the executor reports that itself
    try:
        pickle.loads(data)
        return
    except Exception:
        pass
    from multiprocessing.reduction import ForkingPickler

    ForkingPickler.register(cls, _reduce_without_init)
    _REGISTERED.add(cls)


_REGISTERED: set[type] = set()


def _reduce_without_init(exc: BaseException) -> Any:
    return without_init(exc).__reduce__()


def close() -> None:
    """Disconnect this worker (a subinterpreter must stop its threads before it is closed)."""
    global _client
    if _client is not None:
        _client.close()
        _client = None


class _ByCloudpickle:
    """Pickles its value with cloudpickle; unpickles as the value itself (no wrapper remains)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (cloudpickle.dumps(self.value, protocol=5),))
