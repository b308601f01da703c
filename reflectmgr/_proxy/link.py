"""One side's view of one peer: proxies to the peer's objects, and our objects the peer holds.

    imports: ProxyCache  oid -> proxy            (the peer's objects we hold)
    exports: ObjectTable oid -> obj, per account  (our objects the peer holds: byref callbacks)

A client has one endpoint per manager (its connection pool); a manager has one per client
session, for the callbacks that client passed with ``byref``. Subclasses say how a call travels
(:meth:`call`) and how a proxy leaves for a third process (:meth:`transfer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._owner.export import Describer
from .._owner.table import Account, ObjectTable
from .._wire.codec import note_export
from ..errors import ReleasedError
from .cache import ProxyCache, Releases
from .proxy import Proxy, TypeDesc, new_proxy, proxy_class


class Link:
    server: Any = None  # an endpoint serves objects (callbacks) but no manager services

    def __init__(self, name: str) -> None:
        self.cache = ProxyCache()
        # What the next message out carries: the cache's own method, bound once (every call asks).
        self.take_releases: Callable[[], Releases] = self.cache.take_releases
        self.classes: dict[int, type[Proxy]] = {}
        self.table = ObjectTable()
        self.account = Account(name)
        self.describer = Describer()

    # -- what proxies need ---------------------------------------------------------------------
    def call(self, op: int, oid: int, *args: Any) -> Any:
        raise NotImplementedError

    def transfer(self, proxy: Proxy) -> tuple[Any, ...]:
        raise NotImplementedError

    def same_owner(self, other: object) -> bool:
        """True if ``other`` reaches the same objects (two connections to one manager)."""
        return False

    # -- what a channel needs ------------------------------------------------------------------
    @property
    def home(self) -> Link:
        return self

    def resolve(self, oid: int) -> Any:
        return self.table.resolve(oid)

    def load_ref(self, pid: Any) -> Any:
        """Persistent-load hook: ``(oid, desc_or_tid)`` from the peer becomes our proxy."""
        oid, desc = pid
        if type(desc) is int:
            cls = self.classes.get(desc)
            if cls is None:
                raise ReleasedError(f"reference to an object of an undescribed type {desc:#x}")
        else:
            cls = self._class(desc)
        return self.cache.get_or_create(oid, lambda: new_proxy(cls, oid, self))

    def _class(self, desc: TypeDesc) -> type[Proxy]:
        cls = self.classes.get(desc[0])
        if cls is None or cls._rm_desc != desc:
            cls = self.classes[desc[0]] = proxy_class(desc)
        return cls

    def return_releases(self, releases: Releases) -> None:
        self.cache.return_releases(releases)

    def apply_releases(self, releases: Releases) -> None:
        self.table.release(self.account, releases)

    # -- byref ---------------------------------------------------------------------------------
    def export(self, obj: Any) -> tuple[int, TypeDesc]:
        """Hold ``obj`` for the peer (one more reception) and describe it for its proxy."""
        oid = self.table.export(self.account, obj)
        note_export(oid)
        return oid, self.describer.describe(type(obj))

    def disconnect(self) -> None:
        """The peer is gone: forget its references to our objects."""
        self.table.release_all(self.account)
