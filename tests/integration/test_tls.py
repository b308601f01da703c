"""Issue 12: TLS for TCP managers and connections, mutual TLS, and the clear errors when the two
sides disagree. Certificates are made in the test (trustme)."""

from __future__ import annotations

import multiprocessing
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import reflectmgr
from reflectmgr import tls
from reflectmgr._manager import registry
from reflectmgr._transport.tls import TLSTransport

from ..helpers import CHILD, PROMPT

trustme = pytest.importorskip("trustme", reason="the test extra installs trustme: pip install -e '.[test]'")

pytestmark = [pytest.mark.tcp, pytest.mark.timeout(90)]
LOOPBACK = ("127.0.0.1", 0)


class Certs:
    """A CA for managers, a CA for clients (mutual TLS), and a stranger CA nobody trusts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ca, clients, stranger = trustme.CA(), trustme.CA(), trustme.CA()
        self._write(ca.cert_pem, "ca.pem")
        self._write(clients.cert_pem, "clients-ca.pem")
        self._write(ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem, "server.pem")
        self._write(stranger.issue_cert("127.0.0.1").private_key_and_cert_chain_pem, "stranger-server.pem")
        self._write(stranger.cert_pem, "stranger-ca.pem")
        self._write(clients.issue_cert("worker-1").private_key_and_cert_chain_pem, "client.pem")
        self._write(stranger.issue_cert("intruder").private_key_and_cert_chain_pem, "stranger-client.pem")

    def _write(self, blob: Any, name: str) -> None:
        blob.write_to_path(str(self.folder / name))

    def __getitem__(self, name: str) -> str:
        return str(self.folder / f"{name}.pem")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(autouse=True)
def forget_tls() -> Iterator[None]:
    """Contexts registered by connect() in this process are for managers of this test only."""
    yield
    with registry.lock:
        registry.tls.clear()


@pytest.fixture
def tls_manager(certs: Certs) -> Iterator[reflectmgr.Manager]:
    with reflectmgr.Manager(LOOPBACK, ssl_context=tls.server_context(certs["server"])) as m:
        yield m


def _fresh(m: reflectmgr.Manager, context: ssl.SSLContext | None) -> reflectmgr.Connection:
    """A connection of its own (another session) to the manager's TCP address, as another host's
    process would make it."""
    from reflectmgr import Connection
    from reflectmgr._manager.client import Client

    with registry.lock:
        registry.tls.pop(registry.key(m.address), None)
        if context is not None:
            registry.tls[registry.key(m.address)] = context
    return Connection(Client(m.address, m.authkey))


def test_a_tls_connection_works_and_is_encrypted(tls_manager: reflectmgr.Manager, certs: Certs) -> None:
    d = tls_manager.dict(a=1)
    tls_manager.root["d"] = d
    conn = _fresh(tls_manager, tls.client_context(certs["ca"]))
    try:
        remote = conn.root["d"]
        remote["b"] = [1, 2]
        remote["b"].append(3)  # a nested proxy, over TLS
        assert d == {"a": 1, "b": [1, 2, 3]}
        transport = conn.client._anchor.transport
        assert isinstance(transport, TLSTransport)
        assert transport.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        conn.close()


def test_the_owner_uses_the_private_unix_socket_and_reports_the_tcp_address(tls_manager: reflectmgr.Manager) -> None:
    assert isinstance(tls_manager.address, tuple)
    assert isinstance(tls_manager.client.address, str)  # shm:/... or a unix path: no TLS needed here
    assert tls_manager.client.public_address == tls_manager.address


def _child_connects(address: Any, authkey: bytes, context: ssl.SSLContext, out: Any) -> None:
    conn = reflectmgr.connect(address, authkey, ssl_context=context)
    counter = conn.root["counter"]
    for _ in range(100):
        counter["n"] += 1
    out.put(conn.client._anchor.transport.sock.version())
    conn.close()


def test_another_process_connects_with_a_context_that_pickles(tls_manager: reflectmgr.Manager, certs: Certs) -> None:
    tls_manager.root["counter"] = counter = tls_manager.dict(n=0)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(
        target=_child_connects, args=(tls_manager.address, tls_manager.authkey, tls.client_context(certs["ca"]), out)
    )
    child.start()
    try:
        assert out.get(timeout=CHILD).startswith("TLSv1.")
        child.join(CHILD)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join(CHILD)
    assert counter["n"] == 100


def test_the_authkey_is_still_checked_inside_tls(tls_manager: reflectmgr.Manager, certs: Certs) -> None:
    with registry.lock:
        registry.tls[registry.key(tls_manager.address)] = tls.client_context(certs["ca"])
    from reflectmgr._manager.client import Client

    with pytest.raises(reflectmgr.AuthenticationError, match="authkey"):
        Client(tls_manager.address, b"not the key")


def test_a_manager_certificate_from_an_untrusted_ca_is_refused(certs: Certs) -> None:
    with reflectmgr.Manager(LOOPBACK, ssl_context=tls.server_context(certs["stranger-server"])) as m:
        with pytest.raises(reflectmgr.AuthenticationError, match="CERTIFICATE_VERIFY_FAILED"):
            _fresh(m, tls.client_context(certs["ca"]))
        assert m.dict(a=1)["a"] == 1  # the manager goes on


def test_a_plain_client_is_refused_by_a_tls_manager_promptly_and_clearly(tls_manager: reflectmgr.Manager) -> None:
    started = time.monotonic()
    with pytest.raises(reflectmgr.AuthenticationError, match="requires TLS"):
        _fresh(tls_manager, None)
    assert time.monotonic() - started < PROMPT  # told at once, not after a handshake timeout
    assert tls_manager.dict(a=1)["a"] == 1


def test_a_tls_client_is_told_when_the_manager_has_no_tls(certs: Certs) -> None:
    with reflectmgr.Manager(LOOPBACK) as m:
        with pytest.raises(reflectmgr.AuthenticationError, match="does not use TLS"):
            _fresh(m, tls.client_context(certs["ca"]))
        with pytest.raises(reflectmgr.AuthenticationError, match="does not use TLS"):
            reflectmgr.connect(m.address, m.authkey, ssl_context=tls.client_context(certs["ca"]))


@pytest.fixture
def mtls_manager(certs: Certs) -> Iterator[reflectmgr.Manager]:
    context = tls.server_context(certs["server"], cafile=certs["clients-ca"], require_client_cert=True)
    with reflectmgr.Manager(LOOPBACK, ssl_context=context) as m:
        yield m


def test_mutual_tls_accepts_a_client_certificate_from_its_ca(mtls_manager: reflectmgr.Manager, certs: Certs) -> None:
    conn = _fresh(mtls_manager, tls.client_context(certs["ca"], certfile=certs["client"]))
    try:
        conn.root["x"] = 1
        assert mtls_manager.root["x"] == 1
    finally:
        conn.close()


@pytest.mark.parametrize("certificate", [None, "stranger-client"])
def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(
    mtls_manager: reflectmgr.Manager, certs: Certs, certificate: str | None
) -> None:
    context = tls.client_context(certs["ca"], certfile=certs[certificate] if certificate else None)
    with pytest.raises(reflectmgr.AuthenticationError):
        _fresh(mtls_manager, context)
    assert mtls_manager.stats().clients == 1  # only the owner
    assert mtls_manager.dict(a=1)["a"] == 1


def test_a_plain_ssl_context_cannot_reach_a_spawned_manager_but_works_in_process(certs: Certs) -> None:
    plain = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    plain.load_cert_chain(certs["server"])
    with pytest.raises(TypeError, match=r"reflectmgr\.tls\.server_context"):
        reflectmgr.Manager(LOOPBACK, ssl_context=plain).start()
    with reflectmgr.Manager(LOOPBACK, ssl_context=plain, in_process=True) as m:
        m.root["x"] = 1
        conn = _fresh(m, tls.client_context(certs["ca"]))
        try:
            assert conn.root["x"] == 1
        finally:
            conn.close()


def _server_context_from(path: str) -> ssl.SSLContext:
    return tls.server_context(path)


def test_a_function_that_makes_the_context_runs_in_the_manager(certs: Certs) -> None:
    import functools

    factory = functools.partial(_server_context_from, certs["server"])
    with reflectmgr.Manager(LOOPBACK, ssl_context=factory) as m:
        conn = _fresh(m, tls.client_context(certs["ca"]))
        try:
            conn.root["x"] = 2
            assert m.root["x"] == 2
        finally:
            conn.close()


def test_tls_is_for_tcp_only(certs: Certs, tmp_path: Path) -> None:
    context = tls.server_context(certs["server"])
    with pytest.raises(ValueError, match="TCP"):
        reflectmgr.Manager(ssl_context=context)
    with pytest.raises(ValueError, match="TCP"):
        reflectmgr.connect(str(tmp_path / "sock"), ssl_context=tls.client_context(certs["ca"]))
    with pytest.raises(ValueError, match="cafile"):
        tls.server_context(certs["server"], require_client_cert=True)


def _square_into(d: Any, k: int) -> None:
    d[k] = k * k


def test_an_executor_of_a_tls_manager_reaches_it_without_tls_config(tls_manager: reflectmgr.Manager) -> None:
    d = tls_manager.dict()
    with tls_manager.executor(2) as pool:
        list(pool.map(_square_into, [d] * 4, range(4)))
    assert d == {0: 0, 1: 1, 2: 4, 3: 9}


def test_a_second_session_of_the_owner_uses_its_route(tls_manager: reflectmgr.Manager) -> None:
    from reflectmgr import Connection
    from reflectmgr._manager.client import Client

    other = Connection(Client(tls_manager.client.address, tls_manager.authkey))  # no TLS context needed
    try:
        other.root["y"] = 3
        assert tls_manager.root["y"] == 3
    finally:
        other.close()
