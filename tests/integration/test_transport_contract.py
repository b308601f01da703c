"""The transport contract (``_transport/base.py``), checked the same way for every transport.

Each pair is made by the transport's real code path: a listener and ``connect`` for pipe, tcp
and tcp with TLS, the shared-memory switch after connecting (futex wake-ups, and the socket doorbell that
platforms without a futex use), and the in-process listener for subinterpreters.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pickle import PickleBuffer
from typing import Any

import pytest

from reflectmgr._transport import shm, waiting
from reflectmgr._transport.base import Transport
from reflectmgr._transport.inproc import InprocListener, connect_inproc
from reflectmgr._transport.sockets import Listener, connect
from reflectmgr._wire.framing import MAX_PREAUTH
from reflectmgr._wire.opcodes import FLAG_OOB
from reflectmgr.errors import ProtocolError

from ..helpers import PROMPT, in_thread, wait_until

pytestmark = pytest.mark.timeout(60)
AUTHENTICATED = 8 << 20  # max_frame after the handshake, for these tests


def _accepting(listener: Any) -> tuple[Transport, Transport]:
    got: list[Transport] = []
    t = threading.Thread(target=lambda: got.append(listener.accept()))
    t.start()
    client = connect(listener.address, 10.0)
    t.join(10)
    listener.close()
    return client, got[0]


def _stream(kind: str) -> tuple[Transport, Transport]:
    return _accepting(Listener(kind, None))


def _serving(kind: str) -> tuple[Transport, Transport]:
    """A stream pair whose accepting end is served as a manager's connection thread serves it
    (in C where _native.c was built: stream.StreamTransport.serving)."""
    client, server = _stream(kind)
    server.serving()
    return client, server


def _shared(futex: bool, native: tuple[bool, bool] = (True, True)) -> tuple[Transport, Transport]:
    """A shared-memory pair; ``native``: which ends (client, manager) run the ring's common case in
    C (_native.c, where it was built) rather than in Python; the two must interoperate."""
    client, server = _stream("pipe")
    upgraded: list[Any] = []

    def serve() -> None:
        _, payload = server.recv(MAX_PREAUTH)
        assert payload == shm.REQUEST
        upgraded.append(shm.upgrade_server(server))

    t = threading.Thread(target=serve)
    prior = waiting.FUTEX
    shm.waiting.FUTEX = futex  # what this side offers: the manager decides, the client follows
    try:
        t.start()
        shared_client = shm.upgrade_client(client)
        t.join(10)
    finally:
        shm.waiting.FUTEX = prior
    assert upgraded[0].futex is futex and shared_client.futex is futex
    for end, wanted in zip((shared_client, upgraded[0]), native, strict=True):
        if not wanted:
            end._native = None
            end._ends = None
    return shared_client, upgraded[0]


def _tls(folder: str) -> tuple[Transport, Transport]:
    """TCP with TLS: the listener's handshake runs where the manager runs it, on the accepted
    connection's own thread (certificates made by trustme, from the test extra)."""
    import trustme

    from reflectmgr import tls

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(f"{folder}/server.pem")
    ca.cert_pem.write_to_path(f"{folder}/ca.pem")
    listener = Listener("tcp", None, tls.server_context(f"{folder}/server.pem"))
    got: list[Transport] = []
    t = threading.Thread(target=lambda: got.append(listener.establish(listener.accept(), 10.0)))
    t.start()
    client = connect(listener.address, 10.0, tls.client_context(f"{folder}/ca.pem"))
    t.join(10)
    listener.close()
    return client, got[0]


def _inproc() -> tuple[Transport, Transport]:
    listener = InprocListener()
    client = connect_inproc(listener.address)
    server = listener.accept()
    listener.close()
    return client, server


PAIRS: dict[str, Callable[..., tuple[Transport, Transport]]] = {
    "pipe": lambda: _stream("pipe"),
    "tcp": lambda: _stream("tcp"),
    "pipe-serving": lambda: _serving("pipe"),
    "tcp-serving": lambda: _serving("tcp"),
    "tls": _tls,
    "shm-futex": lambda: _shared(True),
    "shm-futex-python": lambda: _shared(True, (False, False)),
    "shm-native-python": lambda: _shared(True, (True, False)),
    "shm-python-native": lambda: _shared(True, (False, True)),
    "shm-doorbell": lambda: _shared(False),
    "inproc": _inproc,
}


@pytest.fixture(params=list(PAIRS))
def pair(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[Transport, Transport]]:
    if request.param.startswith("shm-") and request.param != "shm-doorbell" and not waiting.FUTEX:
        pytest.skip("no futex on this platform: shared memory uses the socket doorbell (tested too)")
    if request.param in ("shm-native-python", "shm-python-native") and shm._native is None:
        pytest.skip("the C module (_native.c) was not built here: both ends run the Python path")
    if request.param.startswith("shm") and not hasattr(socket, "send_fds"):
        pytest.skip("no descriptor passing here: no shared-memory transport")
    a, b = PAIRS[request.param](str(tmp_path)) if request.param == "tls" else PAIRS[request.param]()
    yield a, b
    for end in (a, b):
        end.dispose()


def _authenticate(*ends: Transport) -> None:
    for end in ends:
        end.authenticated(AUTHENTICATED)


def test_frames_arrive_whole_and_in_order_both_ways(
    pair: tuple[Transport, Transport], request: pytest.FixtureRequest
) -> None:
    if "[tls]" in request.node.name:
        pytest.skip(
            "sends from one thread while another receives on the same end: an OpenSSL connection is not "
            "safe for that (BlockingIOError seen on 3.13); reflectmgr's channels never do it (see tls.py)"
        )
    a, b = pair
    _authenticate(a, b)
    frames = [(i % 8, bytes([i % 256]) * (i * 37 % 5000)) for i in range(300)]

    def send_all(end: Transport) -> None:
        for flags, payload in frames:
            end.send(flags, payload)

    sender, errors = in_thread(lambda: send_all(a))
    echo, echo_errors = in_thread(lambda: send_all(b))
    got_b = [b.recv() for _ in frames]
    got_a = [a.recv() for _ in frames]
    sender.join(PROMPT)
    echo.join(PROMPT)
    assert errors == [None] and echo_errors == [None]
    assert [(f, bytes(p)) for f, p in got_b] == frames
    assert [(f, bytes(p)) for f, p in got_a] == frames


def test_a_frame_larger_than_any_buffer_and_out_of_band_buffers(pair: tuple[Transport, Transport]) -> None:
    a, b = pair
    _authenticate(a, b)
    big = bytes(range(256)) * (3 << 12)  # 3 MiB: more than a shared-memory ring, many read-aheads
    readonly, writable = b"r" * (2 << 20), bytearray(b"w" * 1000)
    t, errors = in_thread(lambda: a.send(FLAG_OOB, big, [PickleBuffer(readonly), PickleBuffer(writable)]))
    flags, payload = b.recv()
    buffers = b.recv_buffers()
    t.join(PROMPT)
    assert errors == [None]
    assert flags == FLAG_OOB and payload == big
    assert buffers == [readonly, writable]
    assert type(buffers[0]) is bytes and type(buffers[1]) is bytearray  # read-only stays read-only


def test_the_frame_limits_hold_before_and_after_authentication(pair: tuple[Transport, Transport]) -> None:
    a, b = pair
    a.send(0, b"x" * (MAX_PREAUTH + 1))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        b.recv()


def test_a_frame_over_the_connection_limit_is_refused(pair: tuple[Transport, Transport]) -> None:
    a, b = pair
    _authenticate(a, b)
    a.send(0, b"y" * 2000)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        b.recv(1000)


def test_a_receive_with_a_timeout_raises_timeout_error(pair: tuple[Transport, Transport]) -> None:
    a, b = pair
    _authenticate(a, b)
    b.set_timeout(0.2)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        b.recv()
    assert time.monotonic() - started < PROMPT
    b.set_timeout(None)
    a.send(3, b"after")  # the connection is still usable
    assert b.recv() == (3, b"after")


@pytest.mark.parametrize("closer", ["the peer", "another thread of ours"])
def test_a_close_ends_a_blocked_receive(pair: tuple[Transport, Transport], closer: str) -> None:
    a, b = pair
    _authenticate(a, b)
    t, out = in_thread(b.recv)
    (a if closer == "the peer" else b).close()
    t.join(PROMPT)
    assert not t.is_alive(), f"a receive blocked when {closer} closed did not end"
    assert isinstance(out[0], (EOFError, OSError))
    assert (a.closed, b.closed) == ((True, False) if closer == "the peer" else (False, True))


def test_a_receive_after_the_peer_closed_ends_at_once(
    pair: tuple[Transport, Transport], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer closed before we began to wait, so its wake-up found nobody asleep: a shared-memory
    reader must still see it at once (the writer's closed flag), not at its next safety wake-up,
    made an hour long here."""
    monkeypatch.setattr(shm, "SAFETY_MS", 3_600_000)
    a, b = pair
    _authenticate(a, b)
    a.send(0, b"last words")
    a.close()
    assert b.recv() == (0, b"last words")  # what was sent before the close still arrives
    t, out = in_thread(b.recv)
    t.join(PROMPT)
    assert not t.is_alive(), "a receive after the peer closed waited for the safety wake-up"
    assert isinstance(out[0], (EOFError, OSError))


def test_liveness_without_blocking(pair: tuple[Transport, Transport]) -> None:
    a, b = pair
    _authenticate(a, b)
    a.send(0, b"data")  # pending data is not mistaken for a closed peer
    b.check_peer()
    poller = select.poll()
    poller.register(b.fileno(), select.POLLIN)
    a.close()
    assert poller.poll(PROMPT * 1000), "the descriptor did not poll readable when the peer went"
    assert wait_until(lambda: _gone(b), PROMPT, "check_peer to see the closed peer")


def _gone(end: Transport) -> bool:
    try:
        end.check_peer()
    except EOFError:
        return True
    return False
