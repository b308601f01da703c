"""The hang-up watcher on its own (_transport/hangup.py): socket pairs and plain callbacks."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator
from typing import Any

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


def test_a_callback_that_closes_or_forgets_another_transport_does_not_stall_the_watcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The callbacks run on the watcher's thread, under its lock; what they allocate may run a
    # finalizer there (a client dropped without close(), collected then) that closes another
    # transport: closing() and forget() re-entered from the callback. Seen in CI as a watcher
    # deadlocked on itself, and every connection's close after it waiting for ever.
    monkeypatch.setattr(hangup, "REPEAT", 0.01)
    monkeypatch.setattr(hangup, "LINGER", 0.2)
    first, first_peer = socket.socketpair()
    second, _second_peer = socket.socketpair()
    third, _third_peer = socket.socketpair()
    try:
        later = Calls()
        closed_by_callback = _watch(second, later)
        forgotten_by_callback = _watch(third, later)
        done: list[str] = []

        def finalizer_like() -> None:
            if not done:
                hangup.closing(closed_by_callback)
                hangup.forget(forgotten_by_callback)
                done.append("ran")

        entry = hangup.watch(first.fileno(), finalizer_like, lambda: None)
        assert entry is not None
        first_peer.close()
        assert wait_until(lambda: done, PROMPT, "the callback to run")
        assert wait_until(lambda: later.wakes >= 2, PROMPT, "the watcher to go on (the closed one is woken)")
        assert later.gone == 0, "neither of the others' peers went"
        hangup.forget(closed_by_callback)
        hangup.forget(entry)  # the lock is free again: this thread takes it
    finally:
        for sock in (first, first_peer, second, _second_peer, third, _third_peer):
            sock.close()


def test_a_stale_event_for_a_reused_number_leaves_the_new_connection_alone(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An event polled for a connection that was closed and unwatched before the watcher took its
    # lock comes with a number that a new connection may already have: the watcher must not mark
    # that one gone (seen in CI: an in-process client's rings closed mid-handshake).
    ours, theirs = pair
    calls = Calls()
    entry = _watch(ours, calls)
    watcher = hangup._watcher
    assert watcher is not None
    real = watcher._epoll

    class StaleFirst:
        """The watcher's epoll, but its next poll returns a hang-up of ``ours`` that did not happen."""

        def __init__(self) -> None:
            self.polls = 0

        def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
            self.polls += 1
            if self.polls == 1:
                return [(ours.fileno(), select.EPOLLRDHUP)]
            return real.poll(timeout)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    stale = StaleFirst()
    monkeypatch.setattr(watcher, "_epoll", stale)
    os.write(watcher._w, b"!")  # the watcher's current poll returns: its next one is ours
    assert wait_until(lambda: stale.polls >= 2, PROMPT, "the stale event to be handled")
    assert calls.gone == 0, "a connection whose peer is there was marked gone"
    theirs.close()  # and a real hang-up of it is still seen
    assert wait_until(lambda: calls.gone == 1, PROMPT, "the real hang-up")
    hangup.forget(entry)


def test_the_watchers_copy_of_its_wake_list_survives_a_finalizer_changing_it() -> None:
    # Copying the list allocates; a collection there may run a finalizer on the watcher's own
    # thread that closes or forgets a transport, changing the dict mid-copy: list() raised
    # RuntimeError and the watcher thread ended (seen in CI), so no sleeper was woken again.
    class ChangedOnce(dict[hangup.Watch, float]):
        copies = 0

        def items(self) -> Any:
            self.copies += 1
            if self.copies == 1:
                raise RuntimeError("dictionary changed size during iteration")
            return super().items()

    entry = hangup.Watch(-1, lambda: None, lambda: None)
    waking = ChangedOnce({entry: 1.0})
    assert hangup._snapshot(waking) == [(entry, 1.0)] and waking.copies == 2
