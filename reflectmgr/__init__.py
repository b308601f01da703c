"""reflectmgr: shared objects across processes, through proxies that behave like the objects.

with reflectmgr.Manager() as m:
    d = m.dict(a={"b": []})
    d["a"]["b"].append(1)          # nested mutation reaches the manager
    reflectmgr.value(d)            # a plain local deep copy
"""

from __future__ import annotations

from typing import Any

from ._manager.lifecycle import EXECUTORS, Connection, Manager, connect
from ._manager.namespace import Namespace
from ._manager.stats import Stats
from ._proxy.byref import byref
from ._proxy.proxy import Proxy, is_proxy
from ._wire.opcodes import Op
from .errors import (
    AuthenticationError,
    BrokenManagerError,
    LockOwnerDied,
    ManagerClosedError,
    ManagerTimeoutError,
    ProtocolError,
    ReentrantCallError,
    ReflectmgrError,
    ReflectmgrPicklingError,
    ReleasedError,
    RemoteError,
    RemoteTraceback,
    RestrictedError,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``AsyncManager`` and ``aconnect`` (reflectmgr.aio) load asyncio only when first used."""
    if name in ("AsyncManager", "aconnect"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'reflectmgr' has no attribute {name!r}")


EXECUTORS.update(
    process="reflectmgr._pools.executor:ManagerExecutor",
    interpreter="reflectmgr._pools.interpreters:InterpreterExecutor",
)


def value(obj: Any) -> Any:
    """A plain local deep copy of ``obj``: a proxy's remote object is copied in one round trip.

    Containers are rebuilt with ``value`` applied to their items; anything else is deep-copied.
    Raises :class:`ReflectmgrPicklingError` if the remote object does not pickle (a lock, a file).
    """
    if is_proxy(obj):
        return obj._rm_link.call(Op.VALUE, obj._rm_oid)
    t = type(obj)
    if t is list or t is tuple or t is set or t is frozenset:
        return t(value(x) for x in obj)
    if t is dict:
        return {value(k): value(v) for k, v in obj.items()}
    import copy

    return copy.deepcopy(obj)


__all__ = [
    "AsyncManager",
    "aconnect",
    "AuthenticationError",
    "BrokenManagerError",
    "Connection",
    "Manager",
    "ManagerClosedError",
    "ManagerTimeoutError",
    "Namespace",
    "ProtocolError",
    "Proxy",
    "ReentrantCallError",
    "ReflectmgrError",
    "ReflectmgrPicklingError",
    "LockOwnerDied",
    "ReleasedError",
    "RemoteError",
    "RemoteTraceback",
    "RestrictedError",
    "Stats",
    "byref",
    "connect",
    "is_proxy",
    "value",
]
