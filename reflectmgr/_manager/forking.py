"""Fork: a child keeps every proxy it inherits, and inherits no lock held by another thread.

    parent, before fork:  for each client with live proxies: PIN their ids (one round trip)
                          hold the registry lock and every client's cache and table locks
    parent, after:        release them; forget the pin (the child claims it, or it lapses)
    child, after:         release them; bump the generation; drop the parent's sockets (without
                          shutting them: the parent still uses them); open a session of its own
                          and ADOPT the inherited ids with the parent's pin, before any of its
                          own code runs (a client it cannot reach retries at its first call)

The shared-memory transport holds its fence lock across fork the same way (_transport/shm.py).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from .._wire.opcodes import Op
from ..errors import ReentrantCallError, ReflectmgrError
from . import registry


class ForkHandling:
    """The fork side of a :class:`~reflectmgr._manager.client.Client` (mixed into it)."""

    closed: bool
    cache: Any
    table: Any
    account: Any
    _generation: int
    _fork_pin: tuple[bytes, list[int]] | None
    _fork_lock: threading.RLock
    _transports: list[Any]
    _pool: Any
    _local: Any
    _token: bytes
    _anchor: Any

    if TYPE_CHECKING:  # provided by the client; declared here for the type checker only

        def call(self, op: int, oid: int, *args: Any) -> Any: ...

        def _open(self) -> Any: ...

        def _start_flusher(self) -> None: ...

        def _stop_flusher(self) -> None: ...

    def pin_for_fork(self) -> None:
        """In the parent, just before ``fork``: pin what the child inherits, so that the parent's
        own releases cannot free it before the child has adopted it (or the pin's lease ran out)."""
        self._fork_pin = None
        if self.closed or self._generation != registry.generation[0]:
            return
        live = list(self.cache.live())
        if not live:
            return
        try:
            self._fork_pin = (self.call(Op.PIN, 0, live), live)
        except (ReflectmgrError, OSError):
            pass  # the manager is gone: the child's proxies will say so

    def forget_parent(self) -> None:
        """In a forked child: let go of the parent's sockets here without disturbing the parent."""
        for transport in self._transports:
            transport.detach_after_fork()
        self._pool.clear()
        self._transports.clear()
        self._local = threading.local()  # the forking thread's channel is the parent's
        self._stop_flusher()  # its thread did not survive the fork; forget it
        self._sending_releases = threading.RLock()  # which that thread may have held at the fork

    def adopt_inherited(self) -> None:
        """In a forked child: a session of its own, adopting the references it inherited. A call
        made meanwhile on the adopting thread (a ``__del__`` run by a collection inside the
        adoption) raises: the session it needs is half made, and waiting would be for ever."""
        if self._fork_lock._is_owned():  # type: ignore[attr-defined]
            raise ReentrantCallError(
                "a call to the manager from code run while this forked child was taking over the "
                "proxies it inherited (a __del__ run by a garbage collection, most likely): the "
                "child's connection is not ready yet; make the call after the fork"
            )
        with self._fork_lock:
            if self._generation == registry.generation[0]:
                return
            self.forget_parent()
            self._token = os.urandom(16)
            self.table.release_all(self.account)  # the parent's byref objects are not ours to serve
            token = self._fork_pin[0] if self._fork_pin is not None else None
            inherited = list(self.cache.live())
            self._anchor = self._open()
            self._generation = registry.generation[0]
            self._start_flusher()
            alive = self._anchor.call(Op.ADOPT, 0, (token, inherited)) if inherited or token else []
            self._fork_pin = None
            self.cache.reset(dict.fromkeys(alive, 1))


_held_for_fork: list[Any] = []


def _before_fork() -> None:
    for client in list(registry.clients.values()):
        client.pin_for_fork()
    # Hold every lock a helper thread might hold at fork time, so the child inherits none locked.
    registry.lock.acquire()
    for client in list(registry.clients.values()):
        _held_for_fork.extend((client.cache._lock, client.table.lock))
    for lock in _held_for_fork:
        lock.acquire()


def _release_fork_locks() -> None:
    for lock in reversed(_held_for_fork):
        lock.release()
    _held_for_fork.clear()
    registry.lock.release()


def _after_fork_in_parent() -> None:
    _release_fork_locks()
    for client in list(registry.clients.values()):
        client._fork_pin = None  # the child claims it, or its lease runs out


def _after_fork_in_child() -> None:
    registry.generation[0] += 1
    _release_fork_locks()
    clients = list(registry.clients.values())
    for client in clients:
        if client._generation != registry.generation[0]:  # not adopted already by a __del__ run here
            client.forget_parent()
    # Adopt at once, not at the first call: the parent's pin lapses after a lease, and a child
    # that uses its proxies only later must still find their objects.
    for client in clients:
        if not client.closed:
            try:
                client.adopt_inherited()
            except Exception:
                pass  # the manager is unreachable: the first call retries, and raises


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
