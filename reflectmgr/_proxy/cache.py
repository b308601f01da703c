"""The weak proxy cache and the release queue.

    reference arrives --> cache.get_or_create(oid)  (count += 1; same proxy while it lives)
    last proxy dies   --> weakref callback: append the entry to ``dead`` (no lock, no I/O)
    next message out  --> take_releases(): entries still dead become ((oid, count), ...)
    borrowed proxy    --> acquire(oid): ((oid, -1)) rides the same way, in order, and counts the
                          reference for us (an executor task received it without a round trip)

The weakref callback never sends and never takes a lock: it can run in any thread, in the middle
of a send or while this thread holds the cache lock (a GC pass), so it only appends to a deque,
and rings the cache's bell if the release flusher sleeps on it (one byte on a pipe: no lock).
A collection inside the lock may also run user code (a ``__del__``, a dropped Manager's shutdown)
that calls the manager on this same thread: the lock is reentrant, such a call takes no releases
(they ride the next message: the outer update may be halfway), and a proxy it receives for the
reference being received outside is the one both get.
A reference that arrives again while its entry is dead but not yet drained *takes the entry over*:
the count goes on, and the pending release is cancelled (drain sees a live proxy and skips it).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from .._fdwait import readable

Releases = tuple[tuple[int, int], ...]


class Bell:
    """How the release flusher sleeps until there is something to release, with no periodic
    wake-up: a pipe (opened at the first :meth:`arm`: a manager's caches never need one) that
    :meth:`ring` writes one byte to, only while the flusher is armed. Rung from weakref
    callbacks, so it takes no lock: the flusher arms, then looks at the queue; a death appends,
    then rings; under the GIL one of the two sees the other. A forked child opens a pipe of its
    own (the inherited one is the parent's flusher's)."""

    def __init__(self) -> None:
        self.armed = False
        self._w = self._r = -1
        self._finalizer: weakref.finalize[Any, Bell] | None = None
        _bells.add(self)

    def arm(self) -> None:
        if self._r < 0:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._finalizer = weakref.finalize(self, _close_pipe, r, w)
            self._finalizer.atexit = False  # a daemon flusher may sleep on it until the very end
            self._r, self._w = r, w
        self.armed = True

    def ring(self) -> None:
        if self.armed:
            self.armed = False
            try:
                os.write(self._w, b"!")
            except OSError:
                pass  # full (it holds a wake-up already), or no pipe yet (nobody sleeps on it)

    def poke(self) -> None:
        """Wake the flusher whether it is armed or not (an extra wake-up costs one look)."""
        self.armed = True
        self.ring()

    def wait(self, timeout: float | None) -> None:
        """Once armed: sleep until rung or ``timeout`` seconds (None: until rung); disarms. One
        read empties the pipe: a byte is written only by a ring that disarmed (or a poke)."""
        try:
            if readable(self._r, timeout):
                os.read(self._r, 4096)
        finally:
            self.armed = False

    def _after_fork(self) -> None:
        self.armed = False
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
            _close_pipe(self._r, self._w)  # this process's copies; the parent keeps its own
            self._w = self._r = -1


def _close_pipe(r: int, w: int) -> None:
    os.close(r)
    os.close(w)


_bells: weakref.WeakSet[Bell] = weakref.WeakSet()


def _renew_bells() -> None:
    for bell in list(_bells):
        bell._after_fork()


os.register_at_fork(after_in_child=_renew_bells)


class _Entry:
    __slots__ = ("bell", "count", "dead", "oid", "ref")

    def __init__(self, oid: int, dead: deque[_Entry], bell: Bell) -> None:
        self.oid = oid
        self.count = 0
        self.dead = dead
        self.bell = bell
        self.ref: weakref.ref[Any] | None = None

    def died(self, _ref: weakref.ref[Any]) -> None:
        self.dead.append(self)
        if self.bell.armed:
            self.bell.ring()


class ProxyCache:
    def __init__(self) -> None:
        self._lock = threading.RLock()  # reentrant: see the module's docstring
        self._entries: dict[int, _Entry] = {}
        self._dead: deque[_Entry] = deque()
        self.bell = Bell()
        self._pending: list[tuple[int, int]] = []
        self._acquires = False

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_create(self, oid: int, make: Callable[[], Any]) -> Any:
        """The live proxy for ``oid``, or a new one from ``make``; counts one reception."""
        with self._lock:
            entry = self._entries.get(oid)
            if entry is None:
                entry = self._entries[oid] = _Entry(oid, self._dead, self.bell)
            elif entry.ref is not None:
                proxy = entry.ref()
                if proxy is not None:
                    entry.count += 1
                    return proxy
            proxy = make()
            if entry.ref is not None:  # make() ran code (a collection) that received it too
                alive = entry.ref()
                if alive is not None:
                    entry.count += 1
                    return alive
            entry.ref = weakref.ref(proxy, entry.died)
            entry.count += 1
            return proxy

    def lookup(self, oid: int) -> Any:
        """The live proxy for ``oid``, or None (no reception counted)."""
        entry = self._entries.get(oid)
        return entry.ref() if entry is not None and entry.ref is not None else None

    def live(self) -> dict[int, Any]:
        """Every proxy alive now, by oid (used after fork to adopt inherited references)."""
        out = {}
        with self._lock:
            for oid, entry in self._entries.items():
                proxy = entry.ref() if entry.ref is not None else None
                if proxy is not None:
                    out[oid] = proxy
        return out

    def reset(self, counts: dict[int, int]) -> None:
        """After fork: keep only the entries in ``counts`` with those counts; forget all releases."""
        with self._lock:
            self._entries = {oid: e for oid, e in self._entries.items() if oid in counts}
            for oid, entry in self._entries.items():
                entry.count = counts[oid]
            self._dead.clear()
            self._pending.clear()

    @property
    def has_releases(self) -> bool:
        return bool(self._dead or self._pending)

    @property
    def has_acquires(self) -> bool:
        return self._acquires

    def acquire(self, oid: int) -> None:
        """Queue ``(oid, -1)``: take over one borrowed reference (see Client.borrow)."""
        with self._lock:
            self._pending.append((oid, -1))
            self._acquires = True
        self.bell.ring()

    def take_releases(self) -> Releases:
        if not self._dead and not self._pending:
            return ()
        if self._lock._is_owned():  # type: ignore[attr-defined]
            return ()  # re-entered by code a collection ran inside an update here: the next message
        with self._lock:
            dead, entries, pending = self._dead, self._entries, self._pending
            while dead:
                entry = dead.popleft()
                if entries.get(entry.oid) is entry and entry.ref is not None and entry.ref() is None:
                    del entries[entry.oid]
                    pending.append((entry.oid, entry.count))
            out = tuple(pending)
            pending.clear()
            self._acquires = False
        return out

    def return_releases(self, releases: Releases) -> None:
        """Put back releases whose message could not be sent (they go with the next one)."""
        with self._lock:
            self._pending.extend(releases)
        self.bell.ring()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._dead.clear()
            self._pending.clear()
