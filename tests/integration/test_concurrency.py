"""Many clients and threads at once; a blocking call never stalls the others."""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time

import reflectmgr

from ..helpers import CHILD, PROMPT, second_session
from .objects import slow_echo


def _hammer(address: object, authkey: bytes, n: int, key: str) -> None:
    conn = reflectmgr.connect(address, authkey)  # type: ignore[arg-type]
    counts = conn.root["counts"]
    for _ in range(n):
        counts.append(key)


def test_many_client_processes(m: reflectmgr.Manager) -> None:
    m.root["counts"] = []
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(m.address, m.authkey, 200, str(i))) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(CHILD)
        assert p.exitcode == 0
    counts = m.root["counts"]
    assert len(counts) == 800 and sorted(set(counts)) == ["0", "1", "2", "3"]


def test_threads_share_proxies(m: reflectmgr.Manager) -> None:
    lst = m.list()

    def worker(k: int) -> None:
        for i in range(100):
            lst.append((k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lst) == 800 and len(set(lst)) == 800


def test_blocking_call_does_not_stall_other_threads_or_clients(m: reflectmgr.Manager) -> None:
    q = m.new(queue.Queue)
    got: list[object] = []
    blocked = threading.Thread(target=lambda: got.append(q.get(timeout=CHILD)))
    blocked.start()
    # While that thread blocks inside the manager, this thread and another client proceed.
    other = second_session(m)
    started = time.monotonic()
    d = other.dict(a=1)
    assert d["a"] == 1 and m.list([1])[0] == 1
    assert time.monotonic() - started < PROMPT
    q.put("wake")
    blocked.join(PROMPT)
    assert got == ["wake"]


def test_slow_call_runs_alongside_fast_ones(m: reflectmgr.Manager) -> None:
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(m.new(slow_echo, "slow", 1.0)))
    t.start()
    started = time.monotonic()
    for _ in range(50):
        m.dict()
    fast = time.monotonic() - started
    t.join(PROMPT)
    assert results and fast < 1.0  # fifty calls finished while the slow one was still running


def test_threads_that_end_leave_no_connection_behind(m: reflectmgr.Manager) -> None:
    # Each thread has its own connection; when it ends, the connection closed, but the client
    # kept the transport (its rings mapped, its memfd open) until it next connected: a burst of
    # 200 short threads left 160 descriptors behind.
    import gc

    import psutil

    d = m.dict(n=0)
    d.get("n")  # this thread's own connection, before counting
    here = psutil.Process()
    before = here.num_fds()
    together = threading.Barrier(40)

    def call() -> None:
        d.get("n")  # a connection of its own ...
        together.wait(PROMPT)  # ... open while the 39 others' are

    threads = [threading.Thread(target=call) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PROMPT)
    assert not any(t.is_alive() for t in threads)
    gc.collect()
    assert here.num_fds() - before < 8, here.num_fds() - before
    assert d.get("n") == 0  # and this thread's connection still serves
