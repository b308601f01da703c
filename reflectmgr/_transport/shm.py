"""Frames through a pair of ring buffers in shared memory, with the unix socket as doorbell.

    client                         one memfd segment (2 rings)                      manager
    send ---write bytes, publish head---> [ring 1: client -> manager] ---read, publish tail---> recv
    recv <--read, publish tail----------- [ring 0: manager -> client] <---write, publish head--- send
      \\___________________ unix socket: one byte = "wake up", EOF = "peer gone" ____________/

Each ring is a single-producer single-consumer byte stream (the framing on top is
:class:`FramedStream`'s). Positions only grow; ``pos % RING_SIZE`` is the offset. A reader may spin
on the peer's head for a short while (see ``waiting.py``: only while the peer runs, a core is
free and spinning has paid lately), then announces that it sleeps and blocks: on a futex on the
head's low word (Linux), else on the socket. A writer that publishes data and finds its reader
asleep wakes it (FUTEX_WAKE, or one byte on the socket); otherwise it makes no system call. The
writer of a full ring waits for space the same way, on the tail. The sleep flag and the position
are a Dekker pair (store mine, fence, load theirs on both sides), so a wake-up is never lost. A
peer that died without closing shows as EOF on the socket: a futex sleeper is woken for it by the
process's hang-up watcher (``hangup.py``, epoll), which also repeats the wake-ups of a close for
a while (a sleeper about to sleep would miss a single one); a sleeper otherwise sleeps for
WATCHED_SAFETY_S, so an idle connection makes no wake-up. Without the watcher (not Linux, or a
process that cannot start its thread) a blocked wait looks again every SAFETY_MS.

The segment is an anonymous memfd passed over the authenticated socket (SCM_RIGHTS): it has no
name, so nothing can open it but the two peers, and nothing outlives them. When either peer dies
the kernel closes its socket; the other one sees EOF at its next wait.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import select
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pickle import PickleBuffer
from typing import TypeGuard

from .._wire.framing import HEADER_SIZE, unpack_header, whole_frame, write_frame
from .._wire.opcodes import FLAG_OOB
from ..errors import ProtocolError, ReflectmgrError
from . import hangup, waiting
from .base import Transport
from .stream import SocketEnd, StreamTransport

PREFIX = "shm:"
# Sent as a raw frame right after authentication: "switch this connection to shared memory".
REQUEST = b"#RMSHM#"
# Bytes per direction. A round trip's frames fit many times over; a large value streams through
# it while both sides copy (the ring stays in cache, which beats a segment per message).
RING_SIZE = 1 << 20
# Control block per ring: six 64-byte lines (head, tail, reader asleep, writer asleep; on a
# request ring "read by its own thread": then the client wakes that thread, never the bell; and
# when the writer woke its sleeping reader, so that the reader learns how soon the data came).
_CTL = 384
_HEAD, _TAIL, _READER_ASLEEP, _WRITER_ASLEEP, _DIRECT, _WOKEN_AT = 0, 8, 16, 24, 32, 40
_READER_CPU = 17  # on the "reader asleep" line: the CPU the reader last ran on, plus one
_CLOSED = 41  # on the writer's last line: its side closed the connection (its reader stops waiting)
SEGMENT_SIZE = 2 * (_CTL + RING_SIZE)
# A blocked side looks at its ring, and at the socket for EOF, at least this often; where the
# hang-up watcher wakes it when the peer is gone, every WATCHED_SAFETY_S (a look that should
# never find anything: a belt).
SAFETY_MS = 200
WATCHED_SAFETY_S = 30.0
# How the two ends wake each other: decided by the manager, told in its answer to REQUEST. With
# the futex, the manager also passes its *bell*: one page that every client maps, where the
# manager's dispatcher sleeps while no ring has a request (see _owner/dispatcher.py).
WAKE_FUTEX, WAKE_SOCKET = b"F", b"S"
BELL_SIZE = 4096
# u64 indices: the futex word; "the dispatcher sleeps" (its own line), the CPU it last ran on plus
# one, when it began its last sleep and when a client last rang it (perf_counter_ns)
_BELL_WORD, _BELL_ASLEEP, _BELL_CPU, _BELL_SINCE, _BELL_RUNG_AT = 0, 8, 9, 10, 11

# The fences. Python has no atomics, but a lock's acquire has acquire semantics and its release has
# release semantics on every platform CPython supports (pthread mutexes or futexes: a locked
# instruction on x86, barriers on ARM and POWER), and an acquire+release pair of an uncontended lock
# orders every earlier load and store before every later one (a full fence, ~80 ns from Python).
#   writer: copy data, RELEASE, store head, FULL, load "reader asleep"  (publish; Dekker pair)
#   reader: load head, ACQUIRE, copy data, RELEASE, store tail, FULL, load "writer asleep"
# The data and the positions are touched only through C calls (memoryview copies), which the C
# compiler cannot reorder. On x86 (TSO) an aligned load already has acquire semantics and an
# aligned store release semantics, so ACQUIRE and RELEASE cost nothing there; only the Dekker pair
# needs the FULL fence. Elsewhere all three are a full fence too. Each is ``_full()``: one C call
# where _native.c was built (below), else the lock pair. Only x86_64 has been run here; other
# architectures rely on the C11 fence's and the lock's documented semantics.
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
_now = time.perf_counter_ns

# The ring's common case in C (_native.c: a whole frame in or out, the sleep), where it was built
# for this very layout; the Python below does the same on the same bytes, so the two sides of a
# connection may differ. REFLECTMGR_NATIVE=0 runs the Python.
_native = waiting.NATIVE_MODULE
_LAYOUT = (
    *(_HEAD, _TAIL, _READER_ASLEEP, _WRITER_ASLEEP, _DIRECT, _WOKEN_AT, _CLOSED, HEADER_SIZE),
    *(_READER_CPU, _BELL_ASLEEP, _BELL_CPU),  # take(): where the peer waits, and the dispatcher
)
if getattr(_native, "LAYOUT", None) != _LAYOUT:
    _native = None  # built for another layout (a stale build): the Python path


def _lock_pair() -> None:
    _acquire()
    _release()


# A fence in one C call where the module was built: between the lock pair's two calls a collection
# or a signal handler may run code that fences too, on this thread, which would wait for ever.
_full = getattr(_native, "fence", None) or _lock_pair


def is_shm(address: object) -> bool:
    return isinstance(address, str) and address.startswith(PREFIX)


def socket_path(address: str) -> str:
    return address[len(PREFIX) :]


def new_segment(size: int = SEGMENT_SIZE) -> int:
    """A nameless shared-memory file, by default the size of a ring pair (the caller closes it)."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd: int = memfd_create("reflectmgr", getattr(os, "MFD_CLOEXEC", 0))
    else:  # no memfd (macOS): an unlinked temporary file, also nameless
        with tempfile.TemporaryFile(prefix="reflectmgr-") as f:
            fd = os.dup(f.fileno())
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Bell:
    """The manager's bell page: a dispatcher sleeps on it, a client that published a request and
    finds it asleep rings it. The sleeper clears the word, raises its flag, looks at every ring,
    then waits while the word is still 0; a ringer sets the word to 1 (so a ring between the last
    look and the wait is never lost) and wakes it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._mm = mmap.mmap(fd, BELL_SIZE)
        self.words = memoryview(self._mm).cast("Q")
        self._anchor = ctypes.c_char.from_buffer(self._mm)
        self.address = waiting.word(ctypes.addressof(self._anchor) + 8 * _BELL_WORD + waiting.low_word_offset())

    @classmethod
    def create(cls) -> Bell:
        fd = new_segment(BELL_SIZE)
        return cls(fd)

    def ring(self) -> None:
        """From a client, after publishing: wake the dispatcher if (and only if) it sleeps."""
        try:
            words = self.words
            if words[_BELL_ASLEEP]:
                words[_BELL_RUNG_AT] = _now()  # CLOCK_MONOTONIC: the same clock in every process
                words[_BELL_WORD] = 1
                waiting.futex_wake(self.address)
        except ValueError:  # closed: the manager is stopping, or the client is leaving
            pass

    def mark_cpu(self) -> None:
        """The dispatcher is about to spin: where (a client on that CPU then sleeps, not spins)."""
        self.words[_BELL_CPU] = waiting.current_cpu() + 1

    def prepare(self) -> None:
        """The dispatcher is about to sleep: clear the word, raise the flag (then look, then sleep)."""
        words = self.words
        words[_BELL_WORD] = 0
        words[_BELL_CPU] = waiting.current_cpu() + 1
        words[_BELL_SINCE] = _now()
        words[_BELL_ASLEEP] = 1
        _full()  # FULL (Dekker): the flag is visible before the dispatcher's last look

    def wake(self) -> None:
        """Wake the dispatcher whether or not it sleeps (the server is stopping)."""
        try:
            self.words[_BELL_WORD] = 1
            waiting.futex_wake(self.address)
        except ValueError:  # closed: the dispatcher saw the server stop and is gone already
            pass

    def sleep(self, seconds: float) -> None:
        waiting.futex_wait(self.address, 0, seconds)

    def awake(self) -> None:
        self.words[_BELL_ASLEEP] = 0

    def arrival(self) -> int:
        """How long after the dispatcher's last :meth:`prepare` a client rang (ns); if none rang
        since, how long ago that was. The ringer's stamp, not when the sleeper woke: a wake-up of an
        idle virtual CPU alone can take longer than a spin."""
        words = self.words
        since, rung = words[_BELL_SINCE], words[_BELL_RUNG_AT]
        return (rung if rung > since else _now()) - since

    def close(self) -> None:
        self.words.release()
        self._anchor = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


def dispatched(transport: Transport) -> TypeGuard[ShmTransport]:
    """True for a manager's shared-memory connection whose client rings the dispatcher's bell."""
    return isinstance(transport, ShmTransport) and transport.belled


def upgrade_server(stream: Transport, bell: Bell | None = None) -> ShmTransport:
    """Answer a client's REQUEST: make the segment, pass it over (with the bell), switch to it."""
    if not isinstance(stream, StreamTransport):  # already shared memory (in-process), or TCP-like
        raise ProtocolError("shared memory was asked for on a connection that cannot pass it")
    sock = stream.sock
    if sock.family != socket.AF_UNIX or not stream.drained():
        sock.sendall(b"N")
        raise ProtocolError("shared memory was asked for on a connection that cannot pass it")
    fd = new_segment()
    try:
        wake = WAKE_FUTEX if waiting.FUTEX else WAKE_SOCKET
        transport = ShmTransport(stream.detach(), fd, writer_ring=0, futex=wake == WAKE_FUTEX)
        fds = [fd] if bell is None or wake != WAKE_FUTEX else [fd, bell.fd]
        transport.belled = len(fds) == 2
        socket.send_fds(sock, [wake], fds)
    finally:
        os.close(fd)
    return transport


def upgrade_client(stream: Transport) -> ShmTransport:
    """Ask the manager to switch this authenticated connection to shared memory."""
    if not isinstance(stream, StreamTransport):
        raise ReflectmgrError("only a unix-socket connection can switch to shared memory")
    sock = stream.sock
    stream.send(0, REQUEST)
    # Nothing else comes from the manager until this answer, so the read-ahead buffer is empty
    # and the descriptor is not lost in it.
    msg, fds, _, _ = socket.recv_fds(sock, 16, 2)
    try:
        if msg == WAKE_FUTEX and not waiting.FUTEX and fds:
            raise ReflectmgrError("the manager wakes shared-memory peers with a futex, which this process cannot use")
        if msg not in (WAKE_FUTEX, WAKE_SOCKET) or not 1 <= len(fds) <= 2:
            if not msg:
                raise EOFError("the manager closed the connection instead of sharing memory")
            raise ReflectmgrError("the manager refused shared memory on this connection")
        bell = Bell(fds[1]) if len(fds) == 2 else None
        if bell is not None:
            fds.pop()  # the Bell owns its descriptor now
        transport = ShmTransport(stream.detach(), fds[0], writer_ring=1, futex=msg == WAKE_FUTEX)
        transport.bell = bell
        return transport
    finally:
        for fd in fds:
            os.close(fd)


def _on_hangup(in_closed: int, words: tuple[object, ...]) -> tuple[Callable[[], None], Callable[[], None]]:
    """For the hang-up watcher (hangup.py): ``gone`` marks our in-ring closed by its writer (the
    peer is gone: what its own close would have written) and wakes our sleepers; ``wake`` wakes
    them (they look, and see the close). They hold addresses, not the transport: a transport
    dropped without close() must still be collected (its __del__ closes it, which unregisters it
    before its memory goes; the watcher calls ``gone`` only while it is registered)."""
    flag = ctypes.c_uint64.from_address(in_closed)

    def wake() -> None:
        for word in words:
            waiting.futex_wake(word)

    def gone() -> None:
        flag.value = 1
        _full()  # FULL: the flag is visible before the wake-up (the sleeper looks at it after)
        wake()

    return gone, wake


class RingFull(Exception):  # noqa: N818 - a signal to hand the send over, not an error
    """A frame that does not fit in the ring's free space, refused unsent (see ``refuse_wait``)."""

    def __init__(self, flags: int, payload: bytes | bytearray | memoryview, buffers: Sequence[PickleBuffer]) -> None:
        super().__init__("the ring is full")
        self.frame = (flags, payload, buffers)


def _frame_size(total: int, buffers: Sequence[PickleBuffer]) -> int:
    """Ring bytes a frame of ``total`` bytes (header included) takes with its buffers."""
    if not buffers:
        return total
    sizes = [buf.raw().nbytes for buf in buffers]
    return total + HEADER_SIZE + 4 + 9 * len(sizes) + sum(sizes)


class ShmTransport(SocketEnd):
    """Frames over two shared rings; ``sock`` only carries wake-ups and tells liveness."""

    def __init__(
        self, sock: socket.socket, fd: int, writer_ring: int, spin: bool = True, futex: bool = waiting.FUTEX
    ) -> None:
        super().__init__(sock, spin)
        self._watch: hangup.Watch | None = None  # the hang-up watcher's registration (below)
        # The socket only carries wake-ups (MSG_DONTWAIT both ways) and EOF: in blocking mode, or a
        # timeout left from the handshake would turn a non-blocking look into a wait.
        sock.settimeout(None)
        self._mm = mmap.mmap(fd, SEGMENT_SIZE)
        mem = memoryview(self._mm)
        out_base = writer_ring * (_CTL + RING_SIZE)
        in_base = (1 - writer_ring) * (_CTL + RING_SIZE)
        self._out_ctl = mem[out_base : out_base + _CTL].cast("Q")
        self._out = mem[out_base + _CTL : out_base + _CTL + RING_SIZE]
        self._in_ctl = mem[in_base : in_base + _CTL].cast("Q")
        self._in = mem[in_base + _CTL : in_base + _CTL + RING_SIZE]
        self._eof = False
        self._bound: float | None = None  # how long one wait may last (set_timeout, or a body's)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._bell = threading.Lock()  # one sleeper on the socket at a time
        self.futex = futex
        self._native = _native if futex else None  # its send wakes with the futex
        # The common frame's take and send in C, with this side's views and policy held there.
        self._ends = (
            _native.Ends(self._in_ctl, self._in, self._out_ctl, self._out, self._spin) if futex and _native else None
        )
        self._bell_page: Bell | None = None  # a client's: the manager's dispatcher sleeps on it
        # Set while the manager's dispatcher sends on this ring: a frame that does not fit in the
        # free space raises RingFull instead of waiting (the connection's own thread sends it).
        self.refuse_wait = False
        self.belled = False  # a manager's: the client rings the dispatcher's bell after each request
        if futex:  # the words a sleeper waits on: the low halves of our in-ring head, our out-ring tail
            self._anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(self._mm)
            base, low = ctypes.addressof(self._anchor), waiting.low_word_offset()
            head_word = base + in_base + 8 * _HEAD + low
            tail_word = base + out_base + 8 * _TAIL + low
            # The words a peer or a local closer wakes: the peer's in-ring head and out-ring tail too.
            self._words = tuple(
                waiting.word(address)
                for address in (
                    head_word,
                    tail_word,
                    base + out_base + 8 * _HEAD + low,
                    base + in_base + 8 * _TAIL + low,
                )
            )
        # How long one sleep may last with nothing new: see WATCHED_SAFETY_S.
        self._safety = SAFETY_MS / 1000
        if futex:
            gone, wake = _on_hangup(base + in_base + 8 * _CLOSED, self._words[:2])
            self._watch = hangup.watch(sock.fileno(), gone, wake)
        if self._watch is not None:
            self._safety = WATCHED_SAFETY_S

    # -- the positions and the bell -------------------------------------------------------------
    @property
    def _tail(self) -> int:
        """What we have consumed of our in ring: its TAIL, which only we write (Ends reads it there)."""
        tail: int = self._in_ctl[_TAIL]
        return tail

    @property
    def _head(self) -> int:
        """What we have published in our out ring: its HEAD, which only we write (Ends reads it there)."""
        head: int = self._out_ctl[_HEAD]
        return head

    @property
    def bell(self) -> Bell | None:
        """A client's: the manager's dispatcher sleeps on it (None: it does not)."""
        return self._bell_page

    @bell.setter
    def bell(self, bell: Bell | None) -> None:
        self._bell_page = bell
        if self._ends is not None:
            self._ends.bell = bell

    # -- receiving ------------------------------------------------------------------------------
    def recv(self, max_size: int = 0) -> tuple[int, bytes | bytearray]:
        # Fast path: the whole wait in one call (Ends.take, C): the frame if it lies whole and
        # unwrapped in the ring, else the spin and the sleep. Else (it wraps, it is large, a
        # timeout, the peer is gone): the general path, StreamTransport's.
        ends = self._ends
        if ends is not None and self._start == self._end and not self._eof:
            if self.closed:
                raise EOFError("the channel was closed")
            bound = self._bound
            if bound is None:
                got = ends.take(max_size or self.max_frame, self._safety)
                if type(got) is tuple:
                    return got
                deadline = None
            else:
                deadline = time.monotonic() + bound
                got = ends.take(max_size or self.max_frame, self._sleep_bound(deadline))
            if type(got) is int:
                got = self._take_again(got, max_size or self.max_frame, deadline)
            if got is not None:
                taken: tuple[int, bytes] = got
                return taken
        elif self._native is None and self._start == self._end:
            max_size = max_size or self.max_frame
            ctl = self._in_ctl
            tail = self._tail
            avail = ctl[_HEAD] - tail
            if not avail:
                self._await()
                avail = ctl[_HEAD] - tail
            start = tail % RING_SIZE
            if not _TSO:  # ACQUIRE: the data the head announces is read after the head
                _full()
            frame = whole_frame(self._in, start, min(avail, RING_SIZE - start), max_size)
            if frame is not None:  # not split by the end of the ring
                flags, begin, end = frame
                payload = self._in[begin:end].tobytes()
                self._publish_tail(tail + end - start)
                return flags, payload
        return super().recv(max_size)

    def _take_again(self, woke: int, max_size: int, deadline: float | None) -> tuple[int, bytes] | None:
        """After a take() that slept and brought nothing (``woke`` 1: woken for nothing, a signal,
        the bound) or found the writer closed (2): look around (closed? EOF? past the deadline?)
        and sleep again, without spinning. The frame, or None (EOF, or not a frame take() reads)."""
        ends = self._ends
        assert ends is not None
        while woke != 2:
            self._looked_around()
            if self._eof:
                return None
            got: tuple[int, bytes] | int | None = ends.take(max_size, self._sleep_bound(deadline), False)
            if not isinstance(got, int):
                return got
            woke = got
        self._eof = True
        return None

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
        pos = self._tail if seen is None else seen
        if ctl[_HEAD] != pos:
            return
        spin = self._spin
        cpu = waiting.current_cpu() + 1
        ctl[_READER_CPU] = cpu  # where we wait: a peer on this CPU must not spin against us
        if spin.window:  # a reader that backed off (or never spins) goes straight to sleep
            running, here = self._peer_state(cpu)
            window = spin.begin(running, here)
            if window:
                caught = False
                try:
                    deadline = _now() + window
                    while _now() < deadline:
                        if ctl[_HEAD] != pos:
                            caught = True
                            return
                finally:
                    spin.end(caught)
        began = _now()
        limit = None if self._bound is None else time.monotonic() + self._bound
        native = self._native
        while native is not None and ctl[_HEAD] == pos and not self._eof:
            woke = native.sleep(ctl, pos, self._sleep_bound(limit))  # 0: data, 2: closed, 1: look around
            if woke == 2:
                self._eof = True
            elif woke:
                self._looked_around()
        while ctl[_HEAD] == pos and not self._eof:
            ctl[_READER_ASLEEP] = 1
            _full()  # FULL (Dekker): the flag is visible before we look at the head again
            try:
                if ctl[_CLOSED] and ctl[_HEAD] == pos:  # the writer closed, after its last publish
                    self._eof = True
                elif ctl[_HEAD] == pos:
                    self._sleep(0, pos, limit)
            finally:
                ctl[_READER_ASLEEP] = 0
        if spin.max_ns:
            # How soon after we began to wait the data came (not when we woke: a wake-up on an
            # idle virtual CPU alone can take longer than a spin).
            woken_at = ctl[_WOKEN_AT]
            spin.slept((woken_at if woken_at > began else _now()) - began)

    def _peer_state(self, cpu: int) -> tuple[bool, bool]:
        """(Is the side that will write to us awake?, did it last wait on our CPU, ``cpu``?)
        Its flags: on our out ring (the thread that reads our frames and answers them), or, for a
        client of a dispatching manager, the dispatcher's on the bell. Just woken by us, it still
        reads asleep: it is not on a core yet. On our CPU, it cannot run while we spin: it is
        queued behind us, and a wake-up on the same CPU is cheap (none of an idle CPU's)."""
        out = self._out_ctl
        bell = self._bell_page
        if bell is not None and not out[_DIRECT] and not out[_READER_ASLEEP]:
            words = bell.words
            return not words[_BELL_ASLEEP], words[_BELL_CPU] == cpu
        return not out[_READER_ASLEEP], out[_READER_CPU] == cpu

    def _try_recv_into(self, view: memoryview) -> int | None:
        avail = self._in_ctl[_HEAD] - self._tail
        if not avail:
            return None
        if not _TSO:  # ACQUIRE: the data the head announces is read after the head
            _full()
        n = min(avail, len(view))
        tail = self._tail
        start = tail % RING_SIZE
        first = min(n, RING_SIZE - start)
        view[:first] = self._in[start : start + first]
        if n > first:
            view[first:n] = self._in[: n - first]
        self._publish_tail(tail + n)
        return n

    def _publish_tail(self, tail: int) -> None:
        ctl = self._in_ctl
        if not _TSO:  # RELEASE: the data is copied out before the writer may overwrite it
            _full()
        ctl[_TAIL] = tail
        _full()  # FULL (Dekker): the tail is visible before we look at the writer's sleep flag
        if ctl[_WRITER_ASLEEP]:  # it waits for the space we just freed
            self._wake(3)

    # -- sending --------------------------------------------------------------------------------
    def send(self, flags: int, payload: bytes | bytearray | memoryview, buffers: Sequence[PickleBuffer] = ()) -> None:
        # Fast path: header and payload written in place, one publish, no joined copy (Ends.send, C).
        ends = self._ends
        if ends is not None and not buffers:
            woke = ends.send(flags, payload)  # 1: woke the reader, 0: did not, -1: no room (nothing written)
            if woke > 0:
                waiting.load.stale()  # as futex_wake does: the task we woke wants a core
                return
            if not woke:
                if self._bell_page is not None and not self._out_ctl[_DIRECT]:  # the manager's dispatcher reads it
                    self._bell_page.ring()
                return
        n = len(payload)
        total = HEADER_SIZE + n
        head = self._head
        ctl = self._out_ctl
        if self.refuse_wait and _frame_size(total, buffers) > RING_SIZE - (head - ctl[_TAIL]):
            raise RingFull(flags, payload, buffers)
        start = head % RING_SIZE
        if not buffers and start + total <= RING_SIZE and head + total - ctl[_TAIL] <= RING_SIZE:
            self._publish_head(head + write_frame(self._out, start, flags, payload))
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
        if not _TSO:  # RELEASE: the data is visible before the head that announces it
            _full()
        ctl[_HEAD] = head
        _full()  # FULL (Dekker): the head is visible before we look at the reader's sleep flag
        if ctl[_READER_ASLEEP]:  # it sleeps: wake it (and only then make a system call)
            ctl[_WOKEN_AT] = _now()  # CLOCK_MONOTONIC: the same clock in every process
            self._wake(2)
        elif self._bell_page is not None and not ctl[_DIRECT]:  # the manager's dispatcher reads this ring
            self._bell_page.ring()

    def _wait_space(self) -> None:
        """Block until the reader frees space in our full out ring (it wakes us when it does)."""
        if self.closed:
            raise BrokenPipeError("the connection was closed")
        ctl = self._out_ctl
        full = self._head - RING_SIZE
        limit = None if self._bound is None else time.monotonic() + self._bound
        ctl[_WRITER_ASLEEP] = 1
        try:
            while True:
                _full()  # FULL (Dekker): the flag is visible before we look at the tail again
                if ctl[_TAIL] != full:
                    return
                if self._eof:
                    raise BrokenPipeError("the peer closed the connection")
                self._sleep(1, full, limit)
        finally:
            ctl[_WRITER_ASLEEP] = 0

    # -- sleeping and waking ------------------------------------------------------------------
    def _sleep_bound(self, deadline: float | None) -> float:
        """How long the next sleep may last (seconds): ``_safety`` (SAFETY_MS, or WATCHED_SAFETY_S
        where the hang-up watcher wakes us), or less to meet ``deadline``;
        raises EOFError if we closed, TimeoutError past the deadline."""
        if self.closed:
            raise EOFError("the channel was closed")
        timeout = self._safety
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out waiting for the peer")
            timeout = min(timeout, left)
        return timeout

    def _looked_around(self) -> None:
        """After a sleep that ended with nothing new (woken for nothing, or its bound): did we
        close meanwhile (EOFError), is the peer still there (``_eof``)?"""
        if self.closed:
            raise EOFError("the channel was closed")
        self._drain()

    def _sleep(self, word: int, seen: int, deadline: float | None) -> None:
        """Block until woken, EOF, or ``_safety``; ``word`` 0 is our in-ring head, 1 our out-ring
        tail, ``seen`` the value we wait to change. Sets ``_eof`` when the peer is gone."""
        timeout = self._sleep_bound(deadline)
        if not self.futex:
            with self._bell:
                if self._poll.poll(int(timeout * 1000) + 1):
                    self._drain()
            return
        if word == 1 and self._watch is not None:
            # A writer waiting for space: nothing in the ring tells it that its reader is gone (a
            # reader does see the watcher's mark), so it looks at the socket first (rare: a full ring).
            self._drain()
            if self._eof:
                return
        waiting.futex_wait(self._words[word], seen, timeout)
        if (self._in_ctl[_HEAD] if word == 0 else self._out_ctl[_TAIL]) == seen:
            self._looked_around()  # woken for nothing, or timed out
        elif self.closed:
            raise EOFError("the channel was closed")

    def _wake(self, word: int) -> None:
        """Wake the peer sleeping on ``word`` (2: its in-ring head, 3: its out-ring tail)."""
        if self.futex:
            waiting.futex_wake(self._words[word])
            return
        try:
            self.sock.send(b"!", socket.MSG_DONTWAIT)
        except OSError:
            pass  # a full socket already holds a wake-up; a dead peer shows as EOF on our side

    def _drain(self) -> None:
        """Read the wake-up bytes the socket holds; an empty read means the peer is gone."""
        try:
            if not self.sock.recv(4096, socket.MSG_DONTWAIT):
                self._eof = True
        except BlockingIOError:
            pass
        except OSError:
            self._eof = True

    def _shut(self) -> None:
        # The peer sees EOF on the socket; then wake every sleeper on the rings, theirs (to look at
        # the socket now) and ours (a thread of ours blocked here). The closed flag first: a reader
        # that looks after it sees it. One that looked before it and has not yet entered its futex
        # wait misses this wake-up (the futex word does not change on a close): the hang-up
        # watcher repeats the wake-ups for a while (``closing``; the peer's watcher does the same
        # when our socket ends). Never in a forked child: the connection is its parent's.
        if os.getpid() == self._owner_pid:
            self._out_ctl[_CLOSED] = 1
            _full()
            if self._watch is not None:
                hangup.closing(self._watch)  # before the socket's number is free again
        super()._shut()
        if self.futex and self._anchor is not None:
            for address in self._words:
                waiting.futex_wake(address)

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
                        _full()
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
        self._publish_tail(tail + size)
        return data

    # -- the rest of the transport (the socket's own: see SocketEnd) ----------------------------
    def set_timeout(self, seconds: float | None) -> None:
        self._timeout = self._bound = seconds

    def _apply_timeout(self, seconds: float | None) -> None:
        self._bound = seconds

    def peer_cpu(self) -> int:
        """The CPU the peer last waited on (it says so on our out ring when it begins a wait),
        or -1 if it has not waited yet."""
        return int(self._out_ctl[_READER_CPU]) - 1

    def leaving_cpu(self) -> None:
        """Our thread is about to move off the CPU it last waited on (colocate.py, APART): our
        in ring no longer names one, until our next wait does. Else the peer, on that CPU, would
        read that we wait there, and sleep to give us its CPU; woken by us from the other, a
        kernel that packs tasks puts it back beside us."""
        self._in_ctl[_READER_CPU] = 0

    def serving(self) -> None:
        """A manager's connection thread: take part in the serving threads' hand-over of the GIL
        (``_native.c``, "hand-over"), where the C path runs and there is a GIL to hand over."""
        if self._ends is not None and waiting.gil_enabled():
            self._ends.hand = True

    def spin_only_when(self, allowed: Callable[[], bool]) -> None:
        """Spin (as the policy allows) only while ``allowed()``: in a manager, where a spinning
        thread would hold the GIL that the other serving threads need."""
        self._spin.allowed = allowed

    def set_direct(self, direct: bool) -> None:
        """A manager's: say whether the connection's own thread reads this request ring (the
        client then wakes it) or the dispatcher does (the client rings the bell)."""
        self._in_ctl[_DIRECT] = int(direct)
        _full()  # FULL (Dekker): visible before this side looks at the ring again

    def wait_data(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the next frame to begin arriving (spinning as the policy
        allows, then asleep on the ring); False if none did. True at EOF too (recv says so)."""
        if self._start != self._end or self._in_ctl[_HEAD] != self._tail:
            return True
        prev, self._bound = self._bound, seconds
        try:
            self._await()
        except TimeoutError:
            return False
        finally:
            self._bound = prev
        return True

    def check_peer(self) -> None:
        """Raise EOFError if the peer is gone (its end of the socket closed); never blocks."""
        self._drain()
        if self._eof or self.closed:
            raise EOFError("peer closed the connection")

    def has_data(self) -> bool:
        """Has anything arrived that is not read yet (cheap: for the dispatcher's scans)?"""
        return self._in_ctl[_HEAD] != self._tail or self._start != self._end

    def frame_ready(self) -> bool | None:
        """Without blocking: True if a whole frame (no out-of-band buffers) can be received now,
        None if nothing has arrived, False if part of one has (it needs a reader that may wait)."""
        buffered = self._end - self._start
        avail = buffered + self._in_ctl[_HEAD] - self._tail
        if not avail:
            return None
        if buffered >= HEADER_SIZE:
            length, flags = unpack_header(self._buf, self._start)
        elif not buffered and avail >= HEADER_SIZE:
            start = self._tail % RING_SIZE
            if start + HEADER_SIZE <= RING_SIZE:
                length, flags = unpack_header(self._in, start)
            else:
                head = self._in[start:].tobytes() + self._in[: HEADER_SIZE - (RING_SIZE - start)].tobytes()
                length, flags = unpack_header(head)
        else:
            return False
        return avail >= HEADER_SIZE + length and not flags & FLAG_OOB and length <= self.max_frame

    def dispose(self) -> None:
        """Close and unmap the rings now (the sole user's path: a failed handshake, the end of a
        manager connection), instead of whenever this object is collected."""
        self.close()
        if self.bell is not None:
            self.bell.close()
            self.bell = None
        if self._watch is not None:
            hangup.forget(self._watch)  # no wake on the words once they are unmapped
        for view in (self._out_ctl, self._out, self._in_ctl, self._in):
            view.release()
        if self.futex:
            self._anchor = None  # its export of the mapping, so that close() can unmap it
        try:
            self._mm.close()
        except BufferError:
            pass  # a view of it is still alive somewhere: unmapped when that goes
