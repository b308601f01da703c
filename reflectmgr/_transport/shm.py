"""Frames through a pair of ring buffers in shared memory, with the unix socket as doorbell.

    client                         one memfd segment (2 rings)                      manager
    send ---write bytes, publish head---> [ring 1: client -> manager] ---read, publish tail---> recv
    recv <--read, publish tail----------- [ring 0: manager -> client] <---write, publish head--- send
      \\___________________ unix socket: one byte = "wake up", EOF = "peer gone" ____________/

Each ring is a single-producer single-consumer byte stream (the framing on top is
:class:`FramedStream`'s). Positions only grow; ``pos % RING_SIZE`` is the offset. A reader spins on
the peer's head for a while (the adaptive window of FramedStream), then announces that it sleeps
and blocks on the socket; a writer that publishes data and finds its reader asleep sends one byte.
The writer of a full ring waits for space the same way. The sleep flag and the position are a
Dekker pair (store mine, fence, load theirs on both sides), so a wake-up is never lost; a blocked
wait still looks again every SAFETY_MS.

The segment is an anonymous memfd passed over the authenticated socket (SCM_RIGHTS): it has no
name, so nothing can open it but the two peers, and nothing outlives them. When either peer dies
the kernel closes its socket; the other one sees EOF at its next wait.
"""

from __future__ import annotations

import mmap
import os
import platform
import select
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pickle import PickleBuffer

from .._wire.framing import HEADER, HEADER_SIZE
from ..errors import ProtocolError, ReflectmgrError
from . import stream as _stream
from .stream import SPIN_NS, SocketEnd, StreamTransport

PREFIX = "shm:"
# Sent as a raw frame right after authentication: "switch this connection to shared memory".
REQUEST = b"#RMSHM#"
# Bytes per direction. A round trip's frames fit many times over; a large value streams through
# it while both sides copy (the ring stays in cache, which beats a segment per message).
RING_SIZE = 1 << 20
# Control block per ring: four 64-byte lines (head, tail, reader asleep, writer asleep).
_CTL = 256
_HEAD, _TAIL, _READER_ASLEEP, _WRITER_ASLEEP = 0, 8, 16, 24
SEGMENT_SIZE = 2 * (_CTL + RING_SIZE)
# A blocked side looks at its ring at least this often, whatever the doorbell says.
SAFETY_MS = 500
# How long a writer spins for space in a full ring before it sleeps.
SPACE_SPIN_NS = 200_000

# The fences. Python has no atomics, but a lock's acquire has acquire semantics and its release has
# release semantics on every platform CPython supports (pthread mutexes or futexes: a locked
# instruction on x86, barriers on ARM and POWER), and an acquire+release pair of an uncontended lock
# orders every earlier load and store before every later one (a full fence, ~80 ns from Python).
#   writer: copy data, RELEASE, store head, FULL, load "reader asleep"  (publish; Dekker pair)
#   reader: load head, ACQUIRE, copy data, RELEASE, store tail, FULL, load "writer asleep"
# The data and the positions are touched only through C calls (memoryview copies), which the C
# compiler cannot reorder. On x86 (TSO) an aligned load already has acquire semantics and an
# aligned store release semantics, so ACQUIRE and RELEASE cost nothing there (_ordered is a no-op);
# only the Dekker pair needs the FULL fence. Elsewhere all three are the lock pair. Only x86_64
# has been run here; other architectures rely on the lock's documented semantics.
_fence_lock = threading.Lock()
_acquire, _release = _fence_lock.acquire, _fence_lock.release
_TSO = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


# A thread inside a fence when another forks would leave the child's copy of the lock taken for
# ever (its first send over shared memory would block). The forking thread holds the fence across
# fork (a fence lasts nanoseconds), and the child gets a fresh lock all the same.
def _hold_fence_for_fork() -> None:
    _fence_lock.acquire()


def _release_fence_after_fork() -> None:
    _fence_lock.release()


def _new_fence_after_fork() -> None:
    global _fence_lock, _acquire, _release
    _fence_lock = threading.Lock()
    _acquire, _release = _fence_lock.acquire, _fence_lock.release


os.register_at_fork(
    before=_hold_fence_for_fork, after_in_parent=_release_fence_after_fork, after_in_child=_new_fence_after_fork
)
_yield = getattr(os, "sched_yield", lambda: None)
_unpack_header = HEADER.unpack_from
_pack_header_into = HEADER.pack_into


def is_shm(address: object) -> bool:
    return isinstance(address, str) and address.startswith(PREFIX)


def socket_path(address: str) -> str:
    return address[len(PREFIX) :]


def new_segment() -> int:
    """A nameless shared-memory file the size of a ring pair (the caller closes it)."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd: int = memfd_create("reflectmgr", getattr(os, "MFD_CLOEXEC", 0))
    else:  # no memfd (macOS): an unlinked temporary file, also nameless
        with tempfile.TemporaryFile(prefix="reflectmgr-") as f:
            fd = os.dup(f.fileno())
    try:
        os.ftruncate(fd, SEGMENT_SIZE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def upgrade_server(stream: StreamTransport) -> ShmTransport:
    """Answer a client's REQUEST: make the segment, pass it over, switch to it."""
    sock = stream.sock
    if sock.family != socket.AF_UNIX or not stream.drained():
        sock.sendall(b"N")
        raise ProtocolError("shared memory was asked for on a connection that cannot pass it")
    fd = new_segment()
    try:
        transport = ShmTransport(stream.detach(), fd, writer_ring=0)
        socket.send_fds(sock, [b"S"], [fd])
    finally:
        os.close(fd)
    return transport


def upgrade_client(stream: StreamTransport) -> ShmTransport:
    """Ask the manager to switch this authenticated connection to shared memory."""
    sock = stream.sock
    stream.send(0, REQUEST)
    # Nothing else comes from the manager until this answer, so the read-ahead buffer is empty
    # and the descriptor is not lost in it.
    msg, fds, _, _ = socket.recv_fds(sock, 16, 1)
    if msg != b"S" or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        if not msg:
            raise EOFError("the manager closed the connection instead of sharing memory")
        raise ReflectmgrError("the manager refused shared memory on this connection")
    try:
        return ShmTransport(stream.detach(), fds[0], writer_ring=1)
    finally:
        os.close(fds[0])


class ShmTransport(SocketEnd):
    """Frames over two shared rings; ``sock`` only carries wake-ups and tells liveness."""

    def __init__(self, sock: socket.socket, fd: int, writer_ring: int, spin: bool = True) -> None:
        super().__init__(sock, spin)
        self._mm = mmap.mmap(fd, SEGMENT_SIZE)
        mem = memoryview(self._mm)
        out_base = writer_ring * (_CTL + RING_SIZE)
        in_base = (1 - writer_ring) * (_CTL + RING_SIZE)
        self._out_ctl = mem[out_base : out_base + _CTL].cast("Q")
        self._out = mem[out_base + _CTL : out_base + _CTL + RING_SIZE]
        self._in_ctl = mem[in_base : in_base + _CTL].cast("Q")
        self._in = mem[in_base + _CTL : in_base + _CTL + RING_SIZE]
        self._head = 0  # what we have published in our out ring
        self._tail = 0  # what we have consumed of our in ring
        self._eof = False
        self._bound: float | None = None  # how long one wait may last (set_timeout, or a body's)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._bell = threading.Lock()  # one sleeper on the socket at a time

    # -- receiving ------------------------------------------------------------------------------
    def recv(self, max_size: int = 0) -> tuple[int, bytes | bytearray]:
        # Fast path: the whole frame lies unwrapped in the ring; copy its payload out once.
        max_size = max_size or self.max_frame
        if self._start == self._end:
            ctl = self._in_ctl
            tail = self._tail
            avail = ctl[_HEAD] - tail
            if not avail:
                self._await()
                avail = ctl[_HEAD] - tail
            start = tail % RING_SIZE
            if avail >= HEADER_SIZE and start + HEADER_SIZE <= RING_SIZE:
                if not _TSO:  # ACQUIRE: the data the head announces is read after the head
                    _acquire()
                    _release()
                length, flags = _unpack_header(self._in, start)
                begin = start + HEADER_SIZE
                end = begin + length
                if end <= RING_SIZE and avail >= HEADER_SIZE + length and length <= max_size:
                    payload = self._in[begin:end].tobytes()
                    self._tail = tail + HEADER_SIZE + length
                    self._publish_tail()
                    return flags, payload
        return super().recv(max_size)

    def _recv_into(self, view: memoryview) -> int:
        n = self._try_recv_into(view)
        if n is None:
            self._await()
            n = self._try_recv_into(view)
        return n or 0  # nothing after a wait: the peer is gone

    def _await(self, seen: int | None = None) -> None:
        """Return once the writer has published past ``seen`` (by default: the ring holds data),
        or the peer is gone (``_eof``)."""
        ctl = self._in_ctl
        tail = self._tail if seen is None else seen
        began = time.perf_counter_ns()
        # Spin first (see FramedStream: one spinner per interpreter, an adaptive window).
        if self._spin_ns and _stream._spinner.acquire(False):
            try:
                deadline = began + self._spin_ns
                spins = 0
                while ctl[_HEAD] == tail:
                    spins += 1
                    if not spins & 15:
                        if time.perf_counter_ns() >= deadline:
                            break
                        _yield()  # give the core to the peer if it waits for one (and the GIL)
                else:
                    return
            finally:
                _stream._spinner.release()
        limit = None if self._bound is None else time.monotonic() + self._bound
        while ctl[_HEAD] == tail and not self._eof:
            ctl[_READER_ASLEEP] = 1
            _acquire()
            _release()
            try:
                if ctl[_HEAD] == tail:
                    self._doze(limit)
            finally:
                ctl[_READER_ASLEEP] = 0
        waited = time.perf_counter_ns() - began
        self._spin_ns = self._spin_max if waited < SPIN_NS else self._spin_ns >> 1

    def _try_recv_into(self, view: memoryview) -> int | None:
        avail = self._in_ctl[_HEAD] - self._tail
        if not avail:
            return None
        if not _TSO:  # ACQUIRE: the data the head announces is read after the head
            _acquire()
            _release()
        n = min(avail, len(view))
        tail = self._tail
        start = tail % RING_SIZE
        first = min(n, RING_SIZE - start)
        view[:first] = self._in[start : start + first]
        if n > first:
            view[first:n] = self._in[: n - first]
        self._tail = tail + n
        self._publish_tail()
        return n

    def _publish_tail(self) -> None:
        ctl = self._in_ctl
        if not _TSO:  # RELEASE: the data is copied out before the writer may overwrite it
            _acquire()
            _release()
        ctl[_TAIL] = self._tail
        _acquire()  # FULL (Dekker): the tail is visible before we look at the writer's sleep flag
        _release()
        if ctl[_WRITER_ASLEEP]:  # it waits for the space we just freed
            self._ring()

    # -- sending --------------------------------------------------------------------------------
    def send(self, flags: int, payload: bytes | bytearray | memoryview, buffers: Sequence[PickleBuffer] = ()) -> None:
        # Fast path: header and payload written in place, one publish, no joined copy.
        n = len(payload)
        total = HEADER_SIZE + n
        head = self._head
        start = head % RING_SIZE
        ctl = self._out_ctl
        if not buffers and start + total <= RING_SIZE and head + total - ctl[_TAIL] <= RING_SIZE:
            ring = self._out
            _pack_header_into(ring, start, n, flags)
            ring[start + HEADER_SIZE : start + total] = payload
            self._publish_head(head + total)
            return
        super().send(flags, payload, buffers)

    def _sendall(self, data: bytes | bytearray | memoryview) -> None:
        src = memoryview(data)
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")
        total = len(src)
        done = 0
        ctl, ring = self._out_ctl, self._out
        while done < total:
            head = self._head
            free = RING_SIZE - (head - ctl[_TAIL])
            if not free:
                self._wait_space()
                continue
            n = min(free, total - done)
            start = head % RING_SIZE
            first = min(n, RING_SIZE - start)
            ring[start : start + first] = src[done : done + first]
            if n > first:
                ring[: n - first] = src[done + first : done + n]
            done += n
            self._publish_head(head + n)

    def _publish_head(self, head: int) -> None:
        ctl = self._out_ctl
        self._head = head
        if not _TSO:  # RELEASE: the data is visible before the head that announces it
            _acquire()
            _release()
        ctl[_HEAD] = head
        _acquire()  # FULL (Dekker): the head is visible before we look at the reader's sleep flag
        _release()
        if ctl[_READER_ASLEEP]:  # it sleeps on the doorbell
            self._ring()

    def _wait_space(self) -> None:
        if self._closed:
            raise BrokenPipeError("the connection was closed")
        ctl = self._out_ctl
        full = self._head - RING_SIZE
        deadline = time.perf_counter_ns() + SPACE_SPIN_NS
        while ctl[_TAIL] == full:
            if time.perf_counter_ns() > deadline:
                break
            _yield()
        else:
            return
        limit = None if self._bound is None else time.monotonic() + self._bound
        ctl[_WRITER_ASLEEP] = 1
        try:
            while True:
                _acquire()
                _release()
                if ctl[_TAIL] != full:
                    return
                if self._eof:
                    raise BrokenPipeError("the peer closed the connection")
                self._doze(limit)
        finally:
            ctl[_WRITER_ASLEEP] = 0

    # -- the doorbell ---------------------------------------------------------------------------
    def _ring(self) -> None:
        try:
            self.sock.send(b"!", socket.MSG_DONTWAIT)
        except OSError:
            pass  # a full socket already holds a wake-up; a dead peer shows as EOF on our side

    def _doze(self, deadline: float | None) -> None:
        """Block until a wake-up, EOF, or SAFETY_MS; sets ``_eof`` when the peer is gone."""
        if self._closed:
            raise EOFError("the channel was closed")
        timeout = SAFETY_MS
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out waiting for the peer")
            timeout = min(timeout, int(left * 1000) + 1)
        with self._bell:
            if self._poll.poll(timeout):
                self._drain()

    def _drain(self) -> None:
        """Read the wake-up bytes the socket holds; an empty read means the peer is gone."""
        try:
            if not self.sock.recv(4096, socket.MSG_DONTWAIT):
                self._eof = True
        except BlockingIOError:
            pass
        except OSError:
            self._eof = True

    # -- out-of-band buffers ------------------------------------------------------------------
    def _read_buffer(self, size: int, readonly: bool) -> bytes | bytearray:
        # A buffer that fits the ring is read from it in one copy, once it is there whole (the
        # writer can always complete it: everything before it has been consumed).
        if self._start != self._end or size > RING_SIZE:
            return super()._read_buffer(size, readonly)  # streamed into its final object
        ctl = self._in_ctl
        self._body(0, size)
        try:
            while True:
                seen = ctl[_HEAD]  # read once: a publish between two reads would be waited for twice
                if seen - self._tail >= size:
                    if not _TSO:  # ACQUIRE: the buffer is read after the head that announced it
                        _acquire()
                        _release()
                    break
                self._await(seen)
                if ctl[_HEAD] == seen:
                    raise EOFError("peer closed the connection in the middle of a buffer")
        except TimeoutError as exc:
            raise self._stalled(ctl[_HEAD] - self._tail, size, "a buffer") from exc
        finally:
            self._body_done()
        tail = self._tail
        start = tail % RING_SIZE
        if start + size <= RING_SIZE:
            views = [self._in[start : start + size]]
        else:
            views = [self._in[start:], self._in[: size - (RING_SIZE - start)]]
        data: bytes | bytearray = b"".join(views) if readonly else bytearray().join(views)
        self._tail = tail + size
        self._publish_tail()
        return data

    # -- the rest of the transport (the socket's own: see SocketEnd) ----------------------------
    def set_timeout(self, seconds: float | None) -> None:
        self._timeout = self._bound = seconds

    def _apply_timeout(self, seconds: float | None) -> None:
        self._bound = seconds

    def dispose(self) -> None:
        """Close and unmap the rings now (the sole user's path: a failed handshake, the end of a
        manager connection), instead of whenever this object is collected."""
        self.close()
        for view in (self._out_ctl, self._out, self._in_ctl, self._in):
            view.release()
        try:
            self._mm.close()
        except BufferError:
            pass  # a view of it is still alive somewhere: unmapped when that goes
