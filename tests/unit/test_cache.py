"""The weak cache and release queue, without processes: counts and the finalizer race."""

from __future__ import annotations

import gc

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
