"""An implicit client with no proxy alive closes itself after ``idle_timeout`` (what Ray's reused
workers rely on: reflectmgr/ray.py), and a key source travels with a proxy instead of the key."""

from __future__ import annotations

import gc
import pickle
from typing import Any, ClassVar

import reflectmgr
from reflectmgr._manager import registry
from reflectmgr._manager.client import Client
from reflectmgr._wire.opcodes import Op

from ..helpers import PROMPT, wait_until


def _client(m: reflectmgr.Manager) -> Client:
    client = Client(m.address, m.authkey)  # implicit, as an unpickled proxy's client is
    assert client.implicit and client.idle_timeout is None
    return client


def test_an_idle_client_closes_and_the_manager_ends_its_session(m: reflectmgr.Manager) -> None:
    client = _client(m)
    d = client.call(Op.NEW, 0, dict, (), {"a": 1})
    assert d["a"] == 1 and m.stats().clients == 2
    client.idle_timeout = 0.2
    del d
    gc.collect()
    wait_until(lambda: client.closed, PROMPT, "the idle client to close itself")
    wait_until(lambda: m.stats().clients == 1, PROMPT, "the manager to end its session")
    assert registry.lookup(m.address) is not client


def test_a_client_is_kept_while_a_proxy_lives_or_it_was_just_handed_out(m: reflectmgr.Manager) -> None:
    client = _client(m)
    client._stop_flusher()  # the test calls what the flusher's thread would, in order
    client.idle_timeout = 0.0
    d = client.call(Op.NEW, 0, list, ([1],), {})
    assert client.reap_if_idle() is False  # a proxy is alive
    del d
    gc.collect()
    client.flush()
    client.touched = True  # the registry handed it out: a proxy may be arriving
    assert client.reap_if_idle() is False and not client.closed
    client.claims = 1  # a proxy being unpickled through it, however long its claim takes
    for _ in range(3):
        assert client.reap_if_idle() is False and not client.closed
    client.claims = 0
    assert client.reap_if_idle() is True and client.closed


def test_clients_without_idle_timeout_or_with_connections_stay(m: reflectmgr.Manager) -> None:
    client = _client(m)
    client._stop_flusher()
    assert client.reap_if_idle() is False  # no idle_timeout: never
    client.idle_timeout = 0.0
    conn = reflectmgr.Connection(client)
    assert client.reap_if_idle() is False  # a connection uses it
    conn.close()
    client.implicit = False
    assert client.reap_if_idle() is False  # someone's own connection: only its owner closes it
    client.close()


class _Source:
    """A key source: hands out the test's client for any routes (reflectmgr.ray reads the key
    from the cluster's store instead)."""

    asked: ClassVar[list[Any]] = []
    target: ClassVar[Any] = None

    def client(self, routes: Any) -> Client:
        _Source.asked.append(routes)
        return _Source.target


def test_a_key_source_travels_with_a_proxy_instead_of_the_key(m: reflectmgr.Manager) -> None:
    client = _client(m)
    client.key_source = _Source()
    d = client.call(Op.NEW, 0, dict, (), {"a": 1})
    blob = pickle.dumps(d)
    assert m.authkey not in blob and b"_Source" in blob
    client.close()
    _Source.target = other = _client(m)
    with registry.lock:  # as in a process with no client for this manager: it must ask the source
        saved = registry.clients.pop(registry.key(m.address))
    again: Any = None
    try:
        again = pickle.loads(blob)
        assert _Source.asked == [(m.address,)] and again["a"] == 1 and again._rm_link is other
    finally:
        with registry.lock:
            registry.clients[registry.key(m.address)] = saved
        del again
        other.close()


def test_unpickling_a_proxy_counts_a_claim_until_it_is_done(m: reflectmgr.Manager) -> None:
    client = _client(m)
    client._stop_flusher()
    d = client.call(Op.NEW, 0, dict, (), {"a": 1})
    blob = pickle.dumps(d)
    seen: list[int] = []
    call = client.call

    def spy(op: int, oid: int, *args: Any) -> Any:
        seen.append(client.claims)  # during the claim's round trip
        return call(op, oid, *args)

    with registry.lock:  # this process's route to the manager is the test's client
        saved = registry.clients[registry.key(m.address)]
        registry.clients[registry.key(m.address)] = client
    try:
        client.call = spy  # type: ignore[method-assign]
        again = pickle.loads(blob)
    finally:
        with registry.lock:
            registry.clients[registry.key(m.address)] = saved
    assert seen == [1] and client.claims == 0 and again["a"] == 1
    del again, d
    client.close()
