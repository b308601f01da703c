"""``Manager``: start the manager process, talk to it, shut it down; ``connect`` to a running one.

    Manager.start()  --launch.py (a fresh interpreter)-->  process.serve()   reports its address
         |                                                          |
    Client (pool of channels) <------------- authenticated sockets -+
         |
    Manager.shutdown(): SHUTDOWN op -> join (shutdown_timeout) -> terminate -> kill, children too

The process that starts a manager owns it: the manager exits when that process dies (watchdog),
and a forked child that inherits the ``Manager`` object never shuts it down.
"""

from __future__ import annotations

import _thread
import array
import builtins
import importlib
import os
import queue
import shutil
import ssl
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import cloudpickle

from .._owner.queues import Queue as _Queue
from .._transport.inproc import is_inproc
from .._transport.shm import is_shm, socket_path
from .._transport.sockets import DEFAULT_TRANSPORT, SOCKET_DIR_PREFIX, TRANSPORTS, Address, with_transport
from .._wire.framing import MAX_FRAME
from .._wire.opcodes import Op
from ..errors import BrokenManagerError, ManagerClosedError, ManagerTimeoutError, ReflectmgrError
from ..tls import travels
from . import registry
from .client import Client, default_authkey, get_client
from .launch import launch
from .namespace import Namespace, identity
from .spawning import main_file_hidden_if_unreadable
from .stats import Stats

if TYPE_CHECKING:
    import multiprocessing.pool
    from concurrent.futures import Executor

T = TypeVar("T")

# Executor kinds -> "module:class". The pools layer sits above this one, so the public package
# (reflectmgr/__init__.py) fills this in; nothing here imports upward.
EXECUTORS: dict[str, str] = {}

# How long a new manager has to bind its listener and report back.
START_TIMEOUT = 60.0
# How long shutdown() waits for the manager to answer SHUTDOWN, then to exit by itself, before
# terminating it.
SHUTDOWN_TIMEOUT = 5.0
# After SIGTERM, how long before SIGKILL.
TERMINATE_GRACE = 2.0


class Factories:
    """What a connected user can do: shared objects, the root dict, stats.

    The factories are typed as the objects they build (``new(Order) -> Order``, ``dict() ->
    dict``, ``Queue() -> queue.Queue``): the proxy behaves as the object, so a type checker sees
    its methods. At run time it is a proxy (``reflectmgr.is_proxy(p)``), not an instance of the
    type; tests/static_types/check_factories.py keeps these types honest.
    """

    _client: Client | None

    @property
    def client(self) -> Client:
        if self._client is None:
            raise ManagerClosedError("this manager is not started (use `with Manager() as m:` or m.start())")
        return self._client

    def new(self, factory: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Build ``factory(*args, **kwargs)`` inside the manager; return a proxy to it."""
        result: T = self.client.call(Op.NEW, 0, factory, args, kwargs)
        return result

    def share(self, obj: T) -> T:
        """Copy ``obj`` into the manager (by value) and return a proxy to the copy."""
        result: T = self.client.call(Op.NEW, 0, identity, (obj,), {})
        return result

    def dict(self, *args: Any, **kwargs: Any) -> builtins.dict[Any, Any]:
        return self.new(builtins.dict, *args, **kwargs)

    def list(self, sequence: Iterable[Any] = (), /) -> builtins.list[Any]:
        return self.new(builtins.list, sequence)

    def Namespace(self, **kwargs: Any) -> Namespace:  # noqa: N802 - the stdlib factory's name
        return self.new(Namespace, **kwargs)

    # -- multiprocessing.managers.SyncManager's factories, same signatures ---------------------
    # Each builds the stdlib's own object in the manager; the proxy reflects all of it.
    def Lock(self, *, robust: bool = False) -> threading.Lock:  # noqa: N802
        """A ``threading.Lock`` in the manager; ``robust=True``: released when its owner dies, the
        next ``acquire()`` raising :class:`LockOwnerDied` (see _owner/robust.py)."""
        if robust:
            from .._owner.robust import RobustLock

            return self.new(RobustLock)  # type: ignore[return-value]  # a Lock's API, and more
        return self.new(threading.Lock)

    def RLock(self, *, robust: bool = False) -> _thread.RLock:  # noqa: N802
        """A ``threading.RLock`` in the manager; ``robust=True`` as for :meth:`Lock`."""
        if robust:
            from .._owner.robust import RobustLock

            return self.new(RobustLock, True)  # type: ignore[return-value]  # an RLock's API, and more
        return self.new(threading.RLock)

    def Semaphore(self, value: int = 1) -> threading.Semaphore:  # noqa: N802
        return self.new(threading.Semaphore, value)

    def BoundedSemaphore(self, value: int = 1) -> threading.BoundedSemaphore:  # noqa: N802
        return self.new(threading.BoundedSemaphore, value)

    def Condition(self, lock: Any = None) -> threading.Condition:  # noqa: N802
        return self.new(threading.Condition, lock)

    def Event(self) -> threading.Event:  # noqa: N802
        return self.new(threading.Event)

    def Barrier(  # noqa: N802
        self, parties: int, action: Callable[[], object] | None = None, timeout: float | None = None
    ) -> threading.Barrier:
        return self.new(threading.Barrier, parties, action, timeout)

    def Queue(self, maxsize: int = 0) -> queue.Queue[Any]:  # noqa: N802
        return self.new(_Queue, maxsize)  # a queue.Queue, cheaper when nobody waits (_owner/queues.py)

    def JoinableQueue(self, maxsize: int = 0) -> queue.Queue[Any]:  # noqa: N802
        return self.new(_Queue, maxsize)  # queue.Queue has task_done() and join()

    # Any: the stdlib's Value has no type information (a ``.value`` attribute and get()/set()).
    def Value(self, typecode: Any, value: Any, lock: bool = True) -> Any:  # noqa: N802
        import multiprocessing.managers as stdlib

        return self.new(stdlib.Value, typecode, value, lock)  # type: ignore[attr-defined]

    def Array(self, typecode: str, sequence: Iterable[Any], lock: bool = True) -> array.array[Any]:  # noqa: N802
        return self.new(array.array, typecode, sequence)

    def Pool(  # noqa: N802
        self,
        processes: int | None = None,
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
    ) -> multiprocessing.pool.Pool:
        """A ``multiprocessing.pool.Pool`` living in the manager (its workers are the manager's children)."""
        from multiprocessing.pool import Pool

        return self.new(Pool, processes, initializer, initargs, maxtasksperchild, context)

    @property
    def root(self) -> builtins.dict[str, Any]:
        """A dict every client of this manager sees: publish objects there by name."""
        root: builtins.dict[str, Any] = self.client.call(Op.ROOT, 0)
        return root

    def executor(
        self,
        max_workers: int | None = None,
        *,
        kind: str = "process",
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        mp_context: Any = None,
    ) -> Executor:
        """A ``concurrent.futures.Executor`` whose workers are connected to this manager.

        ``kind="process"``: a ProcessPoolExecutor (spawn by default); tasks and arguments travel
        with cloudpickle, and proxies among them arrive as working proxies without a round trip.
        """
        target = EXECUTORS.get(kind)
        if target is None:
            raise ValueError(f"unknown executor kind {kind!r}; choose one of {sorted(EXECUTORS)}")
        module, _, name = target.partition(":")
        factory = getattr(importlib.import_module(module), name)
        executor: Executor = factory(
            self.client,
            max_workers,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
            mp_context=mp_context,
        )
        return executor

    def _number_of_objects(self) -> int:
        """multiprocessing's: how many objects clients hold references to (CPython's test harness,
        and code modelled on it, checks it is 0 once every proxy is gone)."""
        return self.stats().objects

    def _debug_info(self) -> str:
        """multiprocessing's: one entry per held object, its id, references and ``str``."""
        self.client.flush()
        rows = self.client.call(Op.DEBUG_INFO, 0)
        return "\n".join(f"  {oid}:       refcount={count}\n    {text}" for oid, count, text in rows)

    def stats(self) -> Stats:
        """Objects referenced by clients, connected clients, manager memory (see :class:`Stats`)."""
        self.client.flush()
        stats: Stats = self.client.call(Op.STATS, 0)
        return stats


class Manager(Factories):
    """A manager process that owns shared objects; a drop-in for ``multiprocessing.Manager()``.

    ``address``: ``None`` for a private unix socket, ``(host, port)`` to listen on TCP (port 0
    picks a free one; ``address`` then reports it). ``authkey`` defaults to the one that
    ``multiprocessing`` children inherit. ``transport``: ``"shm"`` (shared-memory rings behind a
    unix socket; the default where the platform can pass descriptors), ``"pipe"`` (the unix socket
    itself) or ``"tcp"`` (the default for a ``(host, port)`` address).
    ``in_process=True`` keeps the owner in this process (threads of the main interpreter): its
    subinterpreters reach it over in-process rings (``inproc_address``), other processes over
    ``address``; there is no manager process.
    ``ssl_context``: TLS for a TCP manager (see :mod:`reflectmgr.tls`); the manager then also
    listens on a private unix socket, which this process and the processes it starts use.
    ``timeout``: how long a call waits for the manager's answer before it raises
    :class:`~reflectmgr.ManagerTimeoutError` (default: no limit, since ``Queue.get()`` may rightly
    wait). ``max_frame``: the largest pickled message or out-of-band buffer either side accepts
    (2 GiB by default; a larger one drops the connection). ``shutdown_timeout`` bounds
    ``shutdown()`` whatever the manager does: it waits that long for an answer and for the exit,
    then terminates the manager, then kills it. ``ctx``: how the manager process starts, a start
    method's name (``multiprocess``'s context of that name) or a context of ``multiprocess`` or
    ``multiprocessing``; by default (or ``"spawn"``) a fresh interpreter that, unlike a spawned
    child, never runs the main script (see _manager/launch.py).
    """

    def __init__(
        self,
        address: Address | None = None,
        authkey: bytes | None = None,
        *,
        transport: str | None = None,
        ctx: Any = None,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
        in_process: bool = False,
        timeout: float | None = None,
        max_frame: int = MAX_FRAME,
        ssl_context: Any = None,
        serializer: str = "pickle",
        allowed: Any = (),
        allow_callbacks: bool = False,
    ) -> None:
        if serializer not in ("pickle", "restricted"):
            raise ValueError(f"unknown serializer {serializer!r}; choose 'pickle' or 'restricted'")
        if serializer == "pickle" and (allowed or allow_callbacks):
            raise ValueError('allowed and allow_callbacks are for serializer="restricted"')
        for obj in allowed:
            if not callable(obj) or not hasattr(obj, "__qualname__"):
                raise TypeError(f"allowed takes types and functions, not {obj!r}")
        if transport is None:
            transport = "tcp" if isinstance(address, tuple) else DEFAULT_TRANSPORT
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; choose one of {TRANSPORTS}")
        if transport == "shm" and isinstance(address, tuple):
            raise ValueError("the shm transport is for one host: give it a unix path (or None), or use tcp")
        if ssl_context is not None and transport != "tcp":
            raise ValueError("TLS is for TCP managers: give ssl_context with a (host, port) address")
        self.transport = transport
        self._ssl_context = ssl_context
        self.serializer = serializer
        # Stops a restricted manager: only this process knows it (it travels in the start arguments).
        self._owner_secret = os.urandom(32)
        self._restricted = (
            cloudpickle.dumps((tuple(allowed), allow_callbacks, self._owner_secret))
            if serializer == "restricted"
            else None
        )
        self._requested = address
        self._authkey = bytes(authkey) if authkey is not None else default_authkey()
        self._ctx = ctx
        self._setup: bytes | None = None  # registry and initializer for the manager process
        self.shutdown_timeout = shutdown_timeout
        self.timeout = timeout
        self.max_frame = max_frame
        self.in_process = in_process
        self.inproc_address: str | None = None
        self._server: Any = None
        self._client = None
        self._process: Any = None
        self._owner_pid = os.getpid()
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.address: Address | None = None

    @property
    def authkey(self) -> bytes:
        return self._authkey

    @property
    def client(self) -> Client:
        """The connection every proxy uses; the first use of a manager never started starts it
        (so ``m = Manager(); m.dict()`` works as with multiprocessing.Manager())."""
        if self._client is None:
            if self._finalizer is not None:
                raise ManagerClosedError("this manager was shut down")
            self.start()
        assert self._client is not None
        return self._client

    def start(self) -> None:
        if self._process is not None or self._server is not None:
            raise ReflectmgrError("this manager was already started")
        if self.in_process:
            self._start_in_process()
            return
        arguments = {
            "transport": self.transport,
            "address": self._requested,
            "authkey": self._authkey,
            "owner_pid": os.getpid(),
            "setup": self._setup,
            "max_frame": self.max_frame,
            "ssl_context": self._ssl_context,
            "restricted": self._restricted,
        }
        ctx = self._context()
        if not travels(self._ssl_context, ctx.get_start_method() if ctx is not None else "spawn"):
            raise TypeError(
                "an ssl.SSLContext cannot be sent to the manager process: make it with "
                "reflectmgr.tls.server_context(...), pass a function that returns it, or use in_process=True"
            )
        if ctx is None:
            process, reader = launch(arguments, START_TIMEOUT)  # a fresh interpreter, or a fork of the template
        else:
            process, reader = _start_with_context(ctx, arguments)
        try:
            if not reader.poll(START_TIMEOUT):
                raise BrokenManagerError(f"the manager process did not report within {START_TIMEOUT} s")
            status, detail = reader.recv()
        except (EOFError, OSError) as exc:
            _stop_process(process, 0)
            raise BrokenManagerError(f"the manager process died while starting (exit code {process.exitcode})") from exc
        except BaseException:
            _stop_process(process, 0)
            raise
        finally:
            reader.close()
        if status != "ok":
            _stop_process(process, 0)
            raise BrokenManagerError(f"the manager could not listen: {detail}")
        self._process = process
        self.address = detail[0]
        try:
            # With TLS, this process uses the manager's private unix socket (detail[-1]).
            self._client = Client(
                detail[-1], self._authkey, public_address=detail[0], timeout=self.timeout, max_frame=self.max_frame
            )
        except BaseException:
            _stop_process(process, 0)
            raise
        self._finalizer = weakref.finalize(
            self, _shutdown, self._client, process, self._owner_pid, self.shutdown_timeout, self._owner_secret
        )

    def _context(self) -> Any:
        """The process context ``ctx`` names, or None for the default (launch.py's)."""
        ctx = self._ctx
        if (ctx is None or ctx == "spawn") and not getattr(sys, "frozen", False):
            return None  # a frozen program has no python to run -c with: multiprocess's spawn does it
        if ctx is None:
            ctx = "spawn"
        if isinstance(ctx, str):
            # multiprocess's contexts, not the stdlib's: the stdlib refuses to start a process from
            # a daemonic one (a multiprocessing.Pool worker), and the manager is no such child (it
            # watches its owner and exits with it).
            import multiprocess

            return multiprocess.get_context(ctx)
        return ctx

    def _start_in_process(self) -> None:
        from .process import serve_in_process

        server, inproc, thread = serve_in_process(
            self.transport, self._requested, self._authkey, self.max_frame, self._ssl_context, self._restricted
        )
        self._server = server
        self.address = server.address
        self.inproc_address = inproc
        self._client = Client(
            inproc, self._authkey, public_address=server.address, timeout=self.timeout, max_frame=self.max_frame
        )
        self._finalizer = weakref.finalize(
            self, _stop_in_process, self._client, server, thread, self._owner_pid, self.shutdown_timeout
        )

    @property
    def pid(self) -> int | None:
        if self._server is not None:
            return os.getpid()
        return self._process.pid if self._process is not None else None

    def shutdown(self) -> None:
        """Stop the manager and its children; every proxy raises ManagerClosedError afterwards.

        Interrupted (Ctrl-C in the middle of it), it raises, and the next ``shutdown()`` (or
        the program's exit) finishes the job: a finalizer that ran is spent, so it is armed again
        with what it was given (the steps are safe to run twice)."""
        finalizer = self._finalizer
        if finalizer is None:
            return
        armed = finalizer.peek()
        try:
            finalizer()
        except BaseException:
            if armed is not None:
                _, fn, args, kwargs = armed
                self._finalizer = weakref.finalize(self, fn, *args, **kwargs)
            raise
        self._client = None

    def join(self, timeout: float | None = None) -> None:
        if self._process is not None:
            self._process.join(timeout)

    def __enter__(self) -> Manager:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __reduce__(self) -> Any:
        # A Manager pickled elsewhere becomes a connection to the same manager (it never owns it).
        return (_connection_of, (self.address,))

    def __repr__(self) -> str:
        state = "stopped" if self._finalizer is None or not self._finalizer.alive else f"pid {self.pid}"
        return f"<reflectmgr.Manager {self.transport} {self.address!r} {state}>"


def _shutdown(client: Client, process: Any, owner_pid: int, timeout: float, secret: bytes = b"") -> None:
    """Stop the manager, bounded whatever it does: ask (``timeout`` for an answer), wait for its
    exit (``timeout`` more, if it answered), SIGTERM, SIGKILL; then its children, and the socket
    directory a killed manager could not remove."""
    if os.getpid() != owner_pid:
        return  # a forked child inherited the Manager object; the manager is not its to stop
    import psutil

    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    grace = timeout
    client.stopping = True
    try:
        client.call_within(timeout, Op.SHUTDOWN, 0, secret)
    except ManagerTimeoutError:
        grace = 0  # it does not answer (stopped, or stuck): no point waiting for it to exit
    except ReflectmgrError:
        pass  # it closed the connection while stopping, or was already dead
    client.close()
    _stop_process(process, grace)
    _, alive = psutil.wait_procs([c for c in children if c.is_running()], timeout=timeout)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    remove_socket_dir(client.address)


def remove_socket_dir(address: Address) -> None:
    """A manager that was killed could not remove its private socket directory: do it for it."""
    if not isinstance(address, str) or is_inproc(address):
        return
    folder = os.path.dirname(socket_path(address) if is_shm(address) else address)
    if os.path.basename(folder).startswith(SOCKET_DIR_PREFIX) and os.path.isdir(folder):
        shutil.rmtree(folder, ignore_errors=True)


def _stop_in_process(client: Client, server: Any, thread: Any, owner_pid: int, timeout: float) -> None:
    if os.getpid() != owner_pid:
        return  # a forked child: the listener and its threads are the parent's
    client.close()
    server.stop()
    thread.join(timeout)


def _start_with_context(ctx: Any, arguments: dict[str, Any]) -> tuple[Any, Any]:
    """Start the manager with a context of multiprocess or multiprocessing; returns the process
    and the pipe it reports on."""
    from .process import serve  # loaded on start: a client-only process never needs it

    reader, writer = ctx.Pipe(duplex=False)
    process = ctx.Process(target=serve, kwargs=dict(arguments, report=writer), name="reflectmgr-manager")
    with main_file_hidden_if_unreadable():
        process.start()
    writer.close()
    return process, reader


def _stop_process(process: Any, grace: float) -> None:
    process.join(grace)
    if process.is_alive():
        process.terminate()
        process.join(TERMINATE_GRACE)
    if process.is_alive():
        process.kill()
        process.join(TERMINATE_GRACE)


class Connection(Factories):
    """A connection to a manager that someone else started (see :func:`connect`); the caller owns it.

    Connections of one process to one manager share its session (so proxies keep their identity)
    and count their users: ``close()`` closes this connection only. The session ends when the last
    connection is closed and nothing else of the process uses it (a ``Manager`` it started, proxies
    it unpickled); its proxies then raise :class:`~reflectmgr.ManagerClosedError`.
    """

    def __init__(self, client: Client) -> None:
        client.handles += 1
        self._client = client
        self._shared = client
        self.address = client.address

    @property
    def client(self) -> Client:
        if self._client is None:
            raise ManagerClosedError(f"this connection to the manager at {self.address!r} was closed")
        return self._client

    def close(self) -> None:
        """Close this connection (idempotent); other connections of this process go on."""
        if self._client is None:
            return
        self._client = None
        client = self._shared
        client.handles -= 1
        if client.handles <= 0 and not client.implicit:
            client.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<reflectmgr.Connection {self.address!r}>"


def _connection_of(address: Address) -> Connection:
    """An unpickled Manager: a connection nobody closes (like an unpickled proxy's)."""
    return Connection(get_client(address))


def connect(
    address: Address,
    authkey: bytes | None = None,
    *,
    transport: str | None = None,
    timeout: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Connection:
    """Attach to a running manager at ``address`` (as its ``address`` reports it: ``"shm:<path>"``,
    a unix path, or ``(host, port)`` for TCP). ``transport="shm"`` asks for shared memory on a
    unix path (any manager on this host serves it); ``"pipe"`` keeps to the socket. ``timeout``:
    how long each call waits for an answer (see :class:`Manager`); it applies to this process's
    session with that manager.

    The connection is the caller's: closing it closes nothing else (see :class:`Connection`).
    ``ssl_context``: TLS to a TCP manager started with one (see :mod:`reflectmgr.tls`); every
    connection of this process to that address uses it from then on, proxies unpickled here too.

    Raises :class:`BrokenManagerError` if nothing answers there and
    :class:`~reflectmgr.AuthenticationError` if the authkey does not match, or TLS fails (a
    certificate not trusted, TLS on one side only).
    """
    if transport is not None:
        address = with_transport(address, transport)
    if ssl_context is not None:
        if not isinstance(address, (tuple, list)):
            raise ValueError("TLS is for TCP: give ssl_context with a (host, port) address")
        with registry.lock:
            registry.tls[registry.key(address)] = ssl_context
    client = get_client(address, authkey, implicit=False)
    if timeout is not None:
        client.timeout = timeout
    return Connection(client)
