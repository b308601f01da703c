"""Robust locks (m.Lock(robust=True), m.RLock(robust=True)): SIGKILL at each point of a lock's life.

- the owner killed while holding (once, or an RLock nested twice): released, and the next
  acquire() holds it and raises LockOwnerDied, once;
- the owner killed after releasing: nothing to report;
- a waiter killed while blocked in acquire(): it never takes the lock;
- ``with lock:`` after an owner died: the error, and the lock is free again.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

import reflectmgr

from ..helpers import CHILD, DEATH, wait_until
from .test_faults import spawned
from .workers import lock_and_wait, lock_while_another_thread_waits, wait_for_lock

KINDS = ["Lock", "RLock"]


def _robust(m: reflectmgr.Manager, kind: str) -> Any:
    return getattr(m, kind)(robust=True)


def _kill(child: Any) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.join(DEATH)
    assert child.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("kind", KINDS)
def test_an_owner_killed_holding_the_lock_releases_it_and_the_next_acquirer_is_told(
    manager: reflectmgr.Manager, kind: str
) -> None:
    lock = _robust(manager, kind)
    acquired = manager.Event()
    times = 2 if kind == "RLock" else 1
    with spawned(lock_and_wait, lock, times, acquired, False) as child:
        assert acquired.wait(CHILD)
        assert lock.locked()
        _kill(child)
    with pytest.raises(reflectmgr.LockOwnerDied, match="you hold it now"):
        lock.acquire(timeout=DEATH)
    assert lock.locked()  # as EOWNERDEAD: the acquirer holds it
    lock.release()
    assert not lock.locked()
    assert lock.acquire(timeout=DEATH) is True  # told once only
    lock.release()


def test_an_owner_killed_while_its_other_thread_is_blocked_in_a_call_releases_it(manager: reflectmgr.Manager) -> None:
    # The blocked call's connection thread will not see the process die; the lock must not wait for it.
    lock, q, acquired = manager.Lock(robust=True), manager.Queue(), manager.Event()
    before = manager.stats().connections
    with spawned(lock_while_another_thread_waits, lock, q, acquired) as child:
        assert acquired.wait(CHILD)
        # the child's two threads each have their connection: the waiting one is (about to be) blocked
        wait_until(lambda: manager.stats().connections >= before + 2, CHILD, "the child's second connection")
        _kill(child)
    with pytest.raises(reflectmgr.LockOwnerDied):
        lock.acquire(timeout=DEATH)
    lock.release()
    q.put("wake the orphaned get")  # its thread in the manager ends, and with it the session


@pytest.mark.parametrize("kind", KINDS)
def test_an_owner_killed_after_releasing_leaves_nothing_to_report(manager: reflectmgr.Manager, kind: str) -> None:
    lock = _robust(manager, kind)
    acquired = manager.Event()
    with spawned(lock_and_wait, lock, 1, acquired, True) as child:
        assert acquired.wait(CHILD)
        _kill(child)
    assert lock.acquire(timeout=DEATH) is True
    lock.release()


@pytest.mark.parametrize("kind", KINDS)
def test_a_waiter_killed_while_blocked_never_acquires(manager: reflectmgr.Manager, kind: str) -> None:
    lock = _robust(manager, kind)
    waiting = manager.Event()
    assert lock.acquire()
    with spawned(wait_for_lock, lock, waiting) as child:
        assert waiting.wait(CHILD)
        _kill(child)  # blocked in acquire(), or about to be: either way it must never hold it
        lock.release()
    # Had the dead waiter taken it, this would time out (or report a dead owner).
    assert lock.acquire(timeout=DEATH) is True
    lock.release()
    wait_until(lambda: not lock.locked(), DEATH, "the lock to stay free")


def test_with_after_an_owner_died_raises_and_leaves_the_lock_free(manager: reflectmgr.Manager) -> None:
    lock = manager.Lock(robust=True)
    acquired = manager.Event()
    with spawned(lock_and_wait, lock, 1, acquired, False) as child:
        assert acquired.wait(CHILD)
        _kill(child)
    with pytest.raises(reflectmgr.LockOwnerDied):
        with lock:
            pytest.fail("the body of a with-statement runs only when __enter__ returns")
    assert not lock.locked()
    with lock:
        assert lock.locked()
    assert not lock.locked()


def test_robust_locks_keep_lock_semantics(manager: reflectmgr.Manager) -> None:
    lock, rlock = manager.Lock(robust=True), manager.RLock(robust=True)
    assert lock.acquire() and not lock.acquire(False) and not lock.acquire(True, 0.01)
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    assert rlock.acquire() and rlock.acquire()  # reentrant for the same client thread
    rlock.release()
    assert rlock.locked()
    rlock.release()
    assert not rlock.locked()
    with pytest.raises(RuntimeError):
        rlock.release()
    for robust in (lock, manager.Lock()):  # a timeout with blocking=False is an error, as for threading.Lock
        with pytest.raises(ValueError, match="non-blocking"):
            robust.acquire(False, 1.0)
    assert not lock.locked()
