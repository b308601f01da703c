"""In-process channels: shared-memory rings between interpreters of one process.

    owner (main interpreter)                      client (any interpreter of this process)
    InprocListener: accept  <--- 16 bytes: a socket's fd, a memfd, spin, futex --- connect_inproc()
    ShmTransport(socket, rings)  <=============== frames ===============> ShmTransport

The client makes a socketpair and a ring segment and hands the owner its end and the segment by
descriptor number (one process, one descriptor table). A record of 16 bytes is below PIPE_BUF, so
concurrent connects never interleave. The address is a string ``"inproc:<pid>:<fd>"``; it means
nothing outside this process.
"""

from __future__ import annotations

import os
import socket
import struct

from . import waiting
from .shm import ShmTransport, new_segment

PREFIX = "inproc:"
# (the owner's end of a socketpair, the ring segment, spin flag, futex flag): the first two are
# descriptors of this process; the client's interpreter decides how the two ends wake each other
_RECORD = struct.Struct("iiii")


def in_main_interpreter() -> bool:
    """True unless running in a subinterpreter (which has its own GIL on 3.13+)."""
    try:
        import _interpreters  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return True  # before 3.13: no subinterpreters we create
    return bool(_interpreters.get_current()[0] == _interpreters.get_main()[0])


def is_inproc(address: object) -> bool:
    return isinstance(address, str) and address.startswith(PREFIX)


class InprocListener:
    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        self.address = f"{PREFIX}{os.getpid()}:{self._w}"

    def accept(self) -> ShmTransport:
        record = os.read(self._r, _RECORD.size)
        if len(record) != _RECORD.size:
            raise OSError("the in-process listener was closed")
        sock_fd, segment, spin, futex = _RECORD.unpack(record)
        if sock_fd < 0:
            raise OSError("the in-process listener was woken to stop")
        try:
            sock = socket.socket(fileno=sock_fd)
            return ShmTransport(sock, segment, writer_ring=0, spin=bool(spin), futex=bool(futex) and waiting.FUTEX)
        finally:
            os.close(segment)  # mapped: the client's copy of the number is ours to close

    def establish(self, accepted: ShmTransport, timeout: float) -> ShmTransport:
        return accepted  # the rings of one process: nothing to secure

    def wake(self) -> None:
        """Make a blocked ``accept`` return (the server is stopping); a no-op in a forked child,
        whose copy of the pipe would stop its parent's listener."""
        if self.address.startswith(f"{PREFIX}{os.getpid()}:"):
            os.write(self._w, _RECORD.pack(-1, -1, 0, 0))

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


def connect_inproc(address: str) -> ShmTransport:
    """Open a channel to the in-process owner at ``address``; raises OSError if it is not here."""
    pid, fd = address[len(PREFIX) :].split(":")
    if int(pid) != os.getpid():
        raise ConnectionRefusedError(f"{address} is an in-process address of another process")
    # Spinning pays only between interpreters with separate GILs: the main interpreter's own
    # client shares the owner's GIL, so neither end spins for it.
    spin = not in_main_interpreter()
    mine, theirs = socket.socketpair()
    segment = new_segment()
    try:
        transport = ShmTransport(mine, segment, writer_ring=1, spin=spin)
        os.write(int(fd), _RECORD.pack(theirs.fileno(), segment, spin, transport.futex))
    except BaseException:
        for s in (mine, theirs):
            s.close()
        os.close(segment)
        raise
    theirs.detach()  # the owner's socket object owns the descriptor now, and closes the segment
    return transport
