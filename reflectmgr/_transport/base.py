"""The contract every transport keeps.

A transport moves frames (``flags``, ``payload``) in order, both ways, between exactly two peers.
``send`` and ``recv`` may be called from different threads, but never two ``send`` (or two
``recv``) at once: the layer above owns each direction. ``recv`` blocks until a whole frame is
there; when the peer is gone it raises :class:`EOFError` (clean close) or :class:`OSError`.
``send`` with ``buffers`` (a frame flagged FLAG_OOB) sends them after the frame; the receiver
collects them with ``recv_buffers`` right after ``recv``.
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

    def close(self) -> None: ...

    def dispose(self) -> None: ...

    @property
    def closed(self) -> bool: ...
