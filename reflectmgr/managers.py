"""The ``multiprocessing.managers``-compatible surface: change the import, keep the code.

    from reflectmgr.managers import BaseManager, SyncManager, BaseProxy, RemoteError

``BaseManager.register(typeid, callable, proxytype, exposed, method_to_typeid, create_method)``
works as in the stdlib, for managers started here and for remote ones (``get_server()`` /
``connect()``): the server's registry builds the object. What a registered typeid returns:

- with a ``proxytype`` (a ``BaseProxy`` subclass): an instance of it, whose ``_callmethod``
  keeps the stdlib's exposure rules (a method outside ``exposed`` raises ``RemoteError``);
- without one: an ``AutoProxy`` with exactly the exposed methods, as in the stdlib.

The SyncManager factories (``Lock``, ``Queue``, ``Pool``, ``dict``...) build the stdlib's own
objects in the manager and return fully reflected proxies (``Queue`` builds a ``queue.Queue``
subclass whose uncontended ``put`` and ``get`` take a shorter way: ``_owner/queues.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import cloudpickle

from ._manager.client import get_client
from ._manager.lifecycle import Manager
from ._manager.namespace import Namespace
from ._proxy.proxy import is_proxy
from ._transport.sockets import Address, Listener
from ._wire.opcodes import Op
from .errors import ReflectmgrError, RemoteError

__all__ = [
    "AutoProxy",
    "BaseManager",
    "BaseProxy",
    "MakeProxyType",
    "Namespace",
    "RemoteError",
    "SyncManager",
    "Token",
]


class Token:
    """Identifies a shared object: its typeid, its manager's address and its id there."""

    __slots__ = ("address", "id", "typeid")

    def __init__(self, typeid: str, address: Any, id: int) -> None:
        self.typeid, self.address, self.id = typeid, address, id

    def __getstate__(self) -> tuple[str, Any, int]:
        return (self.typeid, self.address, self.id)

    def __setstate__(self, state: tuple[str, Any, int]) -> None:
        self.typeid, self.address, self.id = state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(typeid={self.typeid!r}, address={self.address!r}, id={self.id!r})"


class BaseProxy:
    """Base of user-written proxy types (``proxytype=`` in ``register``), as in the stdlib.

    Subclasses call ``self._callmethod(name, args, kwds)``; it honours ``exposed``. Underneath is
    a reflected proxy (``reflectmgr.is_proxy``) that keeps the referent alive and pickles safely.
    """

    _exposed_: tuple[str, ...] | None = None
    _method_to_typeid_: dict[str, str] | None = None

    def __init__(
        self,
        token: Token,
        serializer: str = "pickle",
        manager: BaseManager | None = None,
        authkey: bytes | None = None,
        exposed: Any = None,
        incref: bool = True,
        manager_owned: bool = False,
    ) -> None:
        self._token = token
        self._id = token.id
        self._manager = manager
        self._serializer = serializer
        self._authkey = authkey
        self._exposed_names = tuple(exposed) if exposed is not None else self._exposed_
        self._referent = _referent(token, manager, authkey)

    def _callmethod(self, methodname: str, args: tuple[Any, ...] = (), kwds: dict[str, Any] | None = None) -> Any:
        exposed = self._exposed_names
        if exposed is not None and methodname not in exposed:
            raise RemoteError(
                "AttributeError",
                f"method {methodname!r} of {self._token.typeid!r} object is not in exposed={exposed!r}",
            )
        peer, oid = self._referent._rm_link, self._referent._rm_oid
        typeid = (self._method_to_typeid_ or {}).get(methodname)
        if typeid is not None and self._manager is not None:
            ref = peer.call(Op.CALLMETHOD_REF, oid, methodname, tuple(args), dict(kwds or {}))
            return self._manager._wrap(ref, typeid)
        return peer.call(Op.CALLMETHOD, oid, methodname, tuple(args), dict(kwds or {}))

    def _getvalue(self) -> Any:
        return self._referent._getvalue()

    def __reduce__(self) -> Any:
        # The reflected proxy inside travels safely (pinned); the wrapper is rebuilt around it.
        return (_rebuild_base_proxy, (type(self), self._token, self._serializer, self._exposed_names, self._referent))

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self._getvalue()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object, typeid {self._token.typeid!r} at {id(self):#x}>"

    def __str__(self) -> str:
        try:
            return str(self._referent._rm_link.call(Op.CALLMETHOD, self._referent._rm_oid, "__repr__", (), {}))
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"


def _referent(token: Token, manager: BaseManager | None, authkey: bytes | None) -> Any:
    client = manager.client if manager is not None else get_client(token.address, authkey)
    proxy = client.cache.lookup(token.id)
    if proxy is None:
        raise ReflectmgrError(f"{token!r}: no live reference to it in this process; pickle the proxy instead")
    return proxy


def _rebuild_base_proxy(cls: type[BaseProxy], token: Token, serializer: str, exposed: Any, referent: Any) -> Any:
    obj = cls.__new__(cls)
    obj._token, obj._id, obj._manager = token, token.id, None
    obj._serializer, obj._authkey, obj._exposed_names = serializer, None, exposed
    obj._referent = referent
    return obj


_auto_types: dict[tuple[str, ...], type[BaseProxy]] = {}


def MakeProxyType(name: str, exposed: Any, _cache: dict[Any, Any] | None = None) -> type[BaseProxy]:  # noqa: N802
    """A BaseProxy subclass with one method per exposed name (the stdlib's helper)."""
    exposed = tuple(exposed)
    ns: dict[str, Any] = {"_exposed_": exposed}
    for meth in exposed:
        ns[meth] = _forwarder(meth)
    return type(name, (BaseProxy,), ns)


def _forwarder(name: str) -> Callable[..., Any]:
    def method(self: BaseProxy, /, *args: Any, **kwds: Any) -> Any:
        return self._callmethod(name, args, kwds)

    method.__name__ = name
    return method


def AutoProxy(  # noqa: N802 - the stdlib's name
    token: Token,
    serializer: str = "pickle",
    manager: BaseManager | None = None,
    authkey: bytes | None = None,
    exposed: Any = None,
    incref: bool = True,
    manager_owned: bool = False,
) -> BaseProxy:
    """The stdlib's default proxy type for a registered typeid: the exposed methods, nothing else
    (as the stdlib; the SyncManager factories give fully reflected proxies instead)."""
    exposed = tuple(exposed) if exposed is not None else ()
    cls = _auto_types.get(exposed)
    if cls is None:
        cls = _auto_types[exposed] = MakeProxyType(f"AutoProxy[{token.typeid}]", exposed)
    return cls(token, serializer, manager=manager, authkey=authkey, exposed=exposed)


class _ServerHandle:
    """What ``get_server()`` returns: serve in this process until told to stop."""

    def __init__(self, manager: BaseManager) -> None:
        from ._manager.process import make_server

        self.listener = Listener(manager.transport, manager._requested)
        self._server = make_server([self.listener], manager.authkey)
        self._server.registry.update(_server_registry(type(manager)))
        self.address = self._server.address

    def serve_forever(self) -> None:
        """Serve until a client calls ``shutdown`` or the process is interrupted."""
        try:
            self._server.serve_forever()
        except KeyboardInterrupt:
            self._server.stop()


def _server_registry(cls: type[BaseManager]) -> dict[str, tuple[Any, Any, Any]]:
    return {typeid: (c, exposed, m2t) for typeid, (c, exposed, m2t, _) in cls._registry.items()}


class BaseManager(Manager):
    """``multiprocessing.managers.BaseManager``: same constructor, lifecycle and ``register``."""

    _registry: ClassVar[dict[str, tuple[Any, Any, Any, Any]]] = {}

    def __init__(
        self,
        address: Address | None = None,
        authkey: bytes | None = None,
        serializer: str = "pickle",
        ctx: Any = None,
        *,
        shutdown_timeout: float = 1.0,
    ) -> None:
        super().__init__(address, authkey, ctx=ctx, shutdown_timeout=shutdown_timeout)
        if serializer not in ("pickle", "xmlrpclib"):
            raise ValueError(f"unknown serializer {serializer!r}")
        self._serializer = serializer

    def start(self, initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = ()) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._setup = cloudpickle.dumps((_server_registry(type(self)), initializer, initargs))
        super().start()

    def connect(self) -> None:
        """Attach to a manager already running at ``address`` (started elsewhere)."""
        if self._requested is None:
            raise ValueError("connect() needs the manager's address")
        self._client = get_client(self._requested, self._authkey)
        self.address = self._requested

    def get_server(self) -> _ServerHandle:
        """A server for this manager's registry, to run here with ``serve_forever()``."""
        return _ServerHandle(self)

    def _create(self, typeid: str, /, *args: Any, **kwds: Any) -> Any:
        ref, exposed = self.client.call(Op.CREATE, 0, typeid, args, kwds)
        return self._wrap(ref, typeid, exposed)

    def _wrap(self, ref: Any, typeid: str, server_exposed: Any = None) -> Any:
        """Dress a reference as the proxy type ``typeid`` was registered with."""
        _, exposed, method_to_typeid, proxytype = self._registry.get(typeid, (None, None, None, None))
        exposed = exposed if exposed is not None else server_exposed
        if not is_proxy(ref):
            return ref
        token = Token(typeid, self.address, ref._rm_oid)
        make = proxytype if proxytype is not None else AutoProxy
        proxy = make(token, self._serializer, manager=self, authkey=self.authkey, exposed=exposed)
        if method_to_typeid and isinstance(proxy, BaseProxy):
            proxy._method_to_typeid_ = method_to_typeid
        return proxy

    @classmethod
    def register(
        cls,
        typeid: str,
        callable: Callable[..., Any] | None = None,
        proxytype: Any = None,
        exposed: Any = None,
        method_to_typeid: dict[str, str] | None = None,
        create_method: bool = True,
    ) -> None:
        """Register ``typeid``; with ``create_method``, ``manager.<typeid>(...)`` creates one."""
        if "_registry" not in cls.__dict__:
            cls._registry = cls._registry.copy()
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(proxytype, "_method_to_typeid_", None)
        if method_to_typeid:
            for key, value in method_to_typeid.items():
                if not (isinstance(key, str) and isinstance(value, str)):
                    raise TypeError(f"{key!r} -> {value!r}: method_to_typeid maps names to typeids")
        cls._registry[typeid] = (callable, exposed, method_to_typeid, proxytype)
        if create_method:

            def create(self: BaseManager, /, *args: Any, **kwds: Any) -> Any:
                return self._create(typeid, *args, **kwds)

            create.__name__ = typeid
            setattr(cls, typeid, create)


class SyncManager(BaseManager):
    """``multiprocessing.managers.SyncManager``: every factory, fully reflected proxies."""


for _name in ("Iterator", "AsyncResult"):
    SyncManager.register(_name, create_method=False)
