"""Frame format: a fixed 9-byte header, then the payload.

    +----------------+-------+-----------------+
    | length: u64 BE | flags | payload (pickle) |
    +----------------+-------+-----------------+

A frame with FLAG_OOB is followed by a table frame (a u32 count, then per buffer its size as u64
and a kind byte, BUF_READONLY or 0), then the buffers' bytes in order, unframed.

Before authentication a peer may send only tiny frames (``MAX_PREAUTH``); anything larger, or any
header that does not parse, drops the connection without reading or unpickling more.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!QB")
HEADER_SIZE = HEADER.size

# Challenge and answer frames are ~60 bytes; 512 leaves room and still rejects garbage early.
MAX_PREAUTH = 512
# After authentication peers are trusted, but a corrupt length must not allocate the machine away.
MAX_FRAME = 1 << 40


BUFFER_COUNT = struct.Struct("!I")
BUFFER_ENTRY = struct.Struct("!QB")
BUF_READONLY = 0x01  # rebuilt from an immutable buffer (bytes, a read-only view)


def pack_header(length: int, flags: int) -> bytes:
    return HEADER.pack(length, flags)


def unpack_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    length, flags = HEADER.unpack_from(data)
    return int(length), int(flags)
