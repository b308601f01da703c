"""Frame format: a fixed 9-byte header, then the payload.

    +----------------+-------+-----------------+
    | length: u64 BE | flags | payload (pickle) |
    +----------------+-------+-----------------+

A frame with FLAG_OOB is followed by a table frame (a u32 count, then per buffer its size as u64
and a kind byte, BUF_READONLY or 0), then the buffers' bytes in order, unframed.

Before authentication a peer may send only tiny frames (``MAX_PREAUTH``); anything larger, or any
header that does not parse, drops the connection without reading or unpickling more. After it, a
frame's payload and each out-of-band buffer may be at most the connection's ``max_frame``
(MAX_FRAME unless ``Manager(max_frame=...)`` says otherwise), checked before anything is allocated.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!QB")
HEADER_SIZE = HEADER.size

# Challenge and answer frames are ~60 bytes; 512 leaves room and still rejects garbage early.
MAX_PREAUTH = 512
# After authentication peers are trusted, but a corrupt length must not allocate the machine away.
# Large values travel as out-of-band buffers, each under the same limit: 2 GiB leaves room for big
# arrays while a corrupt header cannot ask for more (and a payload's memory grows only as its
# bytes arrive, see FramedStream._read).
MAX_FRAME = 2 << 30
# Once a frame's header has arrived, its body must keep coming: no byte for this long after
# authentication drops the connection (a stalled peer must not hold a large buffer for ever).
BODY_TIMEOUT = 30.0


BUFFER_COUNT = struct.Struct("!I")
BUFFER_ENTRY = struct.Struct("!QB")
BUF_READONLY = 0x01  # rebuilt from an immutable buffer (bytes, a read-only view)


_unpack_from, _pack_into = HEADER.unpack_from, HEADER.pack_into
Buffer = bytes | bytearray | memoryview


def pack_header(length: int, flags: int) -> bytes:
    return HEADER.pack(length, flags)


def unpack_header(data: Buffer, offset: int = 0) -> tuple[int, int]:
    """``(length, flags)`` of the header at ``data[offset:]``."""
    length, flags = _unpack_from(data, offset)
    return int(length), int(flags)


def whole_frame(buf: Buffer, start: int, avail: int, limit: int) -> tuple[int, int, int] | None:
    """If ``buf[start : start + avail]`` begins with a whole frame whose payload is at most
    ``limit`` bytes: ``(flags, begin, end)``, its payload being ``buf[begin:end]``. Otherwise None
    (the transport's general path then waits for the rest, or refuses the frame)."""
    if avail < HEADER_SIZE:
        return None
    length, flags = _unpack_from(buf, start)
    if avail - HEADER_SIZE < length or length > limit:
        return None
    begin = start + HEADER_SIZE
    return flags, begin, begin + length


def write_frame(buf: bytearray | memoryview, start: int, flags: int, payload: Buffer) -> int:
    """Write a frame at ``buf[start:]`` (the caller made sure it fits); returns its size."""
    n = len(payload)
    _pack_into(buf, start, n, flags)
    buf[start + HEADER_SIZE : start + HEADER_SIZE + n] = payload
    return HEADER_SIZE + n
