"""The object table: which objects the peers hold, and how many times each peer received each.

    table.objects   oid -> [obj, total]        total = pin counts + sum over accounts of their counts
    table._oids     id(obj) -> oid             for the objects in the table (so they are alive)
    account.held     oid -> count               times this account *received* the reference
    table.pins      token -> (oids, expiry)    references kept for a pickled proxy or a fork in flight

Object ids are numbers from a counter, never reused in the table's life: a stale reference (a
forked child's, a pickle loaded twice, a pin claimed after it lapsed) can only fail with
:class:`ReleasedError`, never reach another object. An object keeps its id while it is in the
table; once nobody holds it, it leaves, and if it is sent again later it gets a new id.

A release carries the count the peer had received when its proxy died; the account's count drops
by that much, so a reference sent again in the meantime (a reply crossing the release) survives.
A pin belongs to no account: it outlives its sender, until the receiver claims it or PIN_LEASE
runs out. The lock guards dictionary updates only: objects that leave the table are dropped after
it is released, so a ``__del__`` that calls back into the manager cannot deadlock it.

A garbage collection may still start inside the lock (any allocation, any call there) and run a
``__del__`` on this thread, whose calls reach the table again. The lock is reentrant so that this
never hangs, and such a re-entry never touches counts an update outside is halfway through:
releases it brings (a reply's) wait in ``_later`` and are applied when the update ends; sending
a new reference (a by-reference argument, a pin) raises :class:`ReentrantCallError` instead.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ProtocolError, ReentrantCallError, ReleasedError

# How long a pin keeps its objects when nobody claims it: a pickled proxy that is never loaded, a
# forked child that never adopted what it inherited. Long enough for a pickle to wait in a queue
# behind real work; short enough that an abandoned one does not hold memory for the session's life.
PIN_LEASE = 300.0


class Account:
    """One peer's references (a client session, or the manager seen from a client)."""

    __slots__ = ("held", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.held: dict[int, int] = {}


def _reentered() -> ReentrantCallError:
    return ReentrantCallError(
        "no reference can be sent from code that a garbage collection ran while this thread "
        "was updating the object table (a __del__, most likely): send it from ordinary code"
    )


class ObjectTable:
    def __init__(self, pin_lease: float = PIN_LEASE) -> None:
        self.lock = threading.RLock()  # reentrant only to tell a re-entry (see the module's docstring)
        # Whether this thread is inside an update now (re-entered by code a collection ran): the
        # lock's own C method, bound once (export asks on every reference sent).
        self._inside: Callable[[], bool] = self.lock._is_owned  # type: ignore[attr-defined]
        # Releases that arrived while this thread was inside an update: (account, releases),
        # releases None for release_all. Applied when that update ends.
        self._later: list[tuple[Account, tuple[tuple[int, int], ...] | None]] = []
        self.objects: dict[int, list[Any]] = {}
        self.pins: dict[bytes, tuple[tuple[int, ...], float]] = {}
        self.pin_lease = pin_lease
        self._oids: dict[int, int] = {}
        self._next_oid = itertools.count(1).__next__

    def __len__(self) -> int:
        return len(self.objects)

    def resolve(self, oid: int) -> Any:
        entry = self.objects.get(oid)
        if entry is None:
            raise ReleasedError(f"object #{oid} is not (or no longer) held by any client")
        return entry[0]

    def export(self, account: Account, obj: Any) -> int:
        """Count one more reception of ``obj`` by ``account``; returns its id (a new one if the
        object is not in the table). Called while encoding, before the message is sent, so the
        peer can never release what was not yet counted; undo with ``release`` if the send fails."""
        if self._inside():
            raise _reentered()
        with self.lock:
            oid = self._oids.get(id(obj))
            if oid is None:
                oid = self._next_oid()
                self._oids[id(obj)] = oid
                self.objects[oid] = [obj, 1]
            else:
                self.objects[oid][1] += 1
            account.held[oid] = account.held.get(oid, 0) + 1
        if self._later:
            self._apply_later()
        return oid

    def release(self, account: Account, releases: Iterable[tuple[int, int]]) -> None:
        """Apply ``(oid, count)`` releases from ``account``; unknown ids are ignored (idempotent).

        A negative count *acquires*: the account takes over a borrowed reference (an executor task
        got the proxy without a round trip while its submitter kept the object alive).
        """
        releases = tuple(releases)
        for item in releases:  # a peer's garbage must not reach the counts half applied
            if type(item) is not tuple or len(item) != 2 or type(item[0]) is not int or type(item[1]) is not int:
                raise ProtocolError(f"malformed release {item!r}")
        if self._inside():
            self._later.append((account, releases))
            return
        garbage: list[Any] = []
        with self.lock:
            for oid, count in releases:
                if count < 0:
                    entry = self.objects.get(oid)
                    if entry is not None:
                        entry[1] -= count
                        account.held[oid] = account.held.get(oid, 0) - count
                    continue
                have = account.held.get(oid)
                if have is None:
                    continue
                count = min(count, have)
                if have == count:
                    del account.held[oid]
                else:
                    account.held[oid] = have - count
                self._drop(oid, count, garbage)
        self._done(garbage)

    def release_all(self, account: Account) -> None:
        """The account went away: drop every reference it had (its pins stay until claimed or lapsed)."""
        if self._inside():
            self._later.append((account, None))
            return
        garbage: list[Any] = []
        with self.lock:
            for oid, count in account.held.items():
                self._drop(oid, count, garbage)
            account.held.clear()
        self._done(garbage)

    def _refuse_reentry(self) -> None:
        if self._inside():
            raise _reentered()

    def _done(self, garbage: list[Any]) -> None:
        """An update has ended (the lock is released): drop what left the table (a ``__del__`` may
        call back), then apply the releases that arrived inside it."""
        garbage.clear()
        if self._later:
            self._apply_later()

    def _apply_later(self) -> None:
        """Apply the releases that arrived inside an update that has ended now."""
        while True:
            with self.lock:
                if not self._later:
                    return
                account, releases = self._later.pop(0)
            if releases is None:
                self.release_all(account)
            else:
                self.release(account, releases)

    def _drop(self, oid: int, count: int, garbage: list[Any]) -> None:
        # Every id a account or a pin counts has an entry (it leaves only when its total reaches 0).
        entry = self.objects[oid]
        entry[1] -= count
        if entry[1] <= 0:
            del self.objects[oid]
            del self._oids[id(entry[0])]
            garbage.append(entry)

    # -- pins: references in flight ------------------------------------------------------------
    def pin(self, oids: Iterable[int]) -> bytes:
        """Keep the live objects among ``oids`` alive for a pickle or a fork on its way to another
        process, until :meth:`claim` or :meth:`adopt` takes them or PIN_LEASE runs out."""
        self._refuse_reentry()
        token = os.urandom(16)
        garbage: list[Any] = []
        with self.lock:
            self._expire(garbage)
            pinned = []
            for oid in oids:
                entry = self.objects.get(oid)
                if entry is not None:
                    entry[1] += 1
                    pinned.append(oid)
            self.pins[token] = (tuple(pinned), time.monotonic() + self.pin_lease)
        self._done(garbage)
        return token

    def claim(self, token: bytes, oid: int) -> Any:
        """Give up a pin and return its object, which the caller then sends as a reference
        (counted for the claimer then, like any reference sent: the caller holds the object
        meanwhile, so it cannot be freed in between).

        A token claimed twice (the same pickle loaded twice) still works while the object lives;
        once it is gone, :class:`ReleasedError`, since ids are never reused.
        """
        self._refuse_reentry()
        garbage: list[Any] = []
        with self.lock:
            entry = self.objects.get(oid)
            obj = entry[0] if entry is not None else None
            self._unpin(token, garbage)
            self._expire(garbage)
        self._done(garbage)
        if entry is None:
            raise ReleasedError(
                f"object #{oid} was released before the pickled proxy reached this process (the pin "
                f"lapses after {self.pin_lease:g} s, or the pickle was loaded after its object was freed)"
            )
        return obj

    def adopt(self, account: Account, token: bytes | None, oids: Iterable[int]) -> list[int]:
        """A forked child takes over the references it inherited: count the live ones among
        ``oids`` for ``account`` and give up the fork's pin. Returns the ids still alive."""
        self._refuse_reentry()
        alive = []
        garbage: list[Any] = []
        with self.lock:
            for oid in oids:
                entry = self.objects.get(oid)
                if entry is not None:
                    entry[1] += 1
                    account.held[oid] = account.held.get(oid, 0) + 1
                    alive.append(oid)
            if token is not None:
                self._unpin(token, garbage)
        self._done(garbage)
        return alive

    def _unpin(self, token: bytes, garbage: list[Any]) -> None:
        pinned = self.pins.pop(token, None)
        if pinned is not None:
            for oid in pinned[0]:
                self._drop(oid, 1, garbage)

    def _expire(self, garbage: list[Any]) -> None:
        if not self.pins:
            return
        now = time.monotonic()
        for token in [t for t, (_, expiry) in self.pins.items() if expiry <= now]:
            self._unpin(token, garbage)

    def expire_pins(self) -> None:
        """Drop the pins whose lease ran out (also done on every pin and claim; not when
        re-entered: the next one does it)."""
        if self._inside():
            return
        garbage: list[Any] = []
        with self.lock:
            self._expire(garbage)
        self._done(garbage)
