"""Managers placed and supervised by Ray; proxies that work inside Ray tasks and actors.

    with reflectmgr.ray.Manager() as m:          # a Ray actor (num_cpus=0) owns the objects
        d = m.dict()
        ray.get([task.remote(d) for _ in range(8)])  # the proxy works in the task: no setup

    driver                         Ray actor "_Owner" (its own process)       Ray worker
    Manager.start() --actor--->    a reflectmgr server in threads:            task(d): d["k"] = 1
                                   TCP on the node's IP, and a unix socket          |
                                   (shared memory) for processes of its node        |
                                   publishes address -> (authkey, local socket)     |
                                   in Ray's key-value store (GCS)                   |
    d = m.dict() <== reflectmgr's own transport ==>  objects  <== reflectmgr's own transport

Ray places and supervises the owner; reflectmgr's transport carries every call (Ray's actor RPC
costs about 1 ms a call and cannot carry callbacks, blocking calls or shared memory).

The authkey never travels in a task argument. A proxy pickled for Ray carries the manager's
address and a :class:`RayKeys` marker instead of a key; the receiving worker reads the key from
the cluster's key-value store by that address (once per process and manager), and connects over
the unix socket when it runs on the owner's node, over TCP otherwise. So whoever can read the
cluster's store can reach the manager: Ray's trust boundary (Ray's token authentication guards
the store; see docs/beyond-one-machine.md).

Reused workers: Ray keeps its worker processes for later tasks. A worker's connection to a
manager closes once no proxy of that manager has been alive in it for ``idle_close`` seconds
(10 by default), so a finished task leaves no connection or owner thread behind for long; the
next task that gets a proxy connects again (a few milliseconds, once).

Lifetime: leaving ``with`` (or ``shutdown()``) stops the server and kills the actor, and its
objects with it; if the actor dies, every proxy raises :class:`~reflectmgr.BrokenManagerError`
at its next call; a manager started with ``name=`` (and ``namespace=``) can be reached from
other drivers with :func:`connect` while it lives (``lifetime="detached"`` lets it outlive its
driver, as for any Ray actor).
"""

from __future__ import annotations

import os
import pickle
import threading
from typing import Any

try:
    import ray
    from ray.experimental import internal_kv
except ImportError as exc:  # pragma: no cover - the optional extra
    raise ImportError("reflectmgr.ray needs Ray: pip install 'reflectmgr[ray]'") from exc

from ._manager import registry
from ._manager.client import Client
from ._manager.lifecycle import START_TIMEOUT, Connection, Factories, remove_socket_dir
from ._transport.shm import is_shm, socket_path
from ._transport.sockets import DEFAULT_TRANSPORT, Address, Listener
from ._wire.framing import MAX_FRAME
from .errors import BrokenManagerError, ManagerClosedError
from .tls import TLSContext, made_here

__all__ = ["Manager", "RayKeys", "connect"]

# How long a worker keeps a connection to a manager that none of its proxies uses any more.
IDLE_CLOSE = 10.0
# How long leaving ``with`` waits for the owner to stop before killing its actor.
SHUTDOWN_TIMEOUT = 5.0
_KV_NAMESPACE = "reflectmgr"


def _kv_key(address: Address) -> bytes:
    """Where the cluster's store keeps what a process needs to reach the manager at ``address``
    (a TCP address: host, port)."""
    return f"manager:{address[0]}:{address[1]}".encode()


class _Owner:
    """The Ray actor that owns a manager's objects: a reflectmgr server in threads of its process."""

    def __init__(
        self, max_frame: int, idle_close: float, local: bool, ssl_context: Any, client_ssl_context: Any
    ) -> None:
        from ._manager.process import make_server  # the owner's layer, loaded only here

        self.node_ip = _node_ip()
        authkey = os.urandom(32)
        listeners = [Listener("tcp", (self.node_ip, 0), made_here(ssl_context))]
        try:
            if local:
                listeners.append(Listener(DEFAULT_TRANSPORT, None))
        except BaseException:
            listeners[0].close()
            raise
        self.server = make_server(listeners, authkey, max_frame)
        self.address = listeners[0].address
        self.local = listeners[1].address if local else None
        for listener in listeners:
            # A proxy of this manager that comes back into this process is the object itself.
            registry.local_tables[registry.key(listener.address)] = self.server.table
        self.thread = threading.Thread(target=self.server.serve_forever, name="reflectmgr-owner", daemon=True)
        self.thread.start()
        # The client context travels as the files it is made from (reflectmgr.tls), never keys.
        entry = pickle.dumps((authkey, self.local, self.node_ip, idle_close, client_ssl_context))
        internal_kv._internal_kv_put(_kv_key(self.address), entry, overwrite=True, namespace=_KV_NAMESPACE)

    def info(self) -> dict[str, Any]:
        return {"address": self.address, "local": self.local, "node_ip": self.node_ip, "pid": os.getpid()}

    def shutdown(self) -> bool:
        internal_kv._internal_kv_del(_kv_key(self.address), namespace=_KV_NAMESPACE)
        self.server.stop()
        self.thread.join(SHUTDOWN_TIMEOUT)
        return True


class RayKeys:
    """The key source of managers owned by Ray actors (see registry.KeySource): pickled with a
    proxy instead of the authkey; in the receiving process, reads the key from the cluster's
    key-value store by the manager's TCP address and connects, by the owner's unix socket if
    this process runs on its node."""

    def client(self, routes: tuple[Address, ...]) -> Client:
        for route in routes:
            found = registry.lookup(route)
            if found is not None:
                return found
        found_tcp = next((route for route in routes if isinstance(route, (tuple, list))), None)
        if found_tcp is None:
            raise BrokenManagerError(f"no TCP address among {routes!r}: not a manager owned by a Ray actor")
        address: Address = (str(found_tcp[0]), int(found_tcp[1]))
        entry = internal_kv._internal_kv_get(_kv_key(address), namespace=_KV_NAMESPACE)
        if entry is None:
            raise BrokenManagerError(
                f"no reflectmgr manager at {address!r} in this Ray cluster: it was shut down, its actor "
                "died, or this process is not connected to the cluster that runs it"
            )
        authkey, local, node_ip, idle_close, ssl_context = pickle.loads(entry)
        here = local is not None and node_ip == _node_ip() and _socket_exists(local)
        if not here and ssl_context is not None:
            with registry.lock:
                registry.tls[registry.key(address)] = ssl_context
        client = Client(local if here else address, authkey, public_address=address)
        client.key_source = self
        client.idle_timeout = idle_close
        with registry.lock:
            registry.clients.setdefault(registry.key(address), client)
        return client

    def __reduce__(self) -> Any:
        return (RayKeys, ())


def _node_ip() -> str:
    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


def _socket_exists(address: Address) -> bool:
    if not isinstance(address, str):
        return False
    return os.path.exists(socket_path(address) if is_shm(address) else address)


class Manager(Factories):
    """A manager owned by a Ray actor; the factories, ``root`` and ``stats()`` of
    :class:`reflectmgr.Manager`.

    ``name``, ``namespace``: make the actor a named one, which :func:`connect` finds from other
    drivers. ``idle_close``: seconds after which a worker's unused connection closes (see the
    module). ``local=False``: no unix socket; every process connects over TCP. ``ssl_context``,
    ``client_ssl_context``: TLS on the TCP listener, made with :func:`reflectmgr.tls.server_context`
    and :func:`reflectmgr.tls.client_context` (they travel as file names: the files must be on
    every node); processes on the owner's node use the unix socket, which needs no TLS.
    ``timeout``, ``max_frame``: as for :class:`reflectmgr.Manager`. Other keywords are Ray actor
    options (``num_cpus`` is 0 unless given; ``lifetime``, ``scheduling_strategy``,
    ``resources``, ...). Ray is initialized if it is not yet.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        namespace: str | None = None,
        idle_close: float = IDLE_CLOSE,
        local: bool = True,
        ssl_context: Any = None,
        client_ssl_context: Any = None,
        timeout: float | None = None,
        max_frame: int = MAX_FRAME,
        **actor_options: Any,
    ) -> None:
        for context in (ssl_context, client_ssl_context):
            if context is not None and not isinstance(context, TLSContext):
                raise TypeError(
                    "the Ray owner and its workers make their TLS contexts again from files: use "
                    "reflectmgr.tls.server_context(...) and reflectmgr.tls.client_context(...)"
                )
        if (ssl_context is None) != (client_ssl_context is None):
            raise ValueError("TLS needs both: ssl_context for the owner and client_ssl_context for its clients")
        self._options = {"num_cpus": 0, **actor_options}
        if name is not None:
            self._options["name"] = name
        if namespace is not None:
            self._options["namespace"] = namespace
        self.idle_close = idle_close
        self._owner_args = (max_frame, idle_close, local, ssl_context, client_ssl_context)
        self.timeout = timeout
        self.max_frame = max_frame
        self.actor: Any = None
        self.address: Address | None = None
        self.pid: int | None = None
        self._local: Address | None = None  # the owner's unix socket, on its node
        self._node_ip: str | None = None
        self._client: Client | None = None
        self._stopped = False

    @property
    def client(self) -> Client:
        """The connection every proxy of this process uses; the first use starts the manager
        (``m = reflectmgr.ray.Manager(); m.dict()`` works, as with :class:`reflectmgr.Manager`)."""
        if self._client is None:
            if self._stopped:
                raise ManagerClosedError("this manager was shut down")
            self.start()
        assert self._client is not None
        return self._client

    def start(self) -> None:
        if self.actor is not None or self._stopped:
            raise ManagerClosedError("this manager was already started")
        owner = ray.remote(_Owner).options(**self._options)
        self.actor = owner.remote(*self._owner_args)
        try:
            info = ray.get(self.actor.info.remote(), timeout=START_TIMEOUT)
            self.address, self.pid = info["address"], info["pid"]
            self._local, self._node_ip = info["local"], info["node_ip"]
            self._client = _own_client(self.address, self.timeout)
        except BaseException:
            ray.kill(self.actor)
            self.actor = None
            raise

    def shutdown(self) -> None:
        """Stop the owner and kill its actor (idempotent): its objects are gone, every proxy
        raises :class:`~reflectmgr.ManagerClosedError` in this process and
        :class:`~reflectmgr.BrokenManagerError` in others."""
        if self.actor is None:
            return
        actor, self.actor, self._stopped = self.actor, None, True
        client, self._client = self._client, None
        if client is not None:
            client.close()
        try:
            ray.get(actor.shutdown.remote(), timeout=SHUTDOWN_TIMEOUT)
        except Exception:
            pass
        ray.kill(actor)
        if self._local is not None and self._node_ip == _node_ip():
            # An actor that died (or was killed) could not remove its unix socket's folder.
            remove_socket_dir(self._local)

    def __enter__(self) -> Manager:
        if self.actor is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __reduce__(self) -> Any:
        # Sent to a task, a manager becomes a connection to it there (it never owns it).
        return (_attach, (self.address,))

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.actor is not None else "stopped"
        return f"<reflectmgr.ray.Manager {self.address!r} {state}>"


def _own_client(address: Address, timeout: float | None) -> Client:
    """The client of the process that started the manager: never idle-closed."""
    client = RayKeys().client((address,))
    client.idle_timeout = None
    if timeout is not None:
        client.timeout = timeout
    return client


def _attach(address: Address) -> Connection:
    """An unpickled ray Manager: a connection nobody closes (like an unpickled proxy's)."""
    return Connection(RayKeys().client((address,)))


def connect(name: str, namespace: str | None = None, *, timeout: float | None = None) -> Connection:
    """A connection to the manager started with ``reflectmgr.ray.Manager(name=name,
    namespace=namespace)``, from any driver or worker of the cluster while it lives. Raises
    :class:`~reflectmgr.BrokenManagerError` if there is no such manager."""
    try:
        actor = ray.get_actor(name, namespace=namespace)
    except ValueError as exc:
        raise BrokenManagerError(f"no reflectmgr manager named {name!r} in namespace {namespace!r}") from exc
    info: Any = ray.get(actor.info.remote(), timeout=START_TIMEOUT)
    address = info["address"]
    shared = registry.lookup(address)
    client = shared if shared is not None else RayKeys().client((address,))
    if shared is None:
        client.implicit = False  # this connection's own: its close() closes it
    if timeout is not None:
        client.timeout = timeout
    return Connection(client)
