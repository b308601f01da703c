"""The object table: which objects the peers hold, and how many times each peer received each.

    table.objects   oid -> [obj, total]        total = sum over holders of their counts
    holder.held     oid -> count               times this holder *received* the reference
    table.pins      token -> (oid, holder)     references kept for a pickled proxy in flight

A release carries the count the peer had received when its proxy died; the holder's count drops
by that much, so a reference sent again in the meantime (a reply crossing the release) survives.
The table keeps the object alive while ``total > 0``. All mutation happens under one lock: it is
held for dictionary updates only, never across a call into user code or a send.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any

from ..errors import ReleasedError


class Holder:
    """One peer's references (a client session, or the manager seen from a client)."""

    __slots__ = ("held", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.held: dict[int, int] = {}


class ObjectTable:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[int, list[Any]] = {}
        self.pins: dict[bytes, tuple[int, Holder]] = {}

    def __len__(self) -> int:
        return len(self.objects)

    def resolve(self, oid: int) -> Any:
        entry = self.objects.get(oid)
        if entry is None:
            raise ReleasedError(f"object {oid:#x} is not (or no longer) held by any client")
        return entry[0]

    def add(self, holder: Holder, objs: Iterable[Any]) -> None:
        """Count one more reception by ``holder`` of each object (the objects are alive: we hold them)."""
        with self.lock:
            for obj in objs:
                oid = id(obj)
                entry = self.objects.get(oid)
                if entry is None:
                    self.objects[oid] = [obj, 1]
                else:
                    entry[1] += 1
                holder.held[oid] = holder.held.get(oid, 0) + 1

    def release(self, holder: Holder, releases: Iterable[tuple[int, int]]) -> None:
        """Apply ``(oid, count)`` releases from ``holder``; unknown ids are ignored (idempotent).

        A negative count *acquires*: the holder takes over a borrowed reference (an executor task
        got the proxy without a round trip while its submitter kept the object alive).
        """
        with self.lock:
            for oid, count in releases:
                if count < 0:
                    entry = self.objects.get(oid)
                    if entry is not None:
                        entry[1] -= count
                        holder.held[oid] = holder.held.get(oid, 0) - count
                    continue
                have = holder.held.get(oid)
                if have is None:
                    continue
                count = min(count, have)
                if have == count:
                    del holder.held[oid]
                else:
                    holder.held[oid] = have - count
                self._drop(oid, count)

    def release_all(self, holder: Holder) -> None:
        """The holder went away: drop every reference it had, and its pins."""
        with self.lock:
            for oid, count in holder.held.items():
                self._drop(oid, count)
            holder.held.clear()
            for token in [t for t, (_, h) in self.pins.items() if h is holder]:
                del self.pins[token]

    def _drop(self, oid: int, count: int) -> None:
        entry = self.objects.get(oid)
        if entry is None:
            return
        entry[1] -= count
        if entry[1] <= 0:
            del self.objects[oid]

    def pin(self, holder: Holder, oid: int) -> bytes:
        """Keep ``oid`` alive for a pickled proxy on its way to another process."""
        obj = self.resolve(oid)
        self.add(holder, (obj,))
        token = os.urandom(16)
        with self.lock:
            self.pins[token] = (oid, holder)
        return token

    def claim(self, token: bytes, oid: int) -> Any:
        """Give up a pin and return its object, which the caller then sends as a reference
        (counted for the claimer then, like any reference sent).

        A token claimed twice (the same pickle loaded twice) still works while the object lives.
        """
        with self.lock:
            pinned = self.pins.pop(token, None)
            entry = self.objects.get(oid)
            if entry is None:
                raise ReleasedError(
                    f"object {oid:#x} was released before the pickled proxy reached this process; "
                    "keep the sender's proxy alive until the receiver has loaded it"
                )
            obj = entry[0]
        if pinned is not None:
            self.release(pinned[1], ((oid, 1),))
        return obj
