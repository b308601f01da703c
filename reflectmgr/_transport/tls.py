"""TLS for the TCP transport: the stream, and how the two ends start it.

    manager                                    client (connect(..., ssl_context=...))
      |-- frame "#RMTLS#" (clear text) ------------>|   "this manager speaks TLS only"
      |<=========== TLS handshake =================>|   (certificates; client certificates for mTLS)
      |<========== HMAC challenge, both ways ======>|   auth.py, unchanged, inside TLS
      |<========== frames =========================>|

The clear-text announcement lets each side fail fast with an error that says what is wrong: a
client without TLS reads it where it expects the challenge (auth.py says "this manager requires
TLS"), and a TLS client that gets a challenge instead knows the manager has no TLS. It is a hint
only: a TLS client always insists on the handshake, so stripping the announcement gains an
attacker nothing. Everything after it, the authkey challenge included, is encrypted.
"""

from __future__ import annotations

import select
import socket
import ssl

from .._wire.framing import pack_header
from ..errors import AuthenticationError
from .auth import TLS_ANNOUNCE as ANNOUNCE
from .stream import SocketEnd

ANNOUNCE_FRAME = pack_header(len(ANNOUNCE), 0) + ANNOUNCE


class TLSTransport(SocketEnd):
    """Frames over a TLS socket. Unlike the other transports, a send and a receive must not run
    at once from two threads (one OpenSSL connection is not safe for that); reflectmgr's channels
    never do it: each connection is used by one thread at a time, on both sides.

    Bytes may wait decrypted in the TLS layer (``pending()``) or
    encrypted in the kernel (the socket polls readable); the reader's short spin (see
    :class:`waiting.SpinPolicy`) looks at both, and reads once either has something: the rest of
    a record that has begun to arrive follows at once."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        super().__init__(sock)
        self._sendall = sock.sendall  # type: ignore[method-assign]
        self._block_recv_into = sock.recv_into  # type: ignore[method-assign,assignment]
        self._tls = sock
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def _try_recv_into(self, view: memoryview) -> int | None:
        if self._tls.pending() or self._poll.poll(0):
            return self._tls.recv_into(view)
        return None


def serve_tls(sock: socket.socket, context: ssl.SSLContext, timeout: float) -> TLSTransport:
    """Manager side, on the connection's own thread: announce, then the TLS handshake (bounded
    by ``timeout``). Raises :class:`AuthenticationError` if the handshake fails."""
    sock.settimeout(timeout)
    sock.sendall(ANNOUNCE_FRAME)
    try:
        tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except (ssl.SSLError, ValueError) as exc:
        sock.close()
        raise AuthenticationError(f"TLS could not start: {exc}") from exc
    try:
        tls.do_handshake()
    except ssl.SSLError as exc:
        tls.close()
        raise AuthenticationError(f"TLS handshake failed: {exc.reason or exc}") from exc
    except BaseException:
        tls.close()
        raise
    return TLSTransport(tls)


def start_tls(sock: socket.socket, context: ssl.SSLContext, host: str, timeout: float) -> TLSTransport:
    """Client side: read the manager's announcement, then the TLS handshake. Raises
    :class:`AuthenticationError` if the manager does not speak TLS or the handshake fails
    (a certificate the context does not trust, or a client certificate the manager refused)."""
    sock.settimeout(timeout)
    try:
        first = _read_exactly(sock, len(ANNOUNCE_FRAME))
        if first != ANNOUNCE_FRAME:
            raise AuthenticationError(
                f"the manager at {host!r} does not use TLS (it was started without ssl_context), "
                "or this is not a reflectmgr manager"
            )
        try:
            tls = context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLError as exc:
            raise AuthenticationError(f"TLS handshake with the manager at {host!r} failed: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    return TLSTransport(tls)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break  # the caller compares: what came is not the announcement
        data += chunk
    return data
