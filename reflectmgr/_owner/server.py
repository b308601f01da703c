"""The server loop: accept, authenticate, one thread per connection, sessions per client.

    listeners --accept--> [auth thread] --HMAC ok--> HELLO(session token) --> Session
                                                            |
                               one thread per connection:   channel.serve_forever()
                                                            |
                  last connection of a session closes ----> release every reference it held

A client process is one *session* (its token), whatever number of connections its threads open.
A blocking call (``Queue.get``) occupies only its own connection's thread, so other clients and
the client's other threads go on. Any failure on one connection (garbage, a peer that vanished)
ends that connection only.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .._transport import shm, waiting
from .._transport.auth import serve_handshake
from .._transport.base import Transport
from .._wire.framing import MAX_FRAME, MAX_PREAUTH
from .._wire.memo_guard import check as check_memo
from .._wire.memo_guard import needed as memo_needed
from .._wire.opcodes import Msg, Op
from ..errors import ReflectmgrError, RestrictedError
from . import robust
from .channel import Channel
from .colocate import Colocation
from .dispatcher import Dispatcher
from .export import Describer
from .restricted import Restriction
from .table import Account, ObjectTable

log = logging.getLogger("reflectmgr.server")

# A peer has this long to complete the handshake and say hello; silent sockets do not pin threads.
HANDSHAKE_TIMEOUT = 10.0
# Connections still in their handshake at once; beyond this, new ones are closed at once. Each
# costs a thread for up to HANDSHAKE_TIMEOUT; a flood of silent sockets must not cost the machine.
MAX_PENDING_HANDSHAKES = 64


def _no_releases() -> tuple[tuple[int, int], ...]:
    return ()


class Session(Account):
    """One client process as the owner sees it: its references and its connections."""

    __slots__ = ("describer", "importer", "pid", "server", "table", "take_releases", "token", "transports")

    def __init__(self, server: Server, token: bytes, pid: int) -> None:
        super().__init__(f"client pid {pid}")
        self.server: Server | None = server
        self.table = server.table
        self.describer = server.describer
        self.token = token
        self.pid = pid
        self.transports: set[Transport] = set()  # its open connections (guarded by the server's lock)
        make = server.make_importer
        if server.restriction is not None and not server.restriction.allow_callbacks:
            make = None  # a restricted manager calls no client back unless allowed
        self.importer: Any = make(self) if make is not None else None
        # The releases to send with the next reply (our proxies of the client's callbacks that
        # died): the importer's own method, bound once (every reply asks).
        self.take_releases: Callable[[], tuple[tuple[int, int], ...]] = (
            self.importer.take_releases if self.importer is not None else _no_releases
        )

    @property
    def connections(self) -> int:
        return len(self.transports)

    @staticmethod
    def gone(transports: list[Transport]) -> bool:
        """Is the peer of every one of these connections gone? (A process that died, though some
        of its connections' threads are still blocked in a call and have not noticed.)"""
        for transport in transports:
            try:
                transport.check_peer()
            except (EOFError, OSError):
                continue
            return False
        return True

    @property
    def account(self) -> Account:
        return self

    @property
    def home(self) -> Any:
        return self.importer

    def resolve(self, oid: int) -> Any:
        return self.table.resolve(oid)

    def load_ref(self, pid: Any) -> Any:
        if self.importer is None:
            if self.server is not None and self.server.restriction is not None:
                raise RestrictedError(
                    "this restricted manager accepts no references to clients' objects (byref, "
                    "callbacks): its owner allows them with Manager(allow_callbacks=True)"
                )
            raise ReflectmgrError("this manager does not accept references from clients")
        return self.importer.load_ref(pid)

    def apply_releases(self, releases: tuple[tuple[int, int], ...]) -> None:
        self.table.release(self, releases)

    def return_releases(self, releases: tuple[tuple[int, int], ...]) -> None:
        if self.importer is not None:
            self.importer.return_releases(releases)


class Listener(Protocol):
    address: Any

    def accept(self) -> Transport: ...

    def establish(self, accepted: Transport, timeout: float) -> Transport:
        """Run on the connection's thread before authentication (a TLS handshake)."""
        ...

    def wake(self) -> None: ...

    def close(self) -> None: ...


class Server:
    """Serves one object table to every client that reaches one of its listeners."""

    def __init__(
        self,
        listeners: list[Listener],
        authkey: bytes,
        make_importer: Callable[[Session], Any] | None = None,
        stats: Callable[[Server], Any] | None = None,
        max_frame: int = MAX_FRAME,
        channel_class: type[Channel] = Channel,
        restriction: Restriction | None = None,
    ) -> None:
        """``make_importer`` and ``channel_class`` come from the layers above: what a session
        imports (the proxies to a client's byref objects) and a channel that can also call (back
        into clients). Without them the server serves objects only. ``restriction``: what a
        restricted manager loads and runs (restricted.py); None trusts authenticated peers."""
        self.restriction = restriction
        self.listeners = listeners
        self.address = listeners[0].address
        self.authkey = authkey
        self.table = ObjectTable()
        self.describer = Describer()
        self.root: dict[str, Any] = {}
        self.registry: dict[str, tuple[Any, Any, Any]] = {}
        self.sessions: dict[bytes, Session] = {}
        self.make_importer = make_importer
        self._stats = stats
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._transports: set[Transport] = set()
        self._channels: set[Channel] = set()  # serving now; their calls count in calls()
        self._calls_before = 0  # calls served by channels that have ended
        self.max_frame = max_frame
        self.channel_class = channel_class
        self._handshakes = threading.BoundedSemaphore(MAX_PENDING_HANDSHAKES)
        # A thread per connection, kept on one CPU while several clients keep them busy
        # (colocate.py). REFLECTMGR_DISPATCHER=always: one thread serves every shared-memory client
        # instead (dispatcher.py); it measured slower for any number of clients once the threads
        # were colocated (benchmarks/README.md), and stays for measuring.
        self._dispatcher: Dispatcher | None = None
        self._colocation = Colocation()
        self._dispatch = waiting.FUTEX and os.environ.get("REFLECTMGR_DISPATCHER") == "always"

    # -- services used by dispatch ----------------------------------------------------------
    def stats(self) -> Any:
        if self._stats is None:
            return {"objects": len(self.table), "clients": len(self.sessions)}
        return self._stats(self)

    def calls(self) -> int:
        """Requests answered since the manager started."""
        with self._lock:
            return self._calls_before + sum(channel.served for channel in self._channels)

    def stop(self) -> None:
        """Stop accepting and close every connection (clients see EOF: BrokenManagerError)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._dispatcher is not None:
            self._dispatcher.stop()
        for listener in self.listeners:
            listener.wake()
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            transport.close()

    def pid(self) -> int:
        return os.getpid()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wait_stopped(self, timeout: float) -> bool:
        return self._stopping.wait(timeout)

    # -- loops --------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Accept on every listener until :meth:`stop`; returns after closing them."""
        threads = [
            threading.Thread(target=self._accept, args=(listener,), name="reflectmgr-accept", daemon=True)
            for listener in self.listeners[1:]
        ]
        for t in threads:
            t.start()
        self._accept(self.listeners[0])
        for t in threads:
            t.join()

    def _accept(self, listener: Listener) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    transport = listener.accept()
                except OSError:
                    if self._stopping.is_set():
                        break
                    continue
                if not self._handshakes.acquire(blocking=False):
                    log.info("refusing a connection: %d handshakes already pending", MAX_PENDING_HANDSHAKES)
                    transport.dispose()
                    continue
                with self._lock:
                    self._transports.add(transport)
                t = threading.Thread(target=self._connection, args=(transport, listener), daemon=True)
                t.name = "reflectmgr-conn"
                t.start()
        finally:
            listener.close()

    def _connection(self, transport: Transport, listener: Listener) -> None:
        session: Session | None = None
        channel: Channel | None = None
        pending = True
        try:
            accepted, transport = transport, listener.establish(transport, HANDSHAKE_TIMEOUT)
            if transport is not accepted:  # TLS: stop() must close the new transport
                with self._lock:
                    self._transports.discard(accepted)
                    self._transports.add(transport)
            transport.set_timeout(HANDSHAKE_TIMEOUT)
            serve_handshake(transport, self.authkey)
            transport, payload = self._first_frame(transport)
            session = self._hello(transport, payload)
            transport.set_timeout(None)
            transport.authenticated(self.max_frame)
            self._handshakes.release()
            pending = False
            channel = self.channel_class(transport, session)
            channel.restriction = self.restriction
            channel.guarded = memo_needed()
            with self._lock:
                self._channels.add(channel)
            if shm.dispatched(transport):  # it rings the bell: REFLECTMGR_DISPATCHER=always
                self._dispatcher_for().serve(channel, transport)
            else:
                transport.serving()
                self._colocation.serve(channel, self._stopping.is_set, transport.peer_cpu, transport.leaving_cpu)
        except (EOFError, OSError):
            pass  # the peer went away: normal end of a connection
        except ReflectmgrError as exc:  # a wrong authkey, garbage: the peer's problem, not ours
            log.info("dropping a connection: %r", exc)
        except Exception as exc:
            log.warning("dropping a connection: %r", exc)
        finally:
            if pending:
                self._handshakes.release()
            transport.dispose()  # this thread is its only user: unmap shared memory now
            with self._lock:
                self._transports.discard(transport)
                if channel is not None:
                    self._channels.discard(channel)
                    self._calls_before += channel.served
            if session is not None:
                self._goodbye(session, transport)

    def _first_frame(self, transport: Transport) -> tuple[Transport, bytes | bytearray]:
        """The first frame after authentication; a request for shared memory switches first."""
        _, payload = transport.recv(MAX_PREAUTH)
        if payload != shm.REQUEST:
            return transport, payload
        # The bell (and the dispatcher's thread) only where the dispatcher serves: otherwise a
        # client never maps it, and nothing waits on it.
        shared = shm.upgrade_server(transport, self._dispatcher_for().bell if self._dispatch else None)
        with self._lock:
            self._transports.discard(transport)
            self._transports.add(shared)
        try:
            if self._stopping.is_set():
                shared.close()
            shared.set_timeout(HANDSHAKE_TIMEOUT)
            return shared, shared.recv(MAX_PREAUTH)[1]
        except BaseException:
            shared.dispose()  # the caller still holds the socket transport it started with
            with self._lock:
                self._transports.discard(shared)
            raise

    def _dispatcher_for(self) -> Dispatcher:
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = Dispatcher(self._stopping.is_set, self._colocation)
            return self._dispatcher

    def _hello(self, transport: Transport, payload: bytes | bytearray) -> Session:
        # Authenticated: the peer is trusted from here on, unless the manager is restricted.
        if self.restriction is not None:
            msg = self.restriction.loads(payload)
        else:
            if memo_needed():
                check_memo(payload)
            msg = pickle.loads(payload)
        if (
            type(msg) is not tuple
            or len(msg) != 5
            or msg[0] != Msg.REQUEST
            or msg[2] != Op.HELLO
            or type(msg[4]) is not tuple
            or len(msg[4]) != 2
        ):
            raise ReflectmgrError("expected HELLO after the handshake")
        token, pid = msg[4]
        with self._lock:
            session = self.sessions.get(token)
            if session is None:
                session = self.sessions[token] = Session(self, token, pid)
                log.info("client pid %s connected%s (%d clients)", pid, _origin(transport), len(self.sessions))
            session.transports.add(transport)
        transport.send(0, pickle.dumps((Msg.OK, (), os.getpid()), 5))
        return session

    def _goodbye(self, session: Session, transport: Transport) -> None:
        with self._lock:
            session.transports.discard(transport)
            others = list(session.transports)
            last = not others
            if last:
                self.sessions.pop(session.token, None)
                log.info("client pid %s disconnected (%d clients)", session.pid, len(self.sessions))
        if not last and Session.gone(others):
            # Its other connections' threads are blocked in calls (a Queue.get) and will not
            # notice for a while: its robust locks must not wait for them.
            robust.session_ended(session)
        if last:
            robust.session_ended(session)  # its robust locks: released, marked for the next owner
            self.table.release_all(session)
            if session.importer is not None:
                session.importer.disconnect()


def _origin(transport: Transport) -> str:
    """ " from HOST:PORT" for a TCP peer (the log says who connects), else nothing."""
    sock = getattr(transport, "sock", None)
    try:
        peer = sock.getpeername() if sock is not None else None
    except OSError:
        return ""
    return f" from {peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
