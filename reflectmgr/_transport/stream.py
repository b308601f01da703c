"""Frames over a byte stream: a socket (AF_UNIX for "pipe", AF_INET for "tcp") or a pair of
OS pipes (the in-process transport to subinterpreters).

send: header+payload in one write (one syscall for small frames; large payloads go straight
      from the caller's buffer, no concatenation)
recv: a read-ahead buffer, so a small frame costs one read syscall, not two
"""

from __future__ import annotations

import os
import select
import socket
import time

from .._wire.framing import HEADER, HEADER_SIZE, MAX_FRAME, pack_header, unpack_header
from ..errors import ProtocolError

# Read-ahead size: one recv usually brings a whole small frame (and often the next header too).
CHUNK = 256 * 1024
# How long a pipe reader spins before it blocks: a few calls' worth of work on the other side.
# Longer wastes CPU when the peer is idle; shorter pays kernel wake-ups on busy channels. Spinning
# pays only between interpreters with their own GILs (threads sharing one GIL hand it over
# through the kernel anyway), which is what this transport is for.
SPIN_NS = 100_000
# Below this size header and payload are joined (one copy, one syscall); above, sent separately.
JOIN_LIMIT = 64 * 1024


class FramedStream:
    """The framing over any byte stream; subclasses supply ``_sendall``, ``_recv_into``, ``_shut``."""

    def __init__(self) -> None:
        # Read-ahead buffer, allocated once: a fresh 256 KiB buffer per recv() would cost an mmap.
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _sendall(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def _recv_into(self, view: memoryview) -> int:
        raise NotImplementedError

    def _shut(self) -> None:
        raise NotImplementedError

    def set_timeout(self, seconds: float | None) -> None:
        """Bound each blocking read and write (the handshake uses it); None blocks for ever."""

    def send(self, flags: int, payload: bytes | bytearray | memoryview) -> None:
        header = pack_header(len(payload), flags)
        if len(payload) <= JOIN_LIMIT:
            self._sendall(header + payload)
        else:
            self._sendall(header)
            self._sendall(payload)

    def recv(self, max_size: int = MAX_FRAME) -> tuple[int, bytes | bytearray]:
        start = self._start
        avail = self._end - start
        if avail >= HEADER_SIZE:  # fast path: the whole frame is already buffered
            length, flags = HEADER.unpack_from(self._buf, start)
            if avail - HEADER_SIZE >= length and length <= max_size:
                begin = start + HEADER_SIZE
                self._start = begin + length
                return flags, bytes(self._view[begin : begin + length])
        length, flags = unpack_header(self._read(HEADER_SIZE))
        if length > max_size:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {max_size} bytes")
        return flags, self._read(length)

    def _read(self, n: int) -> bytes | bytearray:
        start, end = self._start, self._end
        if end - start >= n:
            self._start = start + n
            return bytes(self._view[start : start + n])
        have = self._view[start:end].tobytes()
        self._start = self._end = 0
        if n > CHUNK:
            # Large frame: receive straight into its final buffer, no read-ahead copy.
            out = bytearray(n)
            out[: len(have)] = have
            view = memoryview(out)
            got = len(have)
            while got < n:
                k = self._recv_into(view[got:])
                if not k:
                    raise EOFError("peer closed the connection in the middle of a frame")
                got += k
            return out
        self._buf[: len(have)] = have
        end = len(have)
        view = self._view
        while end < n:
            k = self._recv_into(view[end:])
            if not k:
                raise EOFError(
                    "peer closed the connection in the middle of a frame" if end else "peer closed the connection"
                )
            end += k
        self._start, self._end = n, end
        return bytes(view[:n])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shut()

    def __del__(self) -> None:
        # A transport dropped without close() (its client was garbage-collected): close it here,
        # quietly, rather than leave the socket to warn about it.
        if not getattr(self, "_closed", True):
            self.close()


class StreamTransport(FramedStream):
    """Frames over a connected stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        # Bound methods of the socket itself: no Python frame per send or receive.
        self._sendall = sock.sendall  # type: ignore[method-assign,assignment]
        self._recv_into = sock.recv_into  # type: ignore[method-assign,assignment]

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_timeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def _shut(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def detach_after_fork(self) -> None:
        """Forget the socket without shutting it down: the parent still uses the connection."""
        self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class FdTransport(FramedStream):
    """Frames over two OS pipes (read end, write end): an in-process channel, no socket.

    A reader first *spins* on the non-blocking read end for up to SPIN_NS, then blocks in poll():
    a reply that comes back within the spin window costs no kernel wake-up (on this machine a
    wake-up is ~20 us, more than the rest of a call). Every attempt is a syscall that releases the
    GIL, so a spinning owner thread does not starve the other threads of its interpreter.
    """

    def __init__(self, read_fd: int, write_fd: int, spin: bool = True) -> None:
        super().__init__()
        self.read_fd = read_fd
        self.write_fd = write_fd
        os.set_blocking(read_fd, False)
        self._poll = select.poll()
        self._poll.register(read_fd, select.POLLIN)
        self._spin_max = SPIN_NS if spin else 0
        self._spin_ns = self._spin_max

    def _recv_into(self, view: memoryview) -> int:
        fd = self.read_fd
        start = time.perf_counter_ns()
        deadline = start + self._spin_ns
        while True:
            try:
                return os.readv(fd, [view])
            except BlockingIOError:
                if time.perf_counter_ns() < deadline:
                    continue
            self._poll.poll()
            # Adapt: if the data came soon after all, spin the whole window next time; if the
            # peer was slow (idle), spinning was waste: halve the window, down to nothing.
            waited = time.perf_counter_ns() - start
            self._spin_ns = self._spin_max if waited < SPIN_NS else self._spin_ns // 2
            deadline = 0

    def _sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.write_fd, view) :]

    def _shut(self) -> None:
        for fd in (self.write_fd, self.read_fd):
            try:
                os.close(fd)
            except OSError:
                pass
