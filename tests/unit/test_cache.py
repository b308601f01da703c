"""The weak cache and release queue, without processes: counts and the finalizer race."""

from __future__ import annotations

import gc
import os
import time

import pytest

from reflectmgr._proxy.cache import ProxyCache


class P:
    """Stand-in for a proxy (weak-referenceable)."""


def test_same_proxy_while_alive_and_counts() -> None:
    cache = ProxyCache()
    a = cache.get_or_create(1, P)
    b = cache.get_or_create(1, P)
    assert a is b
    del a, b
    gc.collect()
    assert cache.take_releases() == ((1, 2),)
    assert len(cache) == 0


def test_reference_returning_before_drain_cancels_the_release() -> None:
    cache = ProxyCache()
    p = cache.get_or_create(7, P)
    del p
    gc.collect()  # the finalizer ran: a release for 7 is pending, not yet drained
    q = cache.get_or_create(7, P)  # 7 arrives again in a reply (another thread, say)
    assert cache.take_releases() == ()  # cancelled: the object must stay alive for q
    del q
    gc.collect()
    assert cache.take_releases() == ((7, 2),)  # both receptions released together


def test_release_in_flight_then_reference_returns() -> None:
    cache = ProxyCache()
    p = cache.get_or_create(9, P)
    del p
    gc.collect()
    in_flight = cache.take_releases()
    assert in_flight == ((9, 1),)
    q = cache.get_or_create(9, P)  # arrives while the release travels: a fresh entry, count 1
    assert q is not None
    del q
    gc.collect()
    assert cache.take_releases() == ((9, 1),)


def test_returned_releases_go_with_the_next_message() -> None:
    cache = ProxyCache()
    cache.return_releases(((3, 1),))
    assert cache.has_releases
    assert cache.take_releases() == ((3, 1),)
    assert not cache.has_releases


def test_a_proxy_that_failed_to_be_made_is_made_on_the_next_arrival() -> None:
    cache = ProxyCache()

    def broken() -> P:
        raise RuntimeError("the proxy class could not be built")

    with pytest.raises(RuntimeError):
        cache.get_or_create(5, broken)
    p = cache.get_or_create(5, P)  # the entry exists without a proxy: a new one is made and counted
    del p
    gc.collect()
    assert cache.take_releases() == ((5, 1),)


# -- code a collection runs inside an update (a __del__ calling the manager on this thread) -----


def test_a_call_made_while_a_dead_entry_is_revived_takes_no_release_of_it() -> None:
    cache = ProxyCache()
    p = cache.get_or_create(4, P)
    del p
    gc.collect()  # dead, not drained: the next arrival revives the entry
    taken: list[object] = []

    def make() -> P:
        taken.append(cache.take_releases())  # what the call of a __del__ run here would carry
        return P()

    q = cache.get_or_create(4, make)
    assert taken == [()]  # not the entry being revived (nor anything else: they wait)
    assert cache.lookup(4) is q
    del q
    gc.collect()
    assert cache.take_releases() == ((4, 2),)  # both receptions, from the one entry


def test_a_reference_received_while_its_own_proxy_is_made_gets_that_same_proxy() -> None:
    cache = ProxyCache()
    inner: list[P] = []

    def make() -> P:
        inner.append(cache.get_or_create(6, P))  # a __del__ run here received the same reference
        return P()

    outer = cache.get_or_create(6, make)
    assert outer is inner[0]  # one proxy per object
    del outer, inner[:]
    gc.collect()
    assert cache.take_releases() == ((6, 2),)


# -- the bell the release flusher sleeps on (no periodic wake-up) ------------------------------


def _rung(cache: ProxyCache) -> bool:
    """Whether the bell holds a wake-up: a wait that does not block returns at once."""
    bell = cache.bell
    bell.arm()
    started = time.monotonic()
    bell.wait(0.5)
    return time.monotonic() - started < 0.4


def test_a_death_rings_the_bell_only_while_the_flusher_is_armed() -> None:
    cache = ProxyCache()
    p = cache.get_or_create(1, P)
    q = cache.get_or_create(2, P)
    del p
    gc.collect()  # not armed: appended, no byte written
    assert cache.has_releases and not cache.bell.armed
    cache.bell.arm()
    del q
    gc.collect()  # armed: the death rings and disarms (the next deaths write nothing)
    assert not cache.bell.armed
    cache.bell.wait(None)  # returns: the byte is there
    assert not _rung(cache)  # and one read took it
    assert cache.take_releases() == ((1, 1), (2, 1))


def test_acquires_and_returned_releases_ring_too() -> None:
    cache = ProxyCache()
    cache.bell.arm()
    cache.acquire(4)
    assert _rung(cache)
    cache.bell.arm()
    cache.return_releases(((3, 1),))
    assert _rung(cache)


def test_a_poke_wakes_an_unarmed_bell_and_is_harmless_before_any_pipe() -> None:
    cache = ProxyCache()
    cache.bell.poke()  # no pipe yet: nothing to write to, nothing raised
    cache.bell.arm()
    cache.bell.armed = False
    cache.bell.poke()
    assert _rung(cache)


def test_a_full_pipe_keeps_its_wake_up() -> None:
    cache = ProxyCache()
    bell = cache.bell
    bell.arm()  # opens the pipe
    for _ in range(70_000):  # more than a pipe holds (64 KiB): the writes that do not fit are dropped
        bell.poke()
    assert _rung(cache)


def test_after_fork_a_bell_opens_a_pipe_of_its_own() -> None:
    armed, never = ProxyCache().bell, ProxyCache().bell
    armed.arm()
    inherited = (armed._r, armed._w)
    armed._after_fork()  # what the child's fork hook does (the real fork: tests/integration)
    never._after_fork()
    assert not armed.armed and armed._r == -1
    for fd in inherited:  # this process's copies were closed
        with pytest.raises(OSError):
            os.fstat(fd)
    armed.arm()
    armed.poke()
    assert armed._r >= 0
    armed.wait(None)
