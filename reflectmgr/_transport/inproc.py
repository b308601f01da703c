"""In-process channels: pipes between interpreters of one process, no socket.

    owner (main interpreter)                      client (any interpreter of this process)
    InprocListener: accept pipe (r, w) <--- 12 bytes: two fresh pipes' fds, spin --- connect()
    FdTransport(c2s read, s2c write)   <=============== frames ===============> FdTransport

A record of 12 bytes is below PIPE_BUF, so concurrent connects never interleave. The address is
a string ``"inproc:<pid>:<fd>"``; it means nothing outside this process.
"""

from __future__ import annotations

import os
import struct

from .stream import FdTransport

PREFIX = "inproc:"
# (client's write end -> our read end, our write end -> client's read end, spin flag)
_RECORD = struct.Struct("iii")


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

    def accept(self) -> FdTransport:
        record = os.read(self._r, _RECORD.size)
        if len(record) != _RECORD.size:
            raise OSError("the in-process listener was closed")
        read_fd, write_fd, spin = _RECORD.unpack(record)
        if read_fd < 0:
            raise OSError("the in-process listener was woken to stop")
        return FdTransport(read_fd, write_fd, spin=bool(spin))

    def wake(self) -> None:
        """Make a blocked ``accept`` return (the server is stopping)."""
        os.write(self._w, _RECORD.pack(-1, -1, 0))

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


def connect_inproc(address: str) -> FdTransport:
    """Open a channel to the in-process owner at ``address``; raises OSError if it is not here."""
    pid, fd = address[len(PREFIX) :].split(":")
    if int(pid) != os.getpid():
        raise ConnectionRefusedError(f"{address} is an in-process address of another process")
    # Spinning pays only between interpreters with separate GILs: the main interpreter's own
    # client shares the owner's GIL, so neither end spins for it.
    spin = not in_main_interpreter()
    c2s_r, c2s_w = os.pipe()  # client -> server
    s2c_r, s2c_w = os.pipe()  # server -> client
    try:
        os.write(int(fd), _RECORD.pack(c2s_r, s2c_w, spin))
    except OSError:
        for f in (c2s_r, c2s_w, s2c_r, s2c_w):
            os.close(f)
        raise
    return FdTransport(s2c_r, c2s_w, spin=spin)
