"""The client side of a manager: the connections that every proxy calls through.

    proxy.op() --> Client.call --> this thread's own channel (a spare while it is busy)
                                   channel.call (send, wait; serves callbacks meanwhile)
    flusher thread: every RELEASE_INTERVAL, if proxies died and no message carried their
                    releases, send them on their own

A client process is one session on the manager, however many connections its threads use. One
connection, the anchor, lives as long as the client, so the session (and the references it
holds) lasts as long as the client whatever threads come and go. After ``fork`` the child
closes the inherited sockets, opens its own session and adopts the references of the proxies it
inherited.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import weakref
from collections import deque
from typing import Any

import cloudpickle

from .._owner.channel import Channel
from .._proxy.endpoint import Endpoint
from .._proxy.proxy import Proxy
from .._transport.auth import client_handshake
from .._transport.inproc import is_inproc
from .._transport.shm import is_shm, upgrade_client
from .._transport.sockets import Address, connect
from .._wire import codec
from .._wire.framing import MAX_FRAME, MAX_PREAUTH
from .._wire.opcodes import Msg, Op
from ..errors import (
    BrokenManagerError,
    ManagerClosedError,
    ManagerTimeoutError,
    ProtocolError,
    ReflectmgrError,
    ReflectmgrPicklingError,
)

# How long to wait for a manager to accept a connection and finish the handshake.
CONNECT_TIMEOUT = 10.0
# Releases of dead proxies ride on the next message; when none comes, they go alone after this.
# Short enough that an idle client frees the manager's objects promptly, long enough to batch.
RELEASE_INTERVAL = 0.2

_clients: dict[Any, Client] = {}
# Bumped in every forked child: a client whose generation differs was inherited through fork.
_fork_generation = [0]
_clients_lock = threading.Lock()


def default_authkey() -> bytes:
    """The authkey every ``multiprocessing`` child inherits from its parent."""
    return bytes(multiprocessing.current_process().authkey)


def _key(address: Address) -> Any:
    return tuple(address) if isinstance(address, (tuple, list)) else address


def get_client(address: Address, authkey: bytes | None = None, *, implicit: bool = True) -> Client:
    """The client of this process for ``address``, connecting on first use.

    ``implicit``: the caller is not a :class:`Connection` that will close it (an unpickled proxy,
    an executor worker), so no connection's ``close()`` may close this client.
    """
    key = _key(address)
    with _clients_lock:
        client = _clients.get(key)
        if client is not None and not client.closed and (authkey is None or bytes(authkey) == client.authkey):
            client.implicit |= implicit
            return client
    client = Client(address, authkey if authkey is not None else default_authkey())
    client.implicit = implicit
    with _clients_lock:
        _clients[key] = client
    return client


class Client(Endpoint):
    """``address``: where this client connects. ``public_address``: where *other processes* reach
    the same manager (differs for an in-process owner, whose own interpreters use pipes)."""

    def __init__(
        self,
        address: Address,
        authkey: bytes,
        public_address: Address | None = None,
        timeout: float | None = None,
        max_frame: int = MAX_FRAME,
    ) -> None:
        super().__init__(f"manager at {address!r}")
        # How long a call waits for the manager's answer (None: as long as the call takes, since a
        # Queue.get() or a Lock.acquire() may rightly wait for ever); ManagerTimeoutError past it.
        self.timeout = timeout
        self.max_frame = max_frame
        # Connections (connect()) that use this client; the last one's close() closes it, unless
        # something else of this process relies on it too (``implicit``: a Manager, unpickled
        # proxies, an executor worker), whose proxies a library's connect()+close() must not break.
        self.handles = 0
        self.implicit = True
        self._fork_pin: tuple[bytes, list[int]] | None = None
        self.address = address
        self.public_address = public_address if public_address is not None else address
        # Where a proxy pickled here can be rebuilt: this process's route first, then everyone's.
        self.routes: tuple[Address, ...] = tuple(dict.fromkeys([address, self.public_address]))
        self.authkey = bytes(authkey)
        self.closed = False
        self._pool: deque[Channel] = deque()
        self._generation = _fork_generation[0]
        self._token = os.urandom(16)
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        self._fork_lock = threading.Lock()
        self._local = threading.local()
        # Every transport opened and not yet closed: close() and fork handling go through it, and
        # a client dropped without close() still closes them (its channels point back at it, so it
        # dies as cyclic garbage, where finalizers run in no order).
        self._transports: list[Any] = []
        weakref.finalize(self, _close_transports, self._transports)
        self.manager_pid = 0
        # The anchor: opened first, used only by the release flusher, closed only by close(). The
        # session (and every reference it holds) lives while one connection does, whatever
        # threads come and go with their own connections.
        self._anchor = self._open()
        self._start_flusher()
        with _clients_lock:
            _clients.setdefault(_key(address), self)

    # -- connections -------------------------------------------------------------------------
    def _open(self) -> Channel:
        bound = CONNECT_TIMEOUT if self.timeout is None else min(CONNECT_TIMEOUT, self.timeout)
        try:
            transport = connect(self.address, bound)
        except OSError as exc:
            raise BrokenManagerError(
                f"cannot connect to the manager at {self.address!r}: {exc}. "
                "Is it running, and is this the address it reported?"
            ) from exc
        try:
            client_handshake(transport, self.authkey)
            if is_shm(self.address):
                transport = upgrade_client(transport)  # type: ignore[arg-type]
                transport.set_timeout(bound)
            transport.send(0, codec.encode((Msg.REQUEST, (), Op.HELLO, 0, self._token, os.getpid(), None))[1])
            _, payload = transport.recv(MAX_PREAUTH)
            reply = codec.decode(0, payload)
            self.manager_pid = reply[2]
            transport.set_timeout(self.timeout)
            transport.authenticated(self.max_frame)
        except TimeoutError as exc:
            transport.dispose()
            raise ManagerTimeoutError(
                f"the manager at {self.address!r} did not answer the handshake within {bound} s: "
                "is it stopped or overloaded?"
            ) from exc
        except (OSError, EOFError) as exc:
            transport.dispose()
            raise BrokenManagerError(
                f"the manager at {self.address!r} closed the connection during the handshake"
            ) from exc
        except BaseException:
            transport.dispose()
            raise
        channel = Channel(transport, self)
        self._transports[:] = [t for t in self._transports if not t.closed]
        self._transports.append(transport)
        return channel

    def call(self, op: int, oid: int, a: Any = None, b: Any = None, c: Any = None) -> Any:
        if self._generation != _fork_generation[0]:
            self._after_fork()
        if self.closed:
            raise ManagerClosedError(f"the connection to the manager at {self.address!r} was closed")
        mine = getattr(self._local, "mine", None)
        if mine is not None and not mine.channel.busy and not mine.channel.transport.closed:
            channel, spare = mine.channel, False  # the common case, inline
        else:
            channel, spare = self._checkout()
        return self._call_on(channel, spare, op, oid, a, b, c)

    def call_within(self, timeout: float | None, op: int, oid: int, a: Any = None, b: Any = None, c: Any = None) -> Any:
        """:meth:`call` that waits at most ``timeout`` seconds for each answer of the manager;
        raises :class:`ManagerTimeoutError` after that (and drops the connection it waited on)."""
        if self._generation != _fork_generation[0]:
            self._after_fork()
        if self.closed:
            raise ManagerClosedError(f"the connection to the manager at {self.address!r} was closed")
        channel, spare = self._checkout()
        channel.transport.set_timeout(timeout)
        try:
            return self._call_on(channel, spare, op, oid, a, b, c)
        finally:
            if not channel.transport.closed:
                channel.transport.set_timeout(self.timeout)

    def _call_on(self, channel: Channel, spare: bool, op: int, oid: int, a: Any, b: Any, c: Any) -> Any:
        try:
            result = channel.call(op, oid, a, b, c)
        except TimeoutError as exc:
            channel.transport.close()  # out of step: a late answer must not reach the next call
            raise ManagerTimeoutError(
                f"the manager at {self.address!r} (pid {self.manager_pid}) did not answer within the timeout; "
                "the call may still run there"
            ) from exc
        except (OSError, EOFError) as exc:
            channel.transport.close()
            if self.closed:
                raise ManagerClosedError("the manager was shut down") from exc
            raise BrokenManagerError(
                f"lost the connection to the manager at {self.address!r} (pid {self.manager_pid}): "
                "it exited or was killed"
            ) from exc
        except ReflectmgrPicklingError as exc:
            self._checkin(channel, spare)
            if op in (Op.CALL, Op.NEW):
                raise codec.diagnose_call(b, c, exc.__cause__ or exc) from None
            if op == Op.CALLMETHOD:
                raise codec.diagnose_call(b, c or {}, exc.__cause__ or exc) from None
            raise
        except ProtocolError:
            channel.transport.close()
            raise
        except BaseException:
            self._checkin(channel, spare)
            raise
        self._checkin(channel, spare)
        return result

    def _checkout(self) -> tuple[Channel, bool]:
        """This thread's own channel, so a thread always reaches the same manager thread (as
        RLock and Condition ownership require, like multiprocessing's thread-local connections);
        a spare one while it is busy (a call made from a callback that this thread is serving).
        Returns ``(channel, is_spare)``."""
        mine = getattr(self._local, "mine", None)
        if mine is not None and not mine.channel.transport.closed:
            if not mine.channel.busy:
                return mine.channel, False
            try:
                return self._pool.pop(), True
            except IndexError:
                return self._open(), True
        try:
            channel = self._pool.pop()
        except IndexError:
            channel = self._open()
        self._local.mine = _ThreadChannel(channel)
        return channel, False

    def _checkin(self, channel: Channel, spare: bool) -> None:
        if channel.busy or channel.transport.closed or self.closed:
            channel.transport.close()  # interrupted mid-call: out of step with the manager
        elif spare:
            self._pool.append(channel)

    # -- pickling a proxy for another process ------------------------------------------------
    def transfer(self, proxy: Proxy) -> tuple[Any, ...]:
        keep = getattr(_borrowing, "keep", None)
        if keep is not None:
            keep.append(proxy)  # the caller keeps it (so the object) alive until the task is done
            return (_borrowed, (self.routes, proxy._rm_oid, proxy._rm_desc))
        token = self.call(Op.PIN, 0, [proxy._rm_oid])
        # Like multiprocessing: the authkey travels inside the pickle only to a child being spawned
        # (through its private pipe); any other receiver uses the authkey it inherited.
        authkey = self.authkey if _spawning() else None
        return (_rebuild, (self.routes, authkey, proxy._rm_oid, token))

    def pickle_task(self, task: Any, keep: list[Any]) -> bytes:
        """Cloudpickle ``task`` for an executor worker of this manager; its proxies are *borrowed*.

        A borrowed proxy costs no round trip: the worker counts the reference for itself with its
        next message, and ``keep`` (held by the caller until the task is done) keeps the objects
        alive meanwhile.
        """
        _borrowing.keep = keep
        try:
            fn = task[0]
            if getattr(fn, "__module__", None) != "__main__":
                # Importable functions pickle by name: plain pickle is several times cheaper.
                # (__main__ ones go by value, so notebooks and scripts without spawn work too.)
                try:
                    return pickle.dumps(task, protocol=5)
                except Exception:
                    keep.clear()
            return bytes(cloudpickle.dumps(task, protocol=5))
        except Exception as exc:
            raise codec.diagnose_call(task[1], task[2], exc) from exc
        finally:
            _borrowing.keep = None

    def borrow(self, oid: int, desc: Any) -> Any:
        """Unpickling a borrowed proxy in a worker: the proxy now, the reference with the next message."""
        proxy = self.load_ref((oid, desc))
        self.cache.acquire(oid)
        return proxy

    def same_owner(self, other: object) -> bool:
        return isinstance(other, Client) and _key(other.address) == _key(self.address)

    # -- releases ----------------------------------------------------------------------------
    def _start_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=self._flush_loop, name="reflectmgr-release")
            # A daemon where allowed; isolated subinterpreters forbid daemon threads, and there
            # close() stops and joins it.
            try:
                self._flusher.daemon = True
                self._flusher.start()
            except RuntimeError:
                self._flusher = threading.Thread(target=self._flush_loop, name="reflectmgr-release")
                self._flusher.start()
                # Not a daemon: stop it when this interpreter shuts down (threading runs these
                # before it joins its threads), or an interpreter never closed hangs process exit.
                threading._register_atexit(self._stop.set)  # type: ignore[attr-defined]

    def _flush_loop(self) -> None:
        anchor = self._anchor
        while not self._stop.wait(RELEASE_INTERVAL):
            if self.cache.has_releases and self._generation == _fork_generation[0]:
                try:
                    anchor.call(Op.RELEASE, 0)
                except (OSError, EOFError, ReflectmgrError):
                    return  # the manager is gone or closed; nothing left to release

    def flush(self) -> None:
        """Send pending releases now (tests and benchmarks use it to observe frees promptly)."""
        if self.cache.has_releases:
            self.call(Op.RELEASE, 0)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self.closed = True
        self._stop.set()
        flusher = self._flusher
        if flusher is not None and not flusher.daemon and flusher is not threading.current_thread():
            flusher.join()
        _close_transports(self._transports)
        self._pool.clear()
        with _clients_lock:
            if _clients.get(_key(self.address)) is self:
                del _clients[_key(self.address)]

    def _forget_parent(self) -> None:
        """In a forked child: close the parent's sockets here without disturbing the parent."""
        for transport in self._transports:
            detach = getattr(transport, "detach_after_fork", None)
            if detach is not None:
                detach()
        self._pool.clear()
        self._transports.clear()
        self._local = threading.local()  # the forking thread's channel is the parent's
        self._flusher = None
        self._stop = threading.Event()

    def _pin_for_fork(self) -> None:
        """In the parent, just before ``fork``: pin what the child inherits, so that the parent's
        own releases cannot free it before the child has adopted it (or the pin's lease ran out)."""
        self._fork_pin = None
        if self.closed or self._generation != _fork_generation[0]:
            return
        live = list(self.cache.live())
        if not live:
            return
        try:
            self._fork_pin = (self.call(Op.PIN, 0, live), live)
        except (ReflectmgrError, OSError):
            pass  # the manager is gone: the child's proxies will say so

    def _after_fork(self) -> None:
        """In a forked child: a session of its own, adopting the references it inherited."""
        with self._fork_lock:
            if self._generation == _fork_generation[0]:
                return
            self._forget_parent()
            self._token = os.urandom(16)
            self.table.release_all(self.holder)
            token = self._fork_pin[0] if self._fork_pin is not None else None
            inherited = list(self.cache.live())
            self._anchor = self._open()
            self._generation = _fork_generation[0]
            self._start_flusher()
            alive = self._anchor.call(Op.ADOPT, 0, token, inherited) if inherited or token else []
            self._fork_pin = None
            self.cache.reset(dict.fromkeys(alive, 1))


def _close_transports(transports: list[Any]) -> None:
    for transport in transports:
        transport.close()


class _ThreadChannel:
    """A thread's own channel, closed when the thread ends (its thread-local storage goes)."""

    __slots__ = ("channel",)

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def __del__(self) -> None:
        self.channel.transport.close()


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


# Object tables served by this very process, by address: a proxy unpickled inside its own
# manager is the object itself (it must not connect to itself).
local_tables: dict[Any, Any] = {}


_borrowing = threading.local()


def _route(routes: tuple[Address, ...], authkey: bytes | None) -> Any:
    """The object table (inside the manager itself) or the client to use for ``routes``."""
    for address in routes:
        table = local_tables.get(_key(address))
        if table is not None:
            return table
    for address in routes:
        with _clients_lock:
            client = _clients.get(_key(address))
        if client is not None and not client.closed:
            return client
    usable = [a for a in routes if not is_inproc(a) or a.startswith(f"inproc:{os.getpid()}:")]  # type: ignore[union-attr]
    return get_client(usable[0], authkey)


def _borrowed(routes: tuple[Address, ...], oid: int, desc: Any) -> Any:
    route = _route(routes, None)
    if isinstance(route, Client):
        return route.borrow(oid, desc)
    return route.resolve(oid)


def _rebuild(routes: tuple[Address, ...], authkey: bytes | None, oid: int, token: bytes) -> Any:
    """Unpickling a proxy in another process: connect (once per process) and claim the pin."""
    route = _route(routes, authkey)
    if isinstance(route, Client):
        return route.call(Op.CLAIM, oid, token)
    return route.claim(token, oid)


def _fork_locks() -> list[Any]:
    locks: list[Any] = []
    for client in list(_clients.values()):
        locks += [client.cache._lock, client.table.lock]
    return locks


_held_for_fork: list[Any] = []


def _before_fork() -> None:
    for client in list(_clients.values()):
        client._pin_for_fork()
    # Hold every lock a helper thread might hold at fork time, so the child inherits none locked.
    _clients_lock.acquire()
    _held_for_fork[:] = _fork_locks()
    for lock in _held_for_fork:
        lock.acquire()


def _release_fork_locks() -> None:
    for lock in reversed(_held_for_fork):
        lock.release()
    _held_for_fork.clear()
    _clients_lock.release()


def _after_fork_in_parent() -> None:
    _release_fork_locks()
    for client in list(_clients.values()):
        client._fork_pin = None  # the child claims it, or its lease runs out


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1
    _release_fork_locks()
    clients = list(_clients.values())
    for client in clients:
        client._forget_parent()
    # Adopt at once, not at the first call: the parent's pin lapses after a lease, and a child
    # that uses its proxies only later must still find their objects.
    for client in clients:
        if not client.closed:
            try:
                client._after_fork()
            except Exception:
                pass  # the manager is unreachable: the first call retries, and raises


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
