"""Child-process bodies for the crash tests (importable by spawned children)."""

from __future__ import annotations

import time
from typing import Any


def own_a_manager(report: Any, count: int = 1, executor: str | None = None) -> None:
    """Start ``count`` managers (the second and later fork from a template process), and an
    executor of two workers on the first (``executor``: "template", its default, or "spawn"),
    report the pids of every process this one started, then wait to be killed."""
    import multiprocessing

    import psutil

    import reflectmgr

    managers = [reflectmgr.Manager() for _ in range(count)]
    for m in managers:
        m.start()
    if executor is not None:
        ctx = multiprocessing.get_context("spawn") if executor == "spawn" else None
        pool = managers[0].executor(2, mp_context=ctx)
        list(pool.map(abs, range(4)))
        while len(pool._processes) < 2:  # type: ignore[attr-defined]  # the second worker may come later
            pool.submit(abs, 0).result()
    report.put([p.pid for p in psutil.Process().children(recursive=True)])
    time.sleep(600)  # the test SIGKILLs us long before; the managers must then exit on their own


def manager_in_a_pool_task(value: int) -> tuple[int, int]:
    """A task that starts its own manager (a library using one inside a multiprocessing.Pool
    worker, which is daemonic); returns what the manager held, and the manager's pid."""
    import reflectmgr

    with reflectmgr.Manager() as m:
        d = m.dict(v=value)
        d["v"] += 1
        return d["v"], int(m.pid or 0)


def hold_proxies(address: Any, authkey: bytes, n: int) -> None:
    """Connect, take ``n`` proxies, tell the parent, and wait to be killed."""
    import reflectmgr

    conn = reflectmgr.connect(address, authkey)
    d = conn.root["data"]
    held = [d[str(i)] for i in range(n)]
    conn.root["ready"] = len(held)
    time.sleep(600)  # killed by the test while holding every proxy


def die_mid_message(address: Any, authkey: bytes, report: Any) -> None:
    """Open a shared-memory connection, send half of a large frame, tell the parent, wait to be killed."""
    import os
    import pickle

    from reflectmgr._transport.auth import client_handshake
    from reflectmgr._transport.shm import upgrade_client
    from reflectmgr._transport.sockets import connect
    from reflectmgr._wire.framing import pack_header

    stream = connect(address, 10.0)
    client_handshake(stream, authkey)
    t = upgrade_client(stream)  # type: ignore[arg-type]
    t.send(0, pickle.dumps((0, (), 27, 0, (os.urandom(16), os.getpid()))))  # HELLO
    t.recv()
    t._sendall(pack_header(8 << 20, 0) + b"\x80" * (3 << 20))  # 3 of the 8 MiB it announces
    report.put("half sent")
    time.sleep(600)  # killed by the test in the middle of its message


def lock_and_wait(lock: Any, times: int, acquired: Any, release_first: bool) -> None:
    """Acquire ``lock`` ``times`` times (an RLock may nest), maybe release it all, tell the
    parent, and wait to be killed."""
    for _ in range(times):
        lock.acquire()
    if release_first:
        for _ in range(times):
            lock.release()
    acquired.set()
    time.sleep(600)  # killed by the test


def wait_for_lock(lock: Any, waiting: Any) -> None:
    """Tell the parent, then block in acquire() until killed (or, wrongly, until acquiring)."""
    waiting.set()
    lock.acquire()
    time.sleep(600)


def lock_while_another_thread_waits(lock: Any, q: Any, acquired: Any) -> None:
    """Hold ``lock`` while another thread of this process is blocked in ``q.get()`` (a call the
    manager serves on another connection, which will not notice this process die)."""
    import threading

    threading.Thread(target=q.get, daemon=True).start()
    lock.acquire()
    acquired.set()
    time.sleep(600)  # killed by the test


def wait_in(obj: Any, method: str) -> None:
    """Block in ``obj.method()`` (a queue's get, a condition's wait...) until killed."""
    if method == "wait":
        with obj:
            obj.wait()
    else:
        getattr(obj, method)()
