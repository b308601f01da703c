"""Robust locks: a lock whose owner dies is released, and the next acquirer is told.

    m.Lock(robust=True) / m.RLock(robust=True)  ->  RobustLock, living in the manager

A stdlib (and plain reflectmgr) lock held by a client that dies stays held for ever, and a client
killed while blocked in ``acquire()`` later takes the lock itself, for no one. A robust lock knows
its owner (the client session whose request acquired it, and for an RLock the connection, which is
the client thread) and:

- when the owner's session ends (the process died or closed its connections), the manager
  releases the lock and marks it: the next ``acquire()`` gets the lock *and* raises
  :class:`~reflectmgr.errors.LockOwnerDied`, like ``EOWNERDEAD`` of POSIX robust mutexes (the
  state the lock protects may be half-updated: repair it, then release). ``with lock:`` cannot
  hand a lock to a body it does not run, so there the lock is released again before the error
  propagates (repair under ``acquire()`` instead);
- a waiter whose client is gone never acquires: a blocked ``acquire()`` looks at its connection
  every ``LIVENESS_S`` and gives up once the peer is gone; one that acquires for a dead peer
  passes the lock on at once.

The underlying primitive is a ``threading.Lock`` for both kinds (reentrancy is counted here), so
the manager can release it from whichever thread notices the owner's end.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..errors import LockOwnerDied
from .channel import serving

LIVENESS_S = 0.2  # how often a blocked acquire() checks that its client is still there


class RobustLock:
    """A manager-side lock (``recursive`` for RLock semantics) released when its owner dies."""

    def __init__(self, recursive: bool = False) -> None:
        self._lock = threading.Lock()
        self._state = threading.Lock()  # guards the fields below
        self._recursive = recursive
        self._owner: Any = None  # the channel (client thread) that holds it
        self._session: Any = None  # ... and its session (client process)
        self._count = 0
        self._owner_died = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        channel = serving()
        if self._recursive and channel is not None:
            with self._state:
                if self._owner is channel:
                    self._count += 1
                    return True
        if not self._wait(channel, blocking, timeout):
            return False
        if channel is not None and not _alive(channel):
            self._lock.release()  # acquired for a client that is gone: pass it on
            return False
        session = channel.peer if channel is not None else None
        with self._state:
            self._owner, self._session, self._count = channel, session, 1
            died, self._owner_died = self._owner_died, False
        if session is not None:
            _held(session).add(self)
        if died:
            raise LockOwnerDied(
                "the previous owner of this lock died holding it: you hold it now, and the state it "
                "protects may be inconsistent; repair it, then release"
            )
        return True

    def _wait(self, channel: Any, blocking: bool, timeout: float) -> bool:
        if not blocking:
            if timeout != -1:
                raise ValueError("can't specify a timeout for a non-blocking call")  # as threading.Lock
            return self._lock.acquire(False)
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while True:
            step = LIVENESS_S if deadline is None else min(LIVENESS_S, max(0.0, deadline - time.monotonic()))
            if self._lock.acquire(True, step):
                return True
            if channel is not None and not _alive(channel):
                return False  # its client is gone: it never acquires
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def release(self) -> None:
        channel = serving()
        with self._state:
            if self._recursive:
                if self._owner is not channel or self._count == 0:
                    raise RuntimeError("cannot release un-acquired lock")
                self._count -= 1
                if self._count:
                    return
            elif not self._lock.locked():
                raise RuntimeError("release unlocked lock")
            session = self._session
            self._owner, self._session, self._count = None, None, 0
        if session is not None:
            with _sessions_lock:
                _sessions.get(session, set()).discard(self)
        self._lock.release()

    def owner_gone(self, session: Any) -> None:
        """The manager's hook: ``session`` ended. If it holds this lock, release and mark it."""
        with self._state:
            if self._session is not session:
                return
            self._owner, self._session, self._count = None, None, 0
            self._owner_died = True
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        try:
            return self.acquire()
        except LockOwnerDied:
            self.release()  # a with-statement whose __enter__ raises never runs __exit__
            raise

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        kind = "RLock" if self._recursive else "Lock"
        state = "locked" if self._lock.locked() else "unlocked"
        return f"<robust {kind} {state}{', owner died' if self._owner_died else ''}>"


def _alive(channel: Any) -> bool:
    try:
        channel.transport.check_peer()
    except (EOFError, OSError):
        return False
    return True


# session -> the robust locks it holds (entries go when the session ends)
_sessions: dict[Any, set[RobustLock]] = {}
_sessions_lock = threading.Lock()


def _held(session: Any) -> set[RobustLock]:
    with _sessions_lock:
        return _sessions.setdefault(session, set())


def session_ended(session: Any) -> None:
    """Called by the server once a session's last connection is gone."""
    with _sessions_lock:
        held = _sessions.pop(session, set())
    for lock in list(held):
        lock.owner_gone(session)
