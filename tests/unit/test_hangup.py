"""The hang-up watcher on its own (_transport/hangup.py): socket pairs and plain callbacks."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from reflectmgr._transport import hangup

from ..helpers import PROMPT, wait_until

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="the hang-up watcher needs epoll (Linux)")


class Calls:
    def __init__(self) -> None:
        self.gone = 0
        self.wakes = 0

    def on_gone(self) -> None:
        self.gone += 1

    def on_wake(self) -> None:
        self.wakes += 1


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def _watch(sock: socket.socket, calls: Calls) -> hangup.Watch:
    entry = hangup.watch(sock.fileno(), calls.on_gone, calls.on_wake)
    assert entry is not None, "no watcher in this process"
    return entry


def test_a_peer_that_goes_is_marked_gone_once_and_woken_until_linger(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hangup, "REPEAT", 0.01)
    monkeypatch.setattr(hangup, "LINGER", 0.2)
    ours, theirs = pair
    calls = Calls()
    entry = _watch(ours, calls)
    assert calls.gone == 0 and calls.wakes == 0  # nothing while the peer is there
    theirs.close()
    assert wait_until(lambda: calls.gone == 1 and calls.wakes >= 3, PROMPT, "the gone mark and repeated wakes")
    assert wait_until(lambda: not hangup.repeating(), PROMPT, "the repeats to end after LINGER")
    settled = calls.wakes
    hangup.forget(entry)
    assert calls.gone == 1 and calls.wakes == settled


def test_a_close_of_ours_is_woken_repeatedly_and_forget_stops_it(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hangup, "REPEAT", 0.01)
    ours, _theirs = pair
    calls = Calls()
    entry = _watch(ours, calls)
    hangup.closing(entry)  # out of the epoll: our own shutdown is not the peer's hang-up
    ours.shutdown(socket.SHUT_RDWR)
    assert wait_until(lambda: calls.wakes >= 3, PROMPT, "repeated wakes after our close")
    hangup.forget(entry)
    after = calls.wakes
    assert wait_until(lambda: not hangup.repeating(), PROMPT, "the watcher to rest")
    assert calls.wakes == after  # nothing called once forget() returned
    assert calls.gone == 0  # a close of ours is not the peer's


def test_a_callback_that_raises_does_not_stop_the_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hangup, "LINGER", 0.0)
    broken_ours, broken_theirs = socket.socketpair()
    ours, theirs = socket.socketpair()
    try:

        def broken() -> None:
            raise RuntimeError("a transport's callback failed")

        failing = hangup.watch(broken_ours.fileno(), broken, broken)
        assert failing is not None
        broken_theirs.close()
        calls = Calls()
        entry = _watch(ours, calls)
        theirs.close()
        assert wait_until(lambda: calls.gone == 1, PROMPT, "the next hang-up to be seen")
        hangup.forget(entry)
        hangup.forget(failing)
    finally:
        for sock in (broken_ours, broken_theirs, ours, theirs):
            sock.close()
