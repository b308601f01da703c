"""Proxies leaving this process: pickled for a child, a queue, an executor task.

    pickle.dumps(proxy) --Proxy.__reduce_ex__--> Client.transfer
        for an executor task (inside pickle_task): borrowed  -> _borrowed(routes, oid, desc)
            no round trip; the submitter keeps the object alive until the task is done, and the
            worker counts the reference for itself with its next message ((oid, -1))
        anything else: pinned (PIN, one round trip)          -> _rebuild(routes, authkey, oid, token)
            the pin outlives this process until the receiver claims it or PIN_LEASE runs out
    pickle.loads(...) in the receiver: _route picks the object table (inside the manager itself)
        or this process's client for the manager, connecting once per process

Hidden state, kept to two places: the codec's thread-local encoding peer decides whether a proxy
goes home as its object or leaves as a transfer (Proxy.__reduce_ex__), and ``_borrowing`` marks
the pickling of an executor task, during which proxies are lent instead of pinned.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import threading
import types
from typing import TYPE_CHECKING, Any

from .._proxy.proxy import Proxy
from .._transport.inproc import is_inproc
from .._transport.sockets import Address
from .._wire import codec
from .._wire.opcodes import Op
from . import registry
from .spawning import found_in_children

_borrowing = threading.local()


class Transfers:
    """The transfer side of a :class:`~reflectmgr._manager.client.Client` (mixed into it)."""

    routes: tuple[Address, ...]
    authkey: bytes
    key_source: registry.KeySource | None
    claims: int
    address: Address
    cache: Any

    if TYPE_CHECKING:  # provided by the client; declared here for the type checker only

        def call(self, op: int, oid: int, *args: Any) -> Any: ...

        def load_ref(self, pid: Any) -> Any: ...

    def transfer(self, proxy: Proxy) -> tuple[Any, ...]:
        """How ``proxy`` pickles for another process (see the module's diagram)."""
        keep = getattr(_borrowing, "keep", None)
        if keep is not None:
            keep.append(proxy)  # the caller keeps it (so the object) alive until the task is done
            return (_borrowed, (self.routes, proxy._rm_oid, proxy._rm_desc))
        token = self.call(Op.PIN, 0, [proxy._rm_oid])
        # Like multiprocessing: the authkey travels inside the pickle only to a child being spawned
        # (through its private pipe); any other receiver uses the authkey it inherited, or the key
        # source of this client says where to find it (reflectmgr.ray).
        authkey = self.authkey if _spawning() else self.key_source
        return (_rebuild, (self.routes, authkey, proxy._rm_oid, token))

    def pickle_task(self, task: Any, keep: list[Any]) -> bytes:
        """Pickle ``task`` for an executor worker of this manager; its proxies are *borrowed*.

        A borrowed proxy costs no round trip: the worker counts the reference for itself with its
        next message, and ``keep`` (held by the caller until the task is done) keeps the objects
        alive meanwhile. Raises ReflectmgrPicklingError naming the argument that does not pickle.
        """
        _borrowing.keep = keep
        try:
            fn, args, kwargs = task
            named = _named_from_main(fn)
            if named is None or (named and codec.plain(args) and codec.plain(kwargs)):
                # Plain pickle is several times cheaper than a pickler's hook. Nothing of __main__
                # in it: the function is not, and its arguments are plain (or looked for below).
                try:
                    data = pickle.dumps(task, protocol=5)
                except Exception:
                    pass
                else:
                    if named or b"__main__" not in data:
                        return data
                keep.clear()  # pickled again below
            return dumps_for_workers(task)
        except Exception as exc:
            raise codec.diagnose_call(task[1], task[2], exc, task[0]) from exc
        finally:
            _borrowing.keep = None

    def borrow(self, oid: int, desc: Any) -> Any:
        """Unpickling a borrowed proxy in a worker: the proxy now, the reference with the next message."""
        proxy = self.load_ref((oid, desc))
        self.cache.acquire(oid)
        return proxy

    def same_owner(self, other: object) -> bool:
        """True if ``other`` (an encoding peer) reaches the same manager."""
        address = getattr(other, "address", None)
        return (
            isinstance(other, Transfers) and address is not None and registry.key(address) == registry.key(self.address)
        )


def _named_from_main(fn: Any) -> bool | None:
    """None if a task's function is not of ``__main__`` (nor a partial of one: ``map``'s chunks);
    else True if the workers find it by name, a partial's arguments too (or they are plain)."""
    if type(fn) is functools.partial:  # (loops, not generators: this runs for every chunk)
        parts = (fn.func, *fn.args)
        for part in parts:
            if getattr(part, "__module__", None) == "__main__":
                break
        else:
            return None
        if fn.keywords or vars(fn):
            return False
        for part in parts:
            if not _by_name(part) and not codec.plain(part):
                return False
        return True
    if getattr(fn, "__module__", None) != "__main__":
        return None
    return _by_name(fn)


def _by_name(obj: Any) -> bool:
    """A function or class that the workers find by name (pickle's own check aside)."""
    return (type(obj) is types.FunctionType or isinstance(obj, type)) and _found(obj) is not False


def _found(obj: Any) -> bool | None:
    """None if ``obj`` is not a function or class of ``__main__``; else whether the workers find it."""
    if (type(obj) is types.FunctionType or isinstance(obj, type)) and obj.__module__ == "__main__":
        return found_in_children(obj)
    return None


class _ByName(pickle.Pickler):
    """Plain pickle, refusing a function or class of ``__main__`` that the workers do not find by
    name (``found_in_children``): what a task names from ``__main__`` goes by name, as the
    standard executor sends it, so the worker runs its own, in its own module, with the globals
    its initializer set there."""

    def reducer_override(self, obj: Any) -> Any:
        if _found(obj) is False:
            raise pickle.PicklingError(f"{obj!r} is not found by name in the workers")
        return NotImplemented  # pickle's own


class _ByValue(codec.Pickler):
    """cloudpickle, with what the workers find by name still by name (``_ByName``); the rest of
    ``__main__`` (a lambda, a closure, what the ``if __name__ == "__main__":`` block defines,
    anything where the workers do not run the script) by value, in globals of its own."""

    def reducer_override(self, obj: Any) -> Any:
        if _found(obj):
            return NotImplemented  # pickle's own: by name
        return super().reducer_override(obj)


def dumps_for_workers(obj: Any) -> bytes:
    """Pickle ``obj`` (an executor's task, initializer) for workers that run the main script as
    spawn runs it: all by name where it can be (``_ByName``), else with cloudpickle (``_ByValue``)."""
    buf = io.BytesIO()
    try:
        _ByName(buf, protocol=5).dump(obj)
    except Exception:
        keep = getattr(_borrowing, "keep", None)
        if keep:
            keep.clear()  # lent again below
        buf = io.BytesIO()
        _ByValue(buf, protocol=5).dump(obj)
    return buf.getvalue()


def _spawning() -> bool:
    """True while pickling for a child being spawned (its authkey is not inherited otherwise)."""
    from multiprocessing.context import get_spawning_popen

    if get_spawning_popen() is not None:
        return True
    try:
        from multiprocess.context import get_spawning_popen as mp_spawning
    except ImportError:
        return False
    return mp_spawning() is not None


def _route(routes: tuple[Address, ...], authkey: bytes | registry.KeySource | None) -> Any:
    """The object table (inside the manager itself) or the client to use for ``routes``. A
    client comes back counted in ``claims`` (a proxy on its way in: an idle client is not closed
    under it, see Client.reap_if_idle); the caller gives it back with :func:`_claimed`."""
    for address in routes:
        table = registry.local_tables.get(registry.key(address))
        if table is not None:
            return table
    client = None
    for address in routes:
        client = registry.lookup(address)
        if client is not None:
            client.implicit = True  # a proxy of this process now relies on it: no close() may end it
            break
    if client is None and (authkey is None or isinstance(authkey, bytes)):
        from .client import get_client  # the client layer builds on this module, not the reverse

        usable = [a for a in routes if not is_inproc(a) or a.startswith(f"inproc:{os.getpid()}:")]  # type: ignore[union-attr]
        client = get_client(usable[0], authkey)
    elif client is None:
        client = authkey.client(routes)  # type: ignore[union-attr]  # a KeySource: not None, not bytes
    with registry.lock:
        client.claims += 1
    return client


def _claimed(client: Any) -> None:
    with registry.lock:
        client.claims -= 1


def _borrowed(routes: tuple[Address, ...], oid: int, desc: Any) -> Any:
    route = _route(routes, None)
    if isinstance(route, Transfers):
        try:
            return route.borrow(oid, desc)
        finally:
            _claimed(route)
    return route.resolve(oid)


def _rebuild(routes: tuple[Address, ...], authkey: bytes | registry.KeySource | None, oid: int, token: bytes) -> Any:
    """Unpickling a proxy in another process: connect (once per process) and claim the pin."""
    route = _route(routes, authkey)
    if isinstance(route, Transfers):
        try:
            return route.call(Op.CLAIM, oid, token)
        finally:
            _claimed(route)
    return route.claim(token, oid)
