"""Listening and connecting for the socket transports, and the transport names users pass.

``"pipe"`` is a unix-domain stream socket in a private (0700) directory; ``"tcp"`` listens on
loopback unless an address says otherwise; ``"shm"`` listens like ``"pipe"`` and every connection
switches to shared-memory rings after authentication (see :mod:`.shm`). An address tells its
kind: ``"shm:<path>"`` is shared memory behind a unix socket, any other ``str`` is a unix path, a
``(host, port)`` tuple is TCP. Any unix-socket manager serves a client that asks for shared memory.
A TCP listener with an ``ssl.SSLContext`` speaks TLS only (see :mod:`.tls`).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import tempfile

from .base import Transport
from .inproc import connect_inproc, is_inproc
from .shm import PREFIX as SHM_PREFIX
from .shm import is_shm, socket_path
from .stream import SocketEnd, StreamTransport
from .tls import serve_tls, start_tls

Address = str | tuple[str, int]
TRANSPORTS = ("pipe", "shm", "tcp")
# Shared memory where the rings' descriptor can be passed over the unix socket: measured about
# twice as fast as the socket alone for small calls; for 64 MiB values the socket alone was as
# fast or a little faster (docs/architecture.md, "Transports").
DEFAULT_TRANSPORT = "shm" if hasattr(socket, "send_fds") and hasattr(socket, "AF_UNIX") else "pipe"
BACKLOG = 128
# The private directory of a manager's unix socket (its owner removes it if the manager could not).
SOCKET_DIR_PREFIX = "reflectmgr-"


class Listener:
    def __init__(self, transport: str, address: Address | None, ssl_context: ssl.SSLContext | None = None) -> None:
        self._tmpdir: str | None = None
        self.ssl_context = ssl_context
        self._owner_pid = os.getpid()  # a forked child must not wake, shut or unlink our listener
        if transport == "shm" and isinstance(address, tuple):
            raise ValueError("the shm transport is for one host: give it a unix path, or use tcp")
        if transport == "tcp" or isinstance(address, tuple):
            host, port = address if isinstance(address, tuple) else ("127.0.0.1", 0)
            self.sock = socket.create_server((host, port), backlog=BACKLOG)
            bound = self.sock.getsockname()
            self.address: Address = (str(bound[0]), int(bound[1]))
        elif transport in ("pipe", "shm"):
            if is_shm(address):
                address = socket_path(address)  # type: ignore[arg-type]
            if address is None:
                self._tmpdir = tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX)
                os.chmod(self._tmpdir, 0o700)
                address = os.path.join(self._tmpdir, "manager.sock")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(address)
            os.chmod(address, 0o600)
            self.sock.listen(BACKLOG)
            self.address = SHM_PREFIX + address if transport == "shm" else address
        else:
            raise ValueError(f"unknown transport {transport!r}; choose one of {TRANSPORTS}")
        if ssl_context is not None and self.sock.family == socket.AF_UNIX:
            self.close()
            raise ValueError("TLS is for TCP: give ssl_context with a (host, port) address")

    def accept(self) -> StreamTransport:
        sock, _ = self.sock.accept()
        _tune(sock)
        return StreamTransport(sock)

    def establish(self, accepted: Transport, timeout: float) -> Transport:
        """On the connection's own thread, before authentication: the TLS handshake where this
        listener has a context (bounded by ``timeout``); the accepted transport as it is otherwise."""
        if self.ssl_context is None or not isinstance(accepted, StreamTransport):
            return accepted
        return serve_tls(accepted.detach(), self.ssl_context, timeout)

    def wake(self) -> None:
        """Make a blocked ``accept`` return (the server is stopping)."""
        if os.getpid() != self._owner_pid:
            return
        try:
            # A blocked accept() does not notice a closed socket on Linux; shutdown wakes it.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            if self._tmpdir is not None and os.getpid() == self._owner_pid:
                shutil.rmtree(self._tmpdir, ignore_errors=True)


def with_transport(address: Address, transport: str) -> Address:
    """``address`` as a client asks for it over ``transport`` ("shm" or "pipe" for a unix path)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; choose one of {TRANSPORTS}")
    if isinstance(address, (tuple, list)):
        if transport != "tcp":
            raise ValueError(f"{address!r} is a TCP address; the {transport} transport needs a unix path")
        return address
    path = socket_path(address) if is_shm(address) else address
    if transport == "shm":
        return SHM_PREFIX + path
    if transport == "pipe":
        return path
    raise ValueError(f"{address!r} is a unix path; tcp needs a (host, port) address")


def connect(address: Address, timeout: float, ssl_context: ssl.SSLContext | None = None) -> SocketEnd:
    """Open a stream to ``address``; raises OSError (refused, missing path, timeout), and
    AuthenticationError if TLS (``ssl_context``, TCP only) cannot start."""
    if is_inproc(address):
        return connect_inproc(address)  # type: ignore[arg-type]
    if isinstance(address, (tuple, list)):
        sock = socket.create_connection((address[0], int(address[1])), timeout=timeout)
        if ssl_context is not None:
            _tune(sock)
            return start_tls(sock, ssl_context, str(address[0]), timeout)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path(address) if is_shm(address) else address)
        except BaseException:
            sock.close()
            raise
    _tune(sock)
    return StreamTransport(sock)


def _tune(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
