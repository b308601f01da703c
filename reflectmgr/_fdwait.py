"""Waiting for one descriptor to become readable, with ``poll`` rather than ``select``: a process
with more than FD_SETSIZE (1024) descriptors open gives numbers ``select`` refuses (ValueError)."""

from __future__ import annotations

import select


def readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` is readable (or at EOF, or in error) within ``timeout`` seconds (None: no
    limit). ValueError for a negative ``fd`` (a socket closed meanwhile: fileno() -1)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000))
