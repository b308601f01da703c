"""A manager's serving thread on a stream socket reads and writes it in C (_native.c,
stream.StreamTransport.serving): what the socket's own methods guarantee must still hold. The
contract itself is tests/integration/test_transport_contract.py's ("pipe-serving", "tcp-serving").
And where a stream's peer runs (peer_cpu: for following it, colocate.py)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator

import pytest

from reflectmgr._transport import stream
from reflectmgr._transport.stream import StreamTransport

from ..helpers import PROMPT, in_thread

pytestmark = pytest.mark.timeout(60)


class SignalledError(Exception):
    pass


@pytest.fixture
def pair() -> Iterator[tuple[StreamTransport, StreamTransport]]:
    if not stream.NATIVE:
        pytest.skip("the C module (_native.c) was not built here")
    a, b = socket.socketpair()
    client, served = StreamTransport(a), StreamTransport(b)
    served.serving()
    assert type(served) is stream.ServedStream  # the C path, none of the socket's own methods:
    assert not {"_sendall", "_block_recv_into", "_try_recv_into"} & vars(served).keys()
    client.authenticated(1 << 20)
    served.authenticated(1 << 20)
    yield client, served
    client.dispose()
    served.dispose()


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_a_signal_handler_runs_during_a_wait_and_what_it_raises_ends_it(
    pair: tuple[StreamTransport, StreamTransport],
) -> None:
    client, served = pair
    ran = threading.Event()
    raising = [False, True]  # the first signal's handler returns: the wait goes on (PEP 475)

    def handler(signum: int, frame: object) -> None:
        ran.set()
        if raising.pop(0):
            raise SignalledError

    before = signal.signal(signal.SIGALRM, handler)
    try:
        sender, errors = in_thread(lambda: (ran.wait(PROMPT), client.send(1, b"after the signal")))
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert served.recv() == (1, b"after the signal")
        sender.join(PROMPT)
        assert errors[0][0] is True
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(SignalledError):
            served.recv()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    client.send(2, b"still usable")
    assert served.recv() == (2, b"still usable")


def test_a_closed_end_raises_and_never_reads_a_descriptor_reused_since(
    pair: tuple[StreamTransport, StreamTransport],
) -> None:
    _, served = pair
    number = served.fileno()
    served.close()
    a, b = socket.socketpair()  # may take the closed end's number
    try:
        if number in (a.fileno(), b.fileno()):
            other = b if a.fileno() == number else a
            other.send(b"\0\0\0\0\0\0\0\1\0x")  # a whole frame, there to be (wrongly) read
        with pytest.raises(OSError):
            served.recv()
        with pytest.raises(OSError):
            served.send(0, b"lost")
        if number in (a.fileno(), b.fileno()):
            mine = a if a.fileno() == number else b
            mine.setblocking(False)
            assert mine.recv(64) == b"\0\0\0\0\0\0\0\1\0x"  # still there: nobody read it
    finally:
        a.close()
        b.close()


def test_a_send_the_peer_does_not_take_times_out(pair: tuple[StreamTransport, StreamTransport]) -> None:
    client, served = pair
    served.set_timeout(0.2)
    with pytest.raises(TimeoutError):
        for _ in range(1000):  # the socket's buffers fill: the peer reads nothing
            served.send(0, b"z" * 65536)
    served.set_timeout(None)
    client.set_timeout(PROMPT)
    assert client.recv()[1] == b"z" * 65536  # what went through arrives whole


def test_the_peer_gone_mid_frame_is_eof_not_a_partial_frame(pair: tuple[StreamTransport, StreamTransport]) -> None:
    client, served = pair
    os.write(client.fileno(), b"\0\0\0\0\0\0\0\x10\0half")
    client.close()
    with pytest.raises(EOFError, match="middle of a frame"):
        served.recv()


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="needs SO_PEERCRED (Linux)")
def test_the_peer_cpu_of_a_unix_socket_is_where_the_peer_process_runs() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("/proc/<pid>/stat tells where the main thread runs; this test runs on another")
    a, b = socket.socketpair()  # AF_UNIX: the peer is this process
    end = StreamTransport(b)
    mask = os.sched_getaffinity(0)
    try:
        descriptors = len(os.listdir("/proc/self/fd"))
        for cpu in sorted(mask)[:2]:
            os.sched_setaffinity(0, {cpu})
            assert end.peer_cpu() == cpu
        assert len(os.listdir("/proc/self/fd")) == descriptors  # none kept per connection
    finally:
        os.sched_setaffinity(0, mask)
        end.dispose()
        a.close()


def test_a_tcp_peer_has_no_known_cpu() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    end = StreamTransport(b)
    try:
        assert end.peer_cpu() == -1
    finally:
        end.dispose()
        a.close()
        listener.close()
