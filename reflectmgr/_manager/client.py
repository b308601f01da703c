"""The client side of a manager: the connections that every proxy calls through.

    proxy.op() --> Client.call --> this thread's own channel (a spare while it is busy)
                                   channel.call (send, wait; serves callbacks meanwhile)

A client process is one session on the manager, however many connections its threads use. One
connection, the anchor, lives as long as the client, so the session (and the references it
holds) lasts as long as the client whatever threads come and go. The rest of a client lives
next door: the release flusher (flusher.py), proxies leaving the process (transfer.py), fork
(forking.py), and the registry of this process's clients (registry.py).
"""

from __future__ import annotations

import atexit
import os
import ssl
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any

from .._proxy.calls import CallingChannel as Channel
from .._proxy.link import Link
from .._transport.auth import client_handshake
from .._transport.inproc import is_inproc
from .._transport.shm import is_shm, upgrade_client
from .._transport.sockets import Address, connect
from .._wire import codec
from .._wire.framing import MAX_FRAME, MAX_PREAUTH
from .._wire.opcodes import Msg, Op
from ..errors import (
    AuthenticationError,
    BrokenManagerError,
    ManagerClosedError,
    ManagerTimeoutError,
    ProtocolError,
    ReflectmgrPicklingError,
    RemoteError,
    RemoteTraceback,
)
from . import registry
from .flusher import RELEASE_INTERVAL, ReleaseFlusher
from .forking import ForkHandling
from .transfer import Transfers

# How long to wait for a manager to accept a connection and finish the handshake.
CONNECT_TIMEOUT = 10.0
default_authkey = registry.default_authkey
# Operations that carry a user's (args, kwargs): where the pair sits in the op's record.
_NEW = int(Op.NEW)
_CALL_ARGUMENTS = {int(Op.CALL): 0, int(Op.NEW): 1, int(Op.CALLMETHOD): 1, int(Op.CALLMETHOD_REF): 1, int(Op.CREATE): 1}


def get_client(address: Address, authkey: bytes | None = None, *, implicit: bool = True) -> Client:
    """The client of this process for ``address``, connecting on first use.

    ``implicit``: the caller is not a :class:`Connection` that will close it (an unpickled proxy,
    an executor worker), so no connection's ``close()`` may close this client.
    """
    with registry.lock:
        client = registry.clients.get(registry.key(address))
        if (
            client is not None
            and not client.closed
            and (authkey is None or bytes(authkey) == client.authkey)
            and client.ssl_context is registry.tls.get(registry.key(address))  # TLS asked for: TLS given
        ):
            client.implicit |= implicit
            client.touched = True
            return client
    client = Client(address, authkey if authkey is not None else default_authkey())
    client.implicit = implicit
    with registry.lock:
        registry.clients[registry.key(address)] = client
    return client


class Client(Transfers, ForkHandling, Link):
    """``address``: where this client connects. ``public_address``: where *other processes* reach
    the same manager (differs for an in-process owner, whose own interpreters use pipes)."""

    # A __del__ run while the interpreter exits may call a proxy after this module's globals were
    # cleared (None): a closed client raises through the class, not a global, so the caller reads
    # ManagerClosedError, not "'NoneType' object is not subscriptable".
    _Closed = ManagerClosedError

    def _closed_error(self) -> ManagerClosedError:
        if self.stopping:
            return self._Closed(f"the manager at {self.address!r} was shut down")
        return self._Closed(f"the connection to the manager at {self.address!r} was closed")

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
        # Pickled with this client's proxies instead of the key, when the receiver cannot have
        # inherited it (see registry.KeySource); None: receivers use the key they inherited.
        self.key_source: registry.KeySource | None = None
        # An implicit client (nobody's connection) with no proxy alive for this long closes, and
        # its manager drops the session: for processes that are reused for other work (Ray's
        # workers). None: never. ``touched`` is set whenever the registry hands the client out.
        self._idle_timeout: float | None = None
        self.touched = True  # a new client is about to be used: at least one look passes first
        self.claims = 0  # proxies being unpickled through this client now (under registry.lock)
        self._idle_since: float | None = None
        self.ssl_context = registry.tls.get(registry.key(address))
        self.closed = False
        # Set by Manager.shutdown() before it asks the manager to stop: a call that loses its
        # connection from then on was stopped on purpose (ManagerClosedError, not Broken).
        self.stopping = False
        self._pool: deque[Channel] = deque()
        self._generation = registry.generation[0]
        self._token = os.urandom(16)
        self._flusher: ReleaseFlusher | None = None
        # Held while the flusher thread sends releases, which flush() waits for (reentrant: a
        # callback served during that send may call flush() on the same thread).
        self._sending_releases = threading.RLock()
        self._fork_lock = threading.RLock()  # reentrant only to tell a re-entry (adopt_inherited)
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
        with registry.lock:
            registry.clients.setdefault(registry.key(address), self)

    @property
    def route_for_children(self) -> Address:
        """Where a process this one starts reaches the manager: this process's own route unless
        only this process can use it (an in-process owner's rings)."""
        return self.public_address if is_inproc(self.address) else self.address

    @property
    def tls_for_children(self) -> Any:
        """The TLS context a child needs for :attr:`route_for_children`, if it can be sent there
        (see reflectmgr.tls), else None."""
        from ..tls import TLSContext

        context = registry.tls.get(registry.key(self.route_for_children))
        return context if isinstance(context, TLSContext) else None

    # -- connections -------------------------------------------------------------------------
    def _open(self, within: float | None = None) -> Channel:
        """A new channel; connecting and the handshake wait at most CONNECT_TIMEOUT, the client's
        timeout and ``within`` seconds, whichever is least."""
        bound = min(t for t in (CONNECT_TIMEOUT, self.timeout, within) if t is not None)
        try:
            transport = connect(self.address, bound, self.ssl_context)
        except OSError as exc:
            if self.closed or self.stopping:
                raise self._closed_error() from exc
            raise BrokenManagerError(
                f"cannot connect to the manager at {self.address!r}: {exc}. "
                "Is it running, and is this the address it reported?"
            ) from exc
        try:
            client_handshake(transport, self.authkey)
            if is_shm(self.address):
                transport = upgrade_client(transport)
                transport.set_timeout(bound)
            transport.send(0, codec.encode((Msg.REQUEST, (), Op.HELLO, 0, (self._token, os.getpid())))[1])
            _, payload = transport.recv(MAX_PREAUTH)
            reply = codec.decode(0, payload)
            self.manager_pid = reply[2]
            transport.set_timeout(self.timeout)
            transport.authenticated(self.max_frame)
        except ssl.SSLError as exc:  # TLS 1.3: the manager refuses our certificate after the handshake
            transport.dispose()
            raise AuthenticationError(
                f"the manager at {self.address!r} refused this TLS connection: {exc.reason or exc} "
                "(a client certificate it does not trust, or none)"
            ) from exc
        except TimeoutError as exc:
            transport.dispose()
            raise ManagerTimeoutError(
                f"the manager at {self.address!r} did not answer the handshake within {bound} s: "
                "is it stopped or overloaded?"
            ) from exc
        except (OSError, EOFError) as exc:
            transport.dispose()
            if self.closed or self.stopping:
                raise self._closed_error() from exc
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

    def call(self, op: int, oid: int, *args: Any) -> Any:
        """Operation ``op`` on the manager's object ``oid`` with ``args`` (the op's record, see
        _wire/opcodes.py), through this thread's connection. Raises what the object raised,
        BrokenManagerError, ManagerClosedError, ManagerTimeoutError or ReflectmgrPicklingError."""
        if self.closed:  # first, and through the class: see _Closed
            raise self._closed_error()
        if self._generation != registry.generation[0]:
            self.adopt_inherited()
        mine = getattr(self._local, "mine", None)
        if mine is not None:
            channel = mine.channel
            if not channel.busy and not channel.transport.closed:
                # The common case: this thread's own channel, free. _call_on, inline.
                try:
                    result = channel.call(op, oid, args)
                except BaseException as exc:
                    self._failed(channel, False, op, args, exc)
                    raise
                if self.closed:  # _checkin: closed by another thread meanwhile
                    channel.transport.close()
                return result
        channel, spare = self._checkout()
        return self._call_on(channel, spare, op, oid, args)

    def call_within(self, timeout: float | None, op: int, oid: int, *args: Any) -> Any:
        """:meth:`call` that waits at most ``timeout`` seconds for each answer of the manager;
        raises :class:`ManagerTimeoutError` after that (and drops the connection it waited on)."""
        if self.closed:
            raise self._closed_error()
        if self._generation != registry.generation[0]:
            self.adopt_inherited()
        channel, spare = self._checkout(timeout)  # a channel opened now: the handshake, within it too
        channel.transport.set_timeout(timeout)
        try:
            return self._call_on(channel, spare, op, oid, args)
        finally:
            if not channel.transport.closed:
                channel.transport.set_timeout(self.timeout)

    def _call_on(self, channel: Channel, spare: bool, op: int, oid: int, args: tuple[Any, ...]) -> Any:
        try:
            result = channel.call(op, oid, args)
        except BaseException as exc:
            self._failed(channel, spare, op, args, exc)
            raise
        self._checkin(channel, spare)
        return result

    def _failed(self, channel: Channel, spare: bool, op: int, args: tuple[Any, ...], exc: BaseException) -> None:
        """After a call raised ``exc``: keep the channel or drop it, and raise what the caller
        should see instead, if anything (returns when that is ``exc`` itself).

        An exception the object raised in the manager (a RemoteError, or with the manager's
        traceback as its ``__cause__``) is the answer, whatever its type: a remote
        ``FileNotFoundError`` or ``TimeoutError`` says nothing about the connection, which is in
        step and goes on."""
        if isinstance(exc, RemoteError) or isinstance(exc.__cause__, RemoteTraceback):
            self._checkin(channel, spare)
        elif isinstance(exc, TimeoutError):
            channel.transport.close()  # out of step: a late answer must not reach the next call
            raise ManagerTimeoutError(
                f"the manager at {self.address!r} (pid {self.manager_pid}) did not answer within the timeout; "
                "the call may still run there"
            ) from exc
        elif isinstance(exc, (OSError, EOFError)):
            channel.transport.close()
            if self.closed or self.stopping:
                raise self._closed_error() from exc
            raise BrokenManagerError(
                f"lost the connection to the manager at {self.address!r} (pid {self.manager_pid}): "
                "it exited or was killed"
            ) from exc
        elif isinstance(exc, ReflectmgrPicklingError):
            self._checkin(channel, spare)
            where = _CALL_ARGUMENTS.get(op)
            if where is not None:  # name the argument of the user's call that did not pickle
                original = exc.__cause__ or exc
                fn = args[0] if op == _NEW else None  # (NEW's record: factory, args, kwargs)
                raise codec.diagnose_call(args[where], args[where + 1], original, fn) from original
        elif isinstance(exc, ProtocolError):
            channel.transport.close()
        else:
            self._checkin(channel, spare)

    def _checkout(self, within: float | None = None) -> tuple[Channel, bool]:
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
                return self._open(within), True
        try:
            channel = self._pool.pop()
        except IndexError:
            channel = self._open(within)
        self._local.mine = _ThreadChannel(channel)
        return channel, False

    def own_channel(self) -> Channel:
        """This thread's own channel, opened now if it has none: the one its next call uses
        (unless a callback it serves meanwhile needs a spare). Another thread may close its
        transport to abandon that call: the call wakes up and raises, and the manager sees the
        connection end (reflectmgr.aio, when the awaiting task is cancelled)."""
        if self.closed:
            raise self._closed_error()
        mine: _ThreadChannel | None = getattr(self._local, "mine", None)
        if mine is None or mine.channel.transport.closed:
            return self._checkout()[0]  # a new own channel (never a spare: there is none to be busy)
        return mine.channel

    def _checkin(self, channel: Channel, spare: bool) -> None:
        if channel.busy or channel.transport.closed or self.closed:
            channel.transport.close()  # interrupted mid-call: out of step with the manager
        elif spare:
            self._pool.append(channel)

    # -- releases ----------------------------------------------------------------------------
    def _start_flusher(self) -> None:
        anchor, sending = self._anchor, self._sending_releases

        def send() -> None:
            with sending:
                anchor.call(int(Op.RELEASE), 0, ())

        cache = self.cache
        self._flusher = ReleaseFlusher(lambda: cache.has_releases, send, cache.bell, self._next_look)

    @property
    def idle_timeout(self) -> float | None:
        return self._idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, seconds: float | None) -> None:
        self._idle_timeout = seconds
        self.cache.bell.poke()  # the flusher may sleep with no bound: it must start looking

    def _next_look(self) -> bool | float | None:
        """For the flusher, after each wake-up: True once :meth:`reap_if_idle` closed the client;
        else when to look again (every RELEASE_INTERVAL while an idle timeout applies; None: when
        something is released)."""
        if self.reap_if_idle():
            return True
        return None if self._idle_timeout is None else RELEASE_INTERVAL

    def reap_if_idle(self) -> bool:
        """Close this client if it has been idle for ``idle_timeout``: implicit, no connection
        using it, no proxy alive or being unpickled (``claims``), nothing to release, and not
        handed out by the registry since the last look. Runs on the flusher's thread every
        RELEASE_INTERVAL while ``idle_timeout`` is set; True once closed."""
        if self.idle_timeout is None or not self.implicit or self.handles > 0 or self.closed:
            return False
        cache = self.cache
        if len(cache) or cache.has_releases or cache.has_acquires:
            self._idle_since = None
            return False
        now = time.monotonic()
        with registry.lock:
            if self.touched or self.claims:  # handed out since the last look, or a proxy on its way in
                self.touched = False
                self._idle_since = None
                return False
            if self._idle_since is None:
                self._idle_since = now
            if now - self._idle_since < self.idle_timeout:
                return False
            self._unregister()
        self.close()
        return True

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None

    def flush(self) -> None:
        """Send pending releases now, and wait for those the flusher thread is sending: the
        releases of proxies dropped before this call are applied when it returns (stats() and
        the stdlib's _number_of_objects() count after it)."""
        with self._sending_releases:
            if self.cache.has_releases:
                self.call(Op.RELEASE, 0)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self.closed = True
        self._stop_flusher()
        _close_transports(self._transports)
        self._pool.clear()
        with registry.lock:
            self._unregister()

    def _unregister(self) -> None:
        """Forget this client under every address it is registered by (registry.lock held)."""
        for address, client in list(registry.clients.items()):
            if client is self:
                # pop: a close re-entered by a collection (a dropped Manager) may have done it
                registry.clients.pop(address, None)


def _close_transports(transports: list[Any]) -> None:
    for transport in transports:
        transport.close()


class _Exiting(Client):
    """A client once the atexit functions ran (see _calls_checked_at_exit)."""

    _finalizing = staticmethod(sys.is_finalizing)  # through the class: see Client._Closed

    def call(self, op: int, oid: int, *args: Any) -> Any:
        if self._finalizing():
            raise self._exiting_error()
        return super().call(op, oid, *args)

    def call_within(self, timeout: float | None, op: int, oid: int, *args: Any) -> Any:
        if self._finalizing():
            raise self._exiting_error()
        return super().call_within(timeout, op, oid, *args)

    def _exiting_error(self) -> ManagerClosedError:
        return self._Closed(
            f"a call to the manager at {self.address!r} while this interpreter exits (a __del__ run "
            "as it clears the modules, most likely): reflectmgr's own modules are already cleared; "
            "the call was not made"
        )


def _calls_checked_at_exit() -> None:
    """After the atexit functions the interpreter clears every module's globals, reflectmgr's
    before ``__main__``'s (the last imported first): a ``__del__`` run then that calls a proxy
    would fail inside our code, in any way. From here on each call first asks whether the
    interpreter is finalizing and, if so, raises ManagerClosedError (costs nothing before)."""
    with registry.lock:
        clients = set(registry.clients.values())
    for client in clients:
        if type(client) is Client:
            client.__class__ = _Exiting


atexit.register(_calls_checked_at_exit)


class _ThreadChannel:
    """A thread's own channel, closed when the thread ends (its thread-local storage goes), or
    when the thread replaces it (it was closed: an interrupted call). Disposed, not only closed:
    nobody else sends or receives on it, and the client's list of transports keeps a closed one
    until its next connection, with its rings mapped and its descriptors open (a burst of 200
    short threads left 160 memfds behind)."""

    __slots__ = ("channel",)

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def __del__(self) -> None:
        try:
            self.channel.transport.dispose()
        except BufferError:
            pass  # a view of its rings is still in use somewhere: closed, and freed with that view
