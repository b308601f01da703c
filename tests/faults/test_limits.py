"""Issue 10, leaks and limits: what a failure leaves behind, and what a peer can make us allocate."""

from __future__ import annotations

import os
import pickle
import select
import socket
import threading
from pathlib import Path

import psutil
import pytest

import reflectmgr
from reflectmgr._manager.client import Client
from reflectmgr._owner.server import MAX_PENDING_HANDSHAKES
from reflectmgr._transport import shm, stream
from reflectmgr._transport.auth import client_handshake, serve_handshake
from reflectmgr._transport.sockets import connect as raw_connect
from reflectmgr._transport.stream import StreamTransport
from reflectmgr._wire import codec
from reflectmgr._wire.framing import MAX_FRAME, MAX_PREAUTH, pack_header

from ..helpers import DEATH, PROMPT, second_session, until_dropped, wait_until

HAS_SHM = hasattr(socket, "send_fds")


def _mapped(inode: int) -> bool:
    """True if this process maps the file with ``inode`` (a shared-memory segment)."""
    with open("/proc/self/maps") as maps:
        return any(line.split()[4] == str(inode) for line in maps if len(line.split()) > 5)


@pytest.mark.skipif(not HAS_SHM or not os.path.exists("/proc/self/maps"), reason="needs shm and /proc")
def test_failed_hello_after_the_shm_upgrade_unmaps_the_rings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "fake.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    key = os.urandom(32)
    inodes: list[int] = []
    new_segment = shm.new_segment

    def recorded_segment() -> int:
        fd = new_segment()
        inodes.append(os.fstat(fd).st_ino)
        return fd

    monkeypatch.setattr(shm, "new_segment", recorded_segment)

    def fake_manager() -> None:
        conn, _ = listener.accept()
        t = StreamTransport(conn)
        serve_handshake(t, key)
        t.recv(MAX_PREAUTH)  # the request for shared memory
        shm.upgrade_server(t).dispose()  # hand the rings over, then hang up instead of answering HELLO

    server = threading.Thread(target=fake_manager)
    server.start()
    with pytest.raises(reflectmgr.BrokenManagerError) as info:
        Client(shm.PREFIX + path, key)
    server.join(PROMPT)
    listener.close()
    assert len(inodes) == 1
    assert info.value.__traceback__ is not None  # the error is still alive (a caller may keep it) ...
    assert not _mapped(inodes[0])  # ... and pins no 2 MiB mapping


def test_byref_export_is_undone_when_the_rest_of_the_call_fails_to_pickle(m: reflectmgr.Manager) -> None:
    d = m.dict()
    with pytest.raises(reflectmgr.ReflectmgrPicklingError):
        d["k"] = (reflectmgr.byref(lambda: 1), threading.Lock())  # the byref pickles first, then the lock fails
    assert len(m.client.table) == 0
    d["k"] = 1
    assert d == {"k": 1}


def test_proxy_classes_do_not_accumulate_in_the_codec(m: reflectmgr.Manager) -> None:
    m.dict(), m.list(), m.Namespace()
    before = len(codec._PLAIN)
    for _ in range(5):
        conn = second_session(m)  # every connection generates its own proxy classes
        conn.dict(), conn.list(), conn.Namespace()
        conn.close()
    assert len(codec._PLAIN) == before


def _authenticated_raw(m: reflectmgr.Manager) -> StreamTransport:
    """A raw connection past the handshake and HELLO, for sending frames by hand."""
    assert m.address is not None
    t = raw_connect(m.address, DEATH)
    assert isinstance(t, StreamTransport)
    client_handshake(t, m.authkey)
    t.send(0, pickle.dumps((0, (), 27, 0, (os.urandom(16), os.getpid()))))  # HELLO
    t.recv(MAX_PREAUTH)
    return t


def test_a_large_announced_frame_allocates_only_what_arrives(m: reflectmgr.Manager) -> None:
    assert m.pid is not None
    manager = psutil.Process(m.pid)
    before = manager.memory_info().rss
    t = _authenticated_raw(m)
    try:
        t.sock.sendall(pack_header(1 << 30, 0))  # announces 1 GiB (under the limit) ...
        t.sock.sendall(b"\x80" * (8 << 20))  # ... sends 8 MiB of it, and stalls
        grown = wait_until(
            lambda: (g := manager.memory_info().rss - before) >= (8 << 20) and g, PROMPT, "the 8 MiB to arrive"
        )
        assert grown < (256 << 20), f"the manager grew by {grown >> 20} MiB for 8 MiB received"
        assert m.dict(a=1)["a"] == 1  # everyone else is served meanwhile
    finally:
        t.close()


def test_a_frame_over_the_limit_drops_that_connection_before_allocating() -> None:
    with reflectmgr.Manager(max_frame=1 << 20) as m:
        d = m.dict(a=1)
        t = _authenticated_raw(m)
        t.sock.sendall(pack_header(2 << 20, 0))
        until_dropped(t)
        t.close()
        assert d["a"] == 1 and m.dict(b=2)["b"] == 2
        d["big"] = b"x" * (512 << 10)  # under the limit: fine
        with pytest.raises(reflectmgr.ReflectmgrError, match="exceeds this connection's limit"):
            d["big"] = bytearray(2 << 20)  # refused by the sender, before a byte is sent
        assert len(d["big"]) == 512 << 10 and m.dict(c=3)["c"] == 3  # the same connection goes on
        big = m.new(bytearray, 2 << 20)  # made in the manager: a proxy travels, not the bytes
        with pytest.raises(reflectmgr.ReflectmgrError, match="exceeds this connection's limit"):
            reflectmgr.value(big)  # a result over the limit: the manager says so instead of sending it
        assert m.stats().clients == 1


def test_a_pickle_naming_a_huge_memo_index_is_dropped_without_allocating(m: reflectmgr.Manager) -> None:
    # CPython's C unpickler sizes its memo by the largest index named (gh-115952): unguarded,
    # these 70 bytes made the manager allocate and zero 2.7 GB, stalling everyone for seconds.
    from ..unit.test_memo_guard import FLIPPED

    status = Path(f"/proc/{m.pid}/status")
    if not status.exists():
        pytest.skip("the manager's peak memory is read from /proc (Linux)")

    def peak() -> int:  # VmHWM: the most the manager ever had resident, in kB
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM"))

    d = m.dict(a=1)
    before = peak()
    t = _authenticated_raw(m)
    try:
        t.sock.sendall(pack_header(len(FLIPPED), 0) + FLIPPED)
        until_dropped(t)  # dropped as garbage
    finally:
        t.close()
    assert peak() - before < (64 << 10), f"the manager's peak grew by {(peak() - before) >> 10} MiB"
    assert d["a"] == 1 and m.dict(b=2)["b"] == 2


def test_a_stalled_frame_body_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "BODY_TIMEOUT", 0.2)
    a, b = socket.socketpair()
    reader = StreamTransport(a)
    reader.authenticated(MAX_FRAME)
    try:
        b.sendall(pack_header(1 << 20, 0) + b"\x80" * 1000)  # then nothing more
        with pytest.raises(reflectmgr.ProtocolError, match=r"then nothing for 0\.2 s"):
            reader.recv()
    finally:
        reader.close()
        b.close()


def test_unauthenticated_connections_are_capped(m: reflectmgr.Manager) -> None:
    assert m.pid is not None and m.address is not None
    d = m.dict(a=1)
    manager = psutil.Process(m.pid)
    threads_before = manager.num_threads()
    flood = [raw_connect(m.address, DEATH) for _ in range(MAX_PENDING_HANDSHAKES + 36)]
    try:
        socks = [t.sock for t in flood]

        def answered() -> list[socket.socket]:  # a challenge, or EOF: the manager dealt with it
            ready, _, _ = select.select(socks, [], [], 0)
            return ready

        wait_until(lambda: len(answered()) == len(socks), PROMPT, "the manager to accept every connection")
        refused = sum(1 for s in socks if s.recv(1 << 16) == b"")
        assert refused >= 36
        assert manager.num_threads() <= threads_before + MAX_PENDING_HANDSHAKES + 2
        assert d["a"] == 1  # connections already authenticated are served through the flood
    finally:
        for t in flood:
            t.close()

    def new_session_works() -> bool:
        try:
            second_session(m).close()
        except reflectmgr.ReflectmgrError:
            return False
        return True

    assert wait_until(new_session_works, DEATH, "the flood's handshakes to be let go")
