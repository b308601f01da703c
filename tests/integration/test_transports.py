"""Choosing a transport: the default, shared memory on request, and what is refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import reflectmgr
from reflectmgr._transport.sockets import DEFAULT_TRANSPORT

from ..helpers import CHILD, second_session

needs_shm = pytest.mark.skipif(not hasattr(socket, "send_fds"), reason="no descriptor passing here")


@needs_shm
def test_default_is_shared_memory(m: reflectmgr.Manager) -> None:
    assert DEFAULT_TRANSPORT == "shm" and m.transport == "shm"
    assert isinstance(m.address, str) and m.address.startswith("shm:")


@needs_shm
def test_a_pipe_manager_serves_shared_memory_on_request() -> None:
    with reflectmgr.Manager(transport="pipe") as m:
        d = m.dict(a=1)
        assert isinstance(m.address, str) and not m.address.startswith("shm:")
        conn = reflectmgr.connect(m.address, m.authkey, transport="shm")
        try:
            assert conn.client.address == "shm:" + m.address
            other = conn.root.setdefault("d", d)
            other["b"] = 2
            assert d["b"] == 2 and m.stats().clients == 2  # a client per route, each its own session
        finally:
            conn.close()


def test_a_second_session_over_every_transport(manager: reflectmgr.Manager) -> None:
    d = manager.dict(x=[1])
    manager.root["d"] = d
    conn = second_session(manager)
    try:
        conn.root["d"]["x"].append(2)
        assert d["x"] == [1, 2] and manager.stats().clients == 2
    finally:
        conn.close()


def test_shared_memory_is_refused_where_it_cannot_work() -> None:
    with pytest.raises(ValueError, match="one host"):
        reflectmgr.Manager(("127.0.0.1", 0), transport="shm")
    with pytest.raises(ValueError, match="unix path"):
        reflectmgr.connect(("127.0.0.1", 1), transport="shm")
    with pytest.raises(ValueError, match="unknown transport"):
        reflectmgr.connect("/nowhere", transport="carrier-pigeon")


_PORTABLE = """
import queue, threading, reflectmgr
from reflectmgr._transport import waiting
assert not waiting.FUTEX
with reflectmgr.Manager() as m:
    d, q = m.dict(), m.Queue()
    got = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
    t.start()
    for i in range(200):
        d[i] = i
    q.put("x")
    t.join(30)
    assert got == ["x"] and len(d) == 200 and d[199] == 199
    assert d == {i: i for i in range(200)}
print("ok")
"""


@pytest.mark.timeout(120)
def test_the_portable_wake_up_serves_a_manager_end_to_end() -> None:
    """What platforms without a futex get (the socket doorbell, a thread per connection), forced
    on this one: calls, a blocking call and its wake-up."""
    env = dict(os.environ, REFLECTMGR_WAKE="socket")
    proc = subprocess.run([sys.executable, "-c", _PORTABLE], env=env, capture_output=True, text=True, timeout=CHILD)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


_MIXED = """
import os, reflectmgr
from reflectmgr._wire import codec

def plain_in_use():
    from reflectmgr._wire import codec
    return codec.dumps_plain is not codec._no_plain

mine = os.environ.get("REFLECTMGR_NATIVE", "1") != "0"
os.environ["REFLECTMGR_NATIVE"] = "0" if mine else "1"  # the manager's process gets the other
m = reflectmgr.Manager()
m.start()
try:
    assert plain_in_use() is mine and m.new(plain_in_use) == (not mine)
    d = m.dict(k=0)
    d["k"] = 1
    d.update({"a": [1, 2.5, None, ("t", b"b")], 3: {"n": True}}, z="z" * 300)
    assert d["k"] == 1 and d["a"] == [1, 2.5, None, ("t", b"b")] and d[3] == {"n": True}
    assert d.get("missing", -(2**63)) == -(2**63) and len(d["z"]) == 300
    try:
        d["missing"]
    except KeyError as exc:
        assert exc.args == ("missing",)
    else:
        raise AssertionError("no KeyError")
    d["nested"] = {}
    d["nested"]["x"] = 2**40
    assert d["nested"] == {"x": 2**40}
finally:
    m.shutdown()
print("ok")
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("client_native", ["1", "0"])
def test_a_manager_and_a_client_built_differently_understand_each_other(client_native: str) -> None:
    """One end with the C modules (the ring's and the plain pickle's), the other without: the
    bytes on the wire are the same, so every kind of message goes through either way."""
    env = dict(os.environ, REFLECTMGR_NATIVE=client_native)
    proc = subprocess.run([sys.executable, "-c", _MIXED], env=env, capture_output=True, text=True, timeout=CHILD)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
