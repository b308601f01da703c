"""An idle manager and its idle clients sleep in the kernel: no thread of either wakes up on a
timer (issue 9: "idle CPU 0%"). Counted as voluntary context switches (/proc), over a window."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time

import pytest

import reflectmgr
from reflectmgr._transport import hangup

from ..helpers import wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="counts context switches in /proc; the waits without a timer (futex, epoll, pidfd) are Linux's",
)

WINDOW = 1.0  # before these waits had no timer, the manager woke about 12 times in it, the client 5


def _switches(pid: int, tids: set[int] | None = None) -> int:
    """Voluntary context switches of the threads of ``pid`` (only ``tids``, if given)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        if tids is not None and int(tid) not in tids:
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        total += int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return total


def _our_threads() -> set[int]:
    return {t.native_id for t in threading.enumerate() if t.name.startswith("reflectmgr") and t.native_id}


def test_an_idle_manager_and_client_make_no_wake_ups(manager: reflectmgr.Manager) -> None:
    d = manager.dict(k=[1])
    inner = d["k"]  # a proxy alive, and one released: the flusher has had work and sleeps again
    inner.append(2)
    dropped = d["k"]
    del dropped
    gc.collect()
    assert wait_until(lambda: not manager.client.cache.has_releases, message="the release to leave")
    assert d["k"] == [1, 2]
    assert manager.pid is not None
    # The watcher repeats a close's wake-ups for hangup.LINGER (an earlier test's manager).
    assert wait_until(lambda: not hangup.repeating(), message="the hang-up watcher to rest")
    tids = _our_threads()
    assert tids, "no reflectmgr thread in this process (the release flusher, at least)"
    ours, theirs = _switches(os.getpid(), tids), _switches(manager.pid)
    time.sleep(WINDOW)  # the measuring window (nothing waits on it)
    ours, theirs = _switches(os.getpid(), tids) - ours, _switches(manager.pid) - theirs
    assert theirs <= 2, f"the idle manager woke {theirs} times in {WINDOW} s"
    assert ours <= 1, f"this process's reflectmgr threads woke {ours} times in {WINDOW} s"
    assert inner == [1, 2]  # and both still serve
