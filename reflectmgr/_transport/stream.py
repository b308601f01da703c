"""Frames over a byte stream: a socket (AF_UNIX for "pipe", AF_INET for "tcp"); shm.py puts the
same framing over shared-memory rings.

send: header+payload in one write (one syscall for small frames; large payloads go straight
      from the caller's buffer, no concatenation)
recv: a read-ahead buffer, so a small frame costs one read syscall, not two
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from pickle import PickleBuffer
from typing import Any

from .._wire.framing import (
    BODY_TIMEOUT,
    BUF_READONLY,
    BUFFER_COUNT,
    BUFFER_ENTRY,
    HEADER_SIZE,
    MAX_PREAUTH,
    pack_header,
    unpack_header,
    whole_frame,
)
from ..errors import ProtocolError
from . import waiting
from .buffers import fresh_buffer
from .waiting import SpinPolicy

try:  # a manager's serving thread reads and writes its socket in C (see StreamTransport.serving)
    from . import _native
except ImportError:
    _native = None  # type: ignore[assignment]
# Built with the package where a C compiler was (Linux); REFLECTMGR_NATIVE=0 turns it off, as the
# shared-memory ring's C path.
NATIVE = _native is not None and hasattr(_native, "stream_wait") and os.environ.get("REFLECTMGR_NATIVE", "1") != "0"

# Read-ahead size: one recv usually brings a whole small frame (and often the next header too).
# Before authentication the buffer is only big enough for the handshake: an unauthenticated
# connection costs next to nothing.
CHUNK = 256 * 1024
PREAUTH_CHUNK = 2 * MAX_PREAUTH
# A large payload's buffer starts at this size and doubles as its bytes arrive.
GROW_FROM = 4 << 20
_RDHUP = getattr(select, "POLLRDHUP", 0)
# Below this size header and payload are joined (one copy, one syscall); above, sent separately.
JOIN_LIMIT = 64 * 1024


class FramedStream:
    """The framing over any byte stream; subclasses supply ``_sendall``, ``_try_recv_into`` (None
    when nothing is there), ``_block_recv_into`` and ``_shut``.

    A reader may first *spin* (non-blocking reads) for a short learned window, then blocks: a reply
    that comes back within the window costs no kernel wake-up, which on a quiet machine is most of
    a round trip. When it spins, and when not, is :class:`waiting.SpinPolicy`'s call.
    """

    def __init__(self, spin: bool = True) -> None:
        # Read-ahead buffer, allocated once (a fresh 256 KiB buffer per recv() would cost an mmap),
        # and small until authenticated() enlarges it.
        self._buf = bytearray(PREAUTH_CHUNK)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self.closed = False
        self._spin = SpinPolicy(spin)
        # The largest payload or buffer accepted; MAX_PREAUTH until authenticated().
        self.max_frame = MAX_PREAUTH
        self._timeout: float | None = None

    def authenticated(self, max_frame: int) -> None:
        """The peer proved the authkey: accept frames up to ``max_frame`` and read ahead in CHUNKs."""
        self.max_frame = max_frame
        if len(self._buf) < CHUNK:
            pending = self._view[self._start : self._end].tobytes()
            self._view.release()
            self._buf = bytearray(CHUNK)
            self._buf[: len(pending)] = pending
            self._view = memoryview(self._buf)
            self._start, self._end = 0, len(pending)

    def _recv_into(self, view: memoryview) -> int:
        n = self._try_recv_into(view)
        if n is not None:
            return n
        spin = self._spin
        window = spin.begin()
        if window:
            n = None
            try:
                n = self._spin_recv_into(view, window)
            finally:
                spin.end(n is not None)
            if n is not None:
                return n
        start = time.perf_counter_ns()
        n = self._block_recv_into(view)
        spin.slept(time.perf_counter_ns() - start)
        return n

    def _spin_recv_into(self, view: memoryview, window: int) -> int | None:
        """Look for bytes for ``window`` ns; None if none came."""
        try_recv = self._try_recv_into
        deadline = time.perf_counter_ns() + window
        while time.perf_counter_ns() < deadline:
            n = try_recv(view)  # a non-blocking read: a system call that lets the GIL go
            if n is not None:
                return n
        return None

    def _try_recv_into(self, view: memoryview) -> int | None:
        raise NotImplementedError

    def _block_recv_into(self, view: memoryview) -> int:
        raise NotImplementedError

    def _sendall(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def _shut(self) -> None:
        raise NotImplementedError

    def set_timeout(self, seconds: float | None) -> None:
        """Bound each blocking read and write (the handshake uses it); None blocks for ever."""
        self._timeout = seconds

    def serving(self) -> None:
        """This end is served by one of a manager's connection threads (from now on, only by it):
        a transport may then take part in their hand-over of the GIL. Nothing by default."""

    def peer_cpu(self) -> int:
        """The CPU the peer last ran (or waited) on, -1 if unknown (by default)."""
        return -1

    def leaving_cpu(self) -> None:
        """Nothing to say: a stream's peer does not look where we wait."""

    def _body(self, have: int, n: int) -> None:
        """Called before each blocking read inside a frame's body: bound it by BODY_TIMEOUT."""
        if self._timeout is None or self._timeout > BODY_TIMEOUT:
            self._apply_timeout(BODY_TIMEOUT)

    def _apply_timeout(self, seconds: float | None) -> None:
        """Set the transport's own wait bound without changing the one the user chose."""

    def _body_done(self) -> None:
        self._apply_timeout(self._timeout)

    def _stalled(self, have: int, n: int, what: str) -> ProtocolError:
        return ProtocolError(
            f"the peer sent {have} of the {n} bytes of {what} it announced, then nothing for {BODY_TIMEOUT:g} s"
        )

    def send(self, flags: int, payload: bytes | bytearray | memoryview, buffers: Sequence[PickleBuffer] = ()) -> None:
        header = pack_header(len(payload), flags)
        if len(payload) <= JOIN_LIMIT:
            self._sendall(header + payload)
        else:
            self._sendall(header)
            self._sendall(payload)
        if buffers:
            self._send_buffers(buffers)

    def recv(self, max_size: int = 0) -> tuple[int, bytes | bytearray]:
        """The next frame; its payload may be at most ``max_size`` (default: ``max_frame``)."""
        limit = max_size or self.max_frame
        frame = whole_frame(self._buf, self._start, self._end - self._start, limit)
        if frame is not None:  # fast path: the whole frame is already buffered
            flags, begin, end = frame
            self._start = end
            return flags, bytes(self._view[begin:end])
        length, flags = unpack_header(self._read(HEADER_SIZE))
        if length > limit:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        return flags, self._read(length)

    def _read(self, n: int) -> bytes | bytearray:
        start, end = self._start, self._end
        if end - start >= n:
            self._start = start + n
            return bytes(self._view[start : start + n])
        have = self._view[start:end].tobytes()
        self._start = self._end = 0
        if n > len(self._buf):
            return self._read_large(have, n)
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

    def _read_large(self, have: bytes, n: int) -> bytearray:
        """A frame larger than the read-ahead buffer, received straight into its own buffer, which
        grows as the bytes arrive (a header alone never allocates what it announces)."""
        out = bytearray(max(len(have), min(n, GROW_FROM)))
        out[: len(have)] = have
        got = len(have)
        while True:
            with memoryview(out) as view:
                self._fill(view, got, "a frame", n)
            got = len(out)
            if got == n:
                return out
            out.extend(bytes(min(got, n - got)))

    def _fill(self, view: memoryview, got: int, what: str, announced: int) -> None:
        """Receive into ``view[got:]`` until it is full, each wait bounded by BODY_TIMEOUT."""
        self._body(got, announced)
        try:
            while got < len(view):
                k = self._recv_into(view[got:])
                if not k:
                    raise EOFError(f"peer closed the connection in the middle of {what}")
                got += k
        except TimeoutError as exc:
            raise self._stalled(got, announced, what) from exc
        finally:
            self._body_done()

    # -- out-of-band buffers (after a frame with FLAG_OOB) ----------------------------------
    def _send_buffers(self, buffers: Sequence[PickleBuffer]) -> None:
        views = [buf.raw() for buf in buffers]
        table = [BUFFER_COUNT.pack(len(views))]
        table += [BUFFER_ENTRY.pack(v.nbytes, BUF_READONLY if v.readonly else 0) for v in views]
        self.send(0, b"".join(table))
        for view in views:
            self._sendall(view)  # from the object's own memory: no copy on this side

    def recv_buffers(self) -> list[Any]:
        """The buffers that follow a FLAG_OOB frame: ``bytes`` for read-only ones (they rebuild
        ``bytes`` and read-only views), ``bytearray`` for the others."""
        _, table = self.recv()
        (count,) = BUFFER_COUNT.unpack_from(table)
        if len(table) != BUFFER_COUNT.size + count * BUFFER_ENTRY.size:
            raise ProtocolError("malformed buffer table")
        out: list[Any] = []
        for i in range(count):
            size, kind = BUFFER_ENTRY.unpack_from(table, BUFFER_COUNT.size + i * BUFFER_ENTRY.size)
            if size > self.max_frame:
                raise ProtocolError(f"a buffer of {size} bytes exceeds the limit of {self.max_frame} bytes")
            out.append(self._read_buffer(size, bool(kind & BUF_READONLY)))
        return out

    def _read_buffer(self, size: int, readonly: bool) -> bytes | bytearray:
        if size <= CHUNK:
            data = self._read(size)
            return data if readonly else bytearray(data)
        # Large: received straight into the object the unpickler gets (one copy, from the peer).
        obj: bytes | bytearray
        obj, view = fresh_buffer(size, readonly)
        start, end = self._start, self._end
        got = min(end - start, size)
        view[:got] = self._view[start : start + got]
        self._start = start + got
        try:
            self._fill(view, got, "a buffer", size)
        finally:
            view.release()
        return obj

    def close(self) -> None:
        """Shut the connection: the peer sees EOF, a thread blocked on it here wakes up. Safe from
        any thread."""
        if self.closed:
            return
        self.closed = True
        self._shut()

    def dispose(self) -> None:
        """Close, and free every resource now (the shared-memory mapping too). Only for the
        transport's sole user: no other thread may be inside send or recv."""
        self.close()

    def __del__(self) -> None:
        # A transport dropped without close() (its client was garbage-collected): close it here,
        # quietly, rather than leave the socket to warn about it.
        if not getattr(self, "closed", True):
            self.close()


class SocketEnd(FramedStream):
    """A framed stream that owns a connected socket: closing the stream shuts the socket."""

    def __init__(self, sock: socket.socket, spin: bool = True) -> None:
        super().__init__(spin)
        self.sock = sock
        self._owner_pid = os.getpid()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _apply_timeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def set_timeout(self, seconds: float | None) -> None:
        self._timeout = seconds
        self.sock.settimeout(seconds)

    def _shut(self) -> None:
        # shutdown() acts on the socket every process shares, close() only on this descriptor: a
        # transport inherited through fork (a Pool worker of the manager, a forked client) must
        # never end its creator's connection, whatever path closes it (stop(), __del__ when the
        # child clears the threads it did not inherit).
        if os.getpid() == self._owner_pid:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sock.close()

    def check_peer(self) -> None:
        """Raise EOFError if the peer closed its end; never blocks, consumes nothing. Linux tells
        it even while unread data waits (POLLRDHUP); elsewhere a peek sees it after the data."""
        if self.closed:
            raise EOFError("the connection was closed")
        if _RDHUP:
            poller = select.poll()
            poller.register(self.sock, _RDHUP | select.POLLHUP)
            if poller.poll(0):
                raise EOFError("peer closed the connection")
            return
        try:
            if not self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                raise EOFError("peer closed the connection")
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise EOFError(f"the connection failed: {exc}") from exc

    def detach_after_fork(self) -> None:
        """Forget the socket without shutting it down: the parent still uses the connection."""
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class StreamTransport(SocketEnd):
    """Frames over a connected stream socket."""

    _peer_stat: str | None = None  # the peer's /proc/<pid>/stat, found at the first peer_cpu(); "": none

    def __init__(self, sock: socket.socket, spin: bool = True) -> None:
        super().__init__(sock, spin)
        # Bound methods of the socket itself: no Python frame per send or blocking receive.
        self._sendall = sock.sendall  # type: ignore[method-assign,assignment]
        self._block_recv_into = sock.recv_into  # type: ignore[method-assign,assignment]
        self._sock_recv_into = sock.recv_into

    def _try_recv_into(self, view: memoryview) -> int | None:
        try:
            return self._sock_recv_into(view, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None

    def serving(self) -> None:
        """A manager's connection thread: read and write the socket in C where built (the end
        becomes a :class:`ServedStream`)."""
        if NATIVE and waiting.gil_enabled():
            self.__class__ = ServedStream
            for name in ("_sendall", "_block_recv_into"):  # the socket's own methods, bound by
                self.__dict__.pop(name, None)  # __init__: the class's C calls now
            self._wait_ms = -1 if self._timeout is None else _ms(self._timeout)

    def peer_cpu(self) -> int:
        """The CPU the peer process last ran on, from its ``/proc`` entry (Linux; a unix socket,
        whose peer's pid the kernel tells: SO_PEERCRED); -1 if unknown (tcp, elsewhere). About
        8 us a call (the entry is opened each time: no descriptor kept per connection): for a
        look now and then (colocate.py's following), not every request."""
        path = self._peer_stat
        if path is None:
            path = self._peer_stat = _peer_stat(self.sock)
        if not path:
            return -1
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                stat = os.pread(fd, 1024, 0)
            finally:
                os.close(fd)
            # The fields after the command name's closing parenthesis: "processor" is the 37th.
            return int(stat.rpartition(b")")[2].split()[36])
        except (OSError, ValueError, IndexError):  # the peer is gone, or a kernel without the field
            return -1

    def drained(self) -> bool:
        """True if no received byte waits in the read-ahead buffer."""
        return self._start == self._end

    def detach(self) -> socket.socket:
        """Hand the socket over to another transport (shared memory); this one is done."""
        self.closed = True
        return self.sock


def _peer_stat(sock: socket.socket) -> str:
    """The path of the peer process's ``/proc/<pid>/stat``, or "" where there is none."""
    cred = getattr(socket, "SO_PEERCRED", None)
    if cred is None or sock.family != getattr(socket, "AF_UNIX", None):
        return ""
    try:
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, cred, struct.calcsize("3i")))[0]
    except (OSError, struct.error):
        return ""
    return f"/proc/{pid}/stat" if pid > 0 else ""


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000 + 0.999))


class ServedStream(StreamTransport):
    """A stream end served by one of a manager's connection threads, which reads and writes the
    socket in C (``_native.c``, "a manager's serving thread on a stream socket") and takes part in
    the serving threads' hand-over of the GIL. With two clients calling at once, each system call
    of a request in Python (the look before the spin, every look of the spin, the reply's send) let
    the GIL go and invited a hand-off to the other serving thread, which this one then waited to
    get back. Made by :meth:`StreamTransport.serving`, never directly."""

    _wait_ms = -1  # the socket's timeout in ms (-1: none), for the C calls

    # FramedStream._recv_into's steps, each one C call (the policy's calls stay Python). The
    # descriptor is the socket's at each call: -1 once closed (EBADF), never a number reused since.
    def _try_recv_into(self, view: memoryview) -> int | None:
        return _native.stream_try(self.sock.fileno(), view)

    def _spin_recv_into(self, view: memoryview, window: int) -> int | None:
        return _native.stream_spin(self.sock.fileno(), view, window)

    def _block_recv_into(self, view: memoryview) -> int:
        return _native.stream_wait(self.sock.fileno(), view, self._wait_ms)

    def _sendall(self, data: bytes | bytearray | memoryview) -> None:
        _native.stream_send(self.sock.fileno(), data, self._wait_ms)

    def _apply_timeout(self, seconds: float | None) -> None:
        self._wait_ms = -1 if seconds is None else _ms(seconds)
        self.sock.settimeout(seconds)

    def set_timeout(self, seconds: float | None) -> None:
        super().set_timeout(seconds)
        self._wait_ms = -1 if seconds is None else _ms(seconds)
