"""The server loop: accept, authenticate, one thread per connection, sessions per client.

    listener --accept--> [auth thread] --HMAC ok--> HELLO(session token) --> Session
                                                            |
                               one thread per connection:   Channel.serve_one() in a loop
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
import socket
import threading
from collections.abc import Callable
from typing import Any

from .._transport.auth import serve_handshake
from .._transport.sockets import Listener
from .._transport.stream import StreamTransport
from .._wire.framing import MAX_PREAUTH
from .._wire.opcodes import Msg, Op
from ..errors import ReflectmgrError
from .channel import Channel
from .export import Describer
from .table import Holder, ObjectTable

log = logging.getLogger("reflectmgr.server")

# A peer has this long to complete the handshake and say hello; silent sockets do not pin threads.
HANDSHAKE_TIMEOUT = 10.0


class Session(Holder):
    """One client process as the owner sees it: its references and its connections."""

    __slots__ = ("connections", "describer", "importer", "pid", "server", "table", "token")

    def __init__(self, server: Server, token: bytes, pid: int) -> None:
        super().__init__(f"client pid {pid}")
        self.server: Server | None = server
        self.table = server.table
        self.describer = server.describer
        self.token = token
        self.pid = pid
        self.connections = 0
        self.importer: Any = server.make_importer(self) if server.make_importer else None

    @property
    def holder(self) -> Holder:
        return self

    @property
    def home(self) -> Any:
        return self.importer

    def resolve(self, oid: int) -> Any:
        return self.table.resolve(oid)

    def load_ref(self, pid: Any) -> Any:
        if self.importer is None:
            raise ReflectmgrError("this manager does not accept references from clients")
        return self.importer.load_ref(pid)

    def take_releases(self) -> tuple[tuple[int, int], ...]:
        return self.importer.take_releases() if self.importer is not None else ()

    def apply_releases(self, releases: tuple[tuple[int, int], ...]) -> None:
        self.table.release(self, releases)

    def return_releases(self, releases: tuple[tuple[int, int], ...]) -> None:
        if self.importer is not None:
            self.importer.return_releases(releases)


class Server:
    def __init__(
        self,
        listener: Listener,
        authkey: bytes,
        make_importer: Callable[[Session], Any] | None = None,
        stats: Callable[[Server], Any] | None = None,
    ) -> None:
        self.listener = listener
        self.address = listener.address
        self.authkey = authkey
        self.table = ObjectTable()
        self.describer = Describer()
        self.root: dict[str, Any] = {}
        self.sessions: dict[bytes, Session] = {}
        self.make_importer = make_importer
        self._stats = stats
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()

    # -- services used by dispatch ----------------------------------------------------------
    def stats(self) -> Any:
        if self._stats is None:
            return {"objects": len(self.table), "clients": len(self.sessions)}
        return self._stats(self)

    def stop(self) -> None:
        self._stopping.set()
        try:
            # Wake the accept loop: a blocked accept() does not notice a closed socket on Linux.
            self.listener.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def pid(self) -> int:
        return os.getpid()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wait_stopped(self, timeout: float) -> bool:
        return self._stopping.wait(timeout)

    # -- loops --------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Accept until :meth:`stop`; returns after closing the listener."""
        try:
            while not self._stopping.is_set():
                try:
                    transport = self.listener.accept()
                except OSError:
                    if self._stopping.is_set():
                        break
                    continue
                t = threading.Thread(target=self._connection, args=(transport,), daemon=True)
                t.name = "reflectmgr-conn"
                t.start()
        finally:
            self.listener.close()

    def _connection(self, transport: StreamTransport) -> None:
        session: Session | None = None
        try:
            transport.sock.settimeout(HANDSHAKE_TIMEOUT)
            serve_handshake(transport, self.authkey)
            session = self._hello(transport)
            transport.sock.settimeout(None)
            channel = Channel(transport, session)
            while not self._stopping.is_set():
                channel.serve_one()
        except (EOFError, OSError):
            pass  # the peer went away: normal end of a connection
        except ReflectmgrError as exc:  # a wrong authkey, garbage: the peer's problem, not ours
            log.info("dropping a connection: %r", exc)
        except Exception as exc:
            log.warning("dropping a connection: %r", exc)
        finally:
            transport.close()
            if session is not None:
                self._goodbye(session)

    def _hello(self, transport: StreamTransport) -> Session:
        _, payload = transport.recv(MAX_PREAUTH)
        msg = pickle.loads(payload)  # authenticated: the peer is trusted from here on
        if type(msg) is not tuple or len(msg) != 7 or msg[0] != Msg.REQUEST or msg[2] != Op.HELLO:
            raise ReflectmgrError("expected HELLO after the handshake")
        token, pid = msg[4], msg[5]
        with self._lock:
            session = self.sessions.get(token)
            if session is None:
                session = self.sessions[token] = Session(self, token, pid)
            session.connections += 1
        transport.send(0, pickle.dumps((Msg.OK, (), os.getpid()), 5))
        return session

    def _goodbye(self, session: Session) -> None:
        with self._lock:
            session.connections -= 1
            last = session.connections == 0
            if last:
                self.sessions.pop(session.token, None)
        if last:
            self.table.release_all(session)
            if session.importer is not None:
                session.importer.disconnect()
