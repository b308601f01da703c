"""The contract every transport keeps (pipe, tcp, shm, in-process; tests/integration/
test_transport_contract.py checks each against it).

A transport moves frames (``flags``, ``payload``) in order, both ways, between exactly two peers;
the frame format and its limits are ``_wire/framing.py``'s, the only place that writes or parses
a header. ``send`` and ``recv`` may be called from different threads, but never two ``send`` (or
two ``recv``) at once: the layer above owns each direction. ``recv`` blocks until a whole frame
is there; when the peer is gone it raises :class:`EOFError` (clean close) or :class:`OSError`,
and after ``set_timeout(s)`` a wait longer than ``s`` raises :class:`TimeoutError`. ``send``
with ``buffers`` (a frame flagged FLAG_OOB) sends them after the frame; the receiver collects
them with ``recv_buffers`` right after ``recv``. ``close`` may be called from any thread: the
peer sees EOF, and a thread of ours blocked in ``recv`` wakes with EOFError or OSError.
``check_peer`` tells liveness without blocking; ``fileno`` is a descriptor that polls readable
when the peer goes (and, for socket transports, when data arrives).
"""

from __future__ import annotations

from collections.abc import Sequence
from pickle import PickleBuffer
from typing import Any, Protocol


class Transport(Protocol):
    # The largest payload or out-of-band buffer either side accepts (MAX_PREAUTH until
    # authenticated()); a sender refuses larger ones before sending a byte.
    max_frame: int

    def send(
        self, flags: int, payload: bytes | bytearray | memoryview, buffers: Sequence[PickleBuffer] = ...
    ) -> None: ...

    def recv(self, max_size: int = ...) -> tuple[int, bytes | bytearray]: ...

    def authenticated(self, max_frame: int) -> None: ...

    def recv_buffers(self) -> list[Any]: ...

    def set_timeout(self, seconds: float | None) -> None: ...

    def serving(self) -> None:
        """Served by a manager's connection thread from now on (the GIL's hand-over, where a
        transport has one)."""

    def peer_cpu(self) -> int:
        """The CPU the peer last ran or waited on, -1 if unknown; cheap enough for a look every
        millisecond, not for every request."""

    def leaving_cpu(self) -> None:
        """This end's thread is about to run on another CPU than the one it last waited on: the
        peer must no longer take that CPU for ours (where it says so: shared memory)."""

    def close(self) -> None: ...

    def dispose(self) -> None: ...

    def check_peer(self) -> None:
        """Raise EOFError if the peer is gone; never blocks."""

    def fileno(self) -> int: ...

    def detach_after_fork(self) -> None:
        """In a forked child: forget the connection without ending it (the parent still uses it)."""

    closed: bool  # an attribute, not a property: the hot path reads it on every call
