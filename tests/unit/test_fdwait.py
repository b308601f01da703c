"""reflectmgr._fdwait.readable: poll, so descriptors above select's FD_SETSIZE work too."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator

import pytest

from reflectmgr._fdwait import readable

HIGH_FD = 1500  # above FD_SETSIZE (1024): select.select raises ValueError for it


@pytest.fixture
def high_pipe() -> Iterator[tuple[int, int]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= HIGH_FD + 1:
        if hard != resource.RLIM_INFINITY and hard <= HIGH_FD + 1:
            pytest.skip(f"descriptors are limited to {hard} here: {HIGH_FD} cannot be opened")
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH_FD + 2, hard))
    r, w = os.pipe()
    try:
        os.dup2(r, HIGH_FD)
        yield HIGH_FD, w
    finally:
        for fd in (r, w, HIGH_FD):
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_descriptor_above_fd_setsize_waits_and_wakes(high_pipe: tuple[int, int]) -> None:
    r, w = high_pipe
    started = time.monotonic()
    assert not readable(r, 0.05)  # nothing yet: the timeout passes
    assert time.monotonic() - started >= 0.04
    os.write(w, b"!")
    assert readable(r, None)


def test_a_closed_socket_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        readable(-1, 0)
