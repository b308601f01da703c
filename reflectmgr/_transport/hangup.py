"""One thread per process that notices a shared-memory peer gone (closed, killed, crashed) and
wakes at once whoever sleeps on that connection's rings; so a futex sleeper needs no periodic
look at its socket, and an idle connection costs no wake-up (Linux: epoll).

    ShmTransport (futex)   --watch(fd, gone, wake)-->  epoll on the socket: EPOLLRDHUP (HUP, ERR)
    the peer's end closes  -->  gone(): the transport marks its in-ring "writer closed", as the
                                peer does when it closes cleanly (a killed one cannot), so that
                                every later wait sees it; then wake() (FUTEX_WAKE on our ring
                                words) at once and every REPEAT seconds for LINGER seconds
    a thread of ours closes -->  closing(): out of the epoll before the socket closes (its
                                number may be reused); wake() every REPEAT for LINGER seconds
    dispose (unmap)        -->  forget(): nothing is called after it returns

Why wake again: a futex wake-up is lost on a sleeper that looked (nothing new, not closed) and
had not yet entered its wait; the ring's word does not change on a close, so the wait does not
return by itself. Repeating the wake while a close is fresh bounds that gap to REPEAT; a wait
that begins later sees the close (the flag, or the transport's ``closed``). Extra wakes are
harmless: a sleeper woken for nothing looks and sleeps again.

A process where the thread cannot start (an isolated subinterpreter forbids daemon threads) or
without epoll gets no watcher: :func:`watch` returns None, and the transport looks every
SAFETY_MS. A forked child starts its own at its first watch; the inherited epoll is the
parent's (registrations are shared), and only the child's descriptor of it is closed.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable

log = logging.getLogger("reflectmgr.transport")

REPEAT = 0.2
LINGER = 2.0


class Watch:
    """One transport's registration (what :func:`watch` returns)."""

    __slots__ = ("fd", "gone", "wake")

    def __init__(self, fd: int, gone: Callable[[], None], wake: Callable[[], None]) -> None:
        self.fd = fd
        self.gone = gone
        self.wake = wake


class _Watcher:
    def __init__(self) -> None:
        # Reentrant: the callbacks run under it, and whatever they allocate may run a finalizer
        # on this thread that closes another transport (closing(), forget(): a client dropped
        # without close(), collected then). A plain lock deadlocked the watcher on itself.
        self._lock = threading.RLock()
        self._watched: dict[int, Watch] = {}  # in the epoll, by fd
        self._waking: dict[Watch, float] = {}  # woken every REPEAT until then
        self._epoll = select.epoll()
        try:
            self._r, self._w = os.pipe()  # closing() starts the repeats of a sleeping watcher
        except BaseException:
            self._epoll.close()
            raise
        try:
            os.set_blocking(self._r, False)
            os.set_blocking(self._w, False)
            self._epoll.register(self._r, select.EPOLLIN)
            threading.Thread(target=self._run, name="reflectmgr-hangup", daemon=True).start()
        except BaseException:
            self.drop()
            raise

    def watch(self, fd: int, gone: Callable[[], None], wake: Callable[[], None]) -> Watch:
        entry = Watch(fd, gone, wake)
        with self._lock:
            self._epoll.register(fd, select.EPOLLRDHUP)
            self._watched[fd] = entry
        return entry

    def closing(self, entry: Watch) -> None:
        with self._lock:
            self._unwatch(entry)
            self._waking.setdefault(entry, time.monotonic() + LINGER)
        try:
            os.write(self._w, b"!")
        except OSError:
            pass  # full: the watcher is about to look anyway

    def forget(self, entry: Watch) -> None:
        with self._lock:
            self._unwatch(entry)
            self._waking.pop(entry, None)

    def _unwatch(self, entry: Watch) -> None:
        if self._watched.get(entry.fd) is entry:
            del self._watched[entry.fd]
            self._epoll.unregister(entry.fd)

    def drop(self) -> None:
        """Close this process's descriptors (in a forked child: never unregister anything, the
        epoll is shared with the parent, which goes on using it)."""
        self._epoll.close()
        os.close(self._r)
        os.close(self._w)

    def _run(self) -> None:
        while True:
            # Only this thread and closing() (which then writes to the pipe) add to _waking.
            events = self._epoll.poll(REPEAT if self._waking else -1)
            with self._lock:  # forget() waits for the wakes: none comes after it returns
                for fd, _ in events:
                    if fd == self._r:
                        while _read_some(self._r):
                            pass
                        continue
                    entry = self._watched.get(fd)
                    if entry is None or not _hung_up(fd):
                        # A stale event: its connection was closed (and unwatched) after the poll,
                        # and the number already belongs to another one, which is well. Marking
                        # that one gone set its rings' closed flag mid-handshake (seen in CI).
                        continue
                    del self._watched[fd]
                    self._epoll.unregister(fd)  # level-triggered: it would fire on every poll
                    self._waking[entry] = time.monotonic() + LINGER  # before: a forget() inside gone() ends it
                    _call(entry.gone)  # under the lock: the transport has not closed (its memory is there)
                now = time.monotonic()
                for entry, until in _snapshot(self._waking):
                    if entry not in self._waking:
                        continue  # forgotten by a callback before it (a finalizer run on this thread)
                    if until < now:
                        del self._waking[entry]
                    else:
                        _call(entry.wake)


def _snapshot(waking: dict[Watch, float]) -> list[tuple[Watch, float]]:
    """The items of ``waking`` now. Copying them allocates, and a collection there may run a
    finalizer on this very thread that closes a transport (a thread's connection, disposed when
    the thread's storage goes): closing() or forget() then changes the dict mid-copy, and
    list() raises RuntimeError, which ended the watcher (seen in CI). Copy again then: the
    finalizer has run."""
    while True:
        try:
            return list(waking.items())
        except RuntimeError:
            continue


def _call(fn: Callable[[], None]) -> None:
    """One transport's callback; whatever it raises must not end the thread that serves them all
    (its sleepers would then wait their WATCHED_SAFETY_S)."""
    try:
        fn()
    except Exception:
        log.exception("the hang-up watcher's callback failed")


_HANGUP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


def _hung_up(fd: int) -> bool:
    """Whether the peer of socket ``fd`` is gone now (level-triggered: still true if it is)."""
    poller = select.poll()
    poller.register(fd, _HANGUP)
    return bool(poller.poll(0))


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


# Reentrant only to tell a re-entry: making the watcher allocates, and a collection there may run
# a finalizer that opens a connection on this thread (see watch()).
_lock = threading.RLock()
_watcher: _Watcher | None = None
_unavailable = not hasattr(select, "epoll")


def watch(fd: int, gone: Callable[[], None], wake: Callable[[], None]) -> Watch | None:
    """Call ``gone()`` then ``wake()`` when the peer of socket ``fd`` is gone (see the module's
    docstring); None if this process has no watcher (the caller must look for itself).

    Also None for a connection opened by a finalizer (a ``__del__`` run by a collection) while
    this thread makes the process's watcher: that one is half made, and waiting for it would
    wait for ever. That connection's sleepers look every SAFETY_MS instead."""
    global _watcher, _unavailable
    if _lock._is_owned():  # type: ignore[attr-defined]
        return None
    with _lock:
        if _watcher is None:
            if _unavailable:
                return None
            try:
                _watcher = _Watcher()
            except (RuntimeError, OSError):
                _unavailable = True
                return None
        watcher = _watcher
    try:
        return watcher.watch(fd, gone, wake)
    except OSError:  # the epoll could not take it (ENOMEM, ENOSPC: max_user_watches)
        return None


def closing(entry: Watch) -> None:
    """A thread of ours closes the connection (before its socket closes)."""
    watcher = _watcher
    if watcher is not None:
        watcher.closing(entry)


def forget(entry: Watch) -> None:
    """No more wakes: the rings are about to be unmapped."""
    watcher = _watcher
    if watcher is not None:
        watcher.forget(entry)


def repeating() -> bool:
    """Whether the watcher repeats wake-ups now (a close less than LINGER ago): the only time
    it wakes on a timer."""
    watcher = _watcher
    return watcher is not None and bool(watcher._waking)


def _after_fork_in_child() -> None:
    global _watcher, _lock
    _lock = threading.RLock()
    if _watcher is not None:
        _watcher.drop()
        _watcher = None


os.register_at_fork(after_in_child=_after_fork_in_child)
