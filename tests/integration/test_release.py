"""Identity, release in batches, and the release race (DESIGN §2, "Identity and the cache")."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

import reflectmgr

from ..helpers import baseline_objects, second_session, wait_until
from .objects import Inventory


@pytest.mark.slow
def test_objects_return_to_baseline_after_10000_proxies(m: reflectmgr.Manager) -> None:
    d = m.dict({str(i): [i] for i in range(100)})
    base = baseline_objects(m)
    for i in range(10_000):
        item = d[str(i % 100)]  # a proxy to a shared list, dropped at once
        assert item[0] == i % 100
    del item
    gc.collect()
    assert wait_until(lambda: m.stats().objects == base, message="releases to reach the manager")
    assert len(m.client.cache) <= 1  # the cache keeps nothing dead (d itself may be there)


def test_idle_releases_are_flushed_without_another_call(m: reflectmgr.Manager) -> None:
    d = m.dict(k=[1])
    base = baseline_objects(m)
    inner = d["k"]
    other = second_session(m)  # a second session to observe from
    assert m.stats().objects == base + 1
    del inner
    gc.collect()
    # No call from this client: the idle flusher must carry the release on its own.
    assert wait_until(lambda: other.stats().objects == base, message="the idle release")


@pytest.fixture
def paused_flusher(m: reflectmgr.Manager) -> Iterator[None]:
    """For tests that drain the release queue by hand: the flusher would race them to it."""
    m.client._stop_flusher()
    try:
        yield
    finally:
        m.client._start_flusher()


@pytest.mark.usefixtures("paused_flusher")
def test_releases_are_batched(m: reflectmgr.Manager) -> None:
    d = m.dict({str(i): [i] for i in range(50)})
    proxies = [d[str(i)] for i in range(50)]
    del proxies
    gc.collect()
    releases = m.client.cache.take_releases()
    assert len(releases) == 50  # one message carries all of them
    m.client.cache.return_releases(releases)
    m.client.flush()


@pytest.mark.usefixtures("paused_flusher")  # else it may send the release alone, before the request
def test_an_object_dropped_and_fetched_again_gets_a_new_id(m: reflectmgr.Manager) -> None:
    """The drained release reaches the manager before the request it rides on: the object leaves
    the table and comes back under a new id; the old id can only fail, never reach another object.
    (A reference that returns *before* the drain takes the cache entry over: tests/unit/test_cache.py.)"""
    from reflectmgr._proxy.proxy import new_proxy

    d = m.dict(x=[1, 2])
    base = baseline_objects(m)
    first = d["x"]
    oid, cls = first._rm_oid, type(first)
    del first
    gc.collect()  # the finalizer has queued a release for oid; nothing was sent yet
    again = d["x"]  # carries the release, then gets the object back
    assert again._rm_oid != oid and again == [1, 2]
    m.client.flush()
    assert m.stats().objects == base + 1
    stale = new_proxy(cls, oid, m.client)  # what a forked child or an old pickle would hold
    with pytest.raises(reflectmgr.ReleasedError):
        stale.append(3)
    del stale
    assert again == [1, 2]
    del again
    gc.collect()
    assert wait_until(lambda: m.stats().objects == base)


@pytest.mark.usefixtures("paused_flusher")
def test_release_in_flight_crossing_a_new_reference(m: reflectmgr.Manager) -> None:
    """Force the interleaving: the release is drained (in flight) when the id is sent again."""
    d = m.dict(x=[1, 2])
    base = baseline_objects(m)
    first = d["x"]
    del first
    gc.collect()
    in_flight = m.client.cache.take_releases()  # drained: as if on the wire, not yet applied
    assert len(in_flight) == 1
    again = d["x"]  # the manager sends the id again before it sees the release
    m.client.cache.return_releases(in_flight)  # now the release lands
    m.client.flush()
    assert again == [1, 2]  # still alive for the new proxy
    assert m.stats().objects == base + 1
    del again
    gc.collect()
    assert wait_until(lambda: m.stats().objects == base)


@pytest.mark.slow
def test_threads_racing_on_one_object_never_lose_it(m: reflectmgr.Manager) -> None:
    inv = m.new(Inventory)
    inv.add("apple")
    base = baseline_objects(m)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(300):
                rec = inv.items["apple"]
                assert rec["qty"] == 1
                del rec
                if _ % 50 == 0:
                    gc.collect()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    gc.collect()
    assert wait_until(lambda: m.stats().objects == base)


def test_manager_frees_an_object_nobody_holds(m: reflectmgr.Manager) -> None:
    import weakref

    inv = m.new(Inventory)
    ref = m.new(weakref.ref, inv)  # a weak reference that lives in the manager
    m.root["probe"] = inv
    del inv
    gc.collect()
    m.client.flush()
    assert isinstance(ref(), Inventory)  # root still holds it
    del m.root["probe"]
    assert wait_until(lambda: ref() is None, message="the manager to free the object")
