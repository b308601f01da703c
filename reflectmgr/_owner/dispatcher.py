"""One thread that serves every shared-memory client, so that many clients do not thrash the GIL.

    client A ring --\\                                   /-- runs inline (cannot block, see inline.py)
    client B ring ---> dispatcher: whole frame there? --<
    client C ring --/   (one thread, one GIL holder)     \\-- hands it to the client's own thread
          |                                                   (Lock.acquire that must wait,
          +-- nothing anywhere: spin while it pays, then       Queue.get on an empty queue,
              sleep on the bell (one futex word every          user code, RLock, a large frame)
              client rings after publishing, only if the
              dispatcher sleeps)

With a thread per connection, every request wakes its own thread and that thread then queues for
the GIL behind the others: two kernel wake-ups per request, and the threads take turns on the GIL
even when each has microseconds of work. The dispatcher takes requests from every ring in turn on
one thread, with no wake-up while requests keep coming.

Each connection still has its thread (started by the server as before). It sleeps in ``poll`` on
the client's socket (which tells EOF) and on a pipe the dispatcher writes to when it hands over a
request. A connection is served by one of the two at a time: whoever holds its ``turn`` lock. The
dispatcher takes the turn without waiting (a connection whose thread has it is skipped); a handed
over request keeps the turn until the thread has replied, and the thread then rings the bell so
that the dispatcher looks at that ring again.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from .._transport import waiting
from .._transport.shm import SAFETY_MS, Bell, RingFull, ShmTransport
from ..errors import ReflectmgrError
from .channel import Channel
from .inline import inline_handler

log = logging.getLogger("reflectmgr.server")

_now = time.perf_counter_ns
# What the dispatcher hands over: a decoded request (op, oid, args), or a whole frame to read.
_READ_FRAME = object()


class _Connection:
    __slots__ = ("channel", "handoff", "pending", "transport", "turn", "wake_r", "wake_w")

    def __init__(self, channel: Channel, transport: ShmTransport) -> None:
        self.channel = channel
        self.transport = transport
        self.turn = threading.Lock()
        self.pending: Any = None  # set by the dispatcher, with the turn, before it writes the pipe
        self.wake_r, self.wake_w = os.pipe()
        self.handoff: BaseException | None = None  # a failure of this connection seen by the dispatcher

    def close(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


class Dispatcher:
    """Serves the shared-memory connections registered with :meth:`serve`."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self.bell = Bell.create()
        self._stopping = stopping
        self._connections: tuple[_Connection, ...] = ()  # replaced, never mutated: iterated unlocked
        self._lock = threading.Lock()
        self._spin = waiting.SpinPolicy(True, 1)
        self._thread = threading.Thread(target=self._run, name="reflectmgr-dispatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Wake the dispatcher so that it sees ``stopping()`` (the server calls it when stopping)."""
        self.bell.wake()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # -- the connection's thread ---------------------------------------------------------------
    def serve(self, channel: Channel, transport: ShmTransport) -> None:
        """Run by the connection's thread until the peer is gone (EOFError, OSError) or the server
        stops: the dispatcher serves the connection, this thread what it hands over."""
        conn = _Connection(channel, transport)
        poll = select.poll()
        poll.register(transport.fileno(), select.POLLIN)
        poll.register(conn.wake_r, select.POLLIN)
        with self._lock:
            self._connections += (conn,)
        self.bell.ring()  # a request may be in the ring already
        try:
            while not self._stopping():
                for fd, _ in poll.poll():
                    if fd == conn.wake_r:
                        os.read(conn.wake_r, 64)
                        self._take_over(conn)
                    else:
                        transport.check_peer()  # raises EOFError when the peer is gone
        finally:
            with self._lock:
                self._connections = tuple(c for c in self._connections if c is not conn)
            self._retire(conn)

    @staticmethod
    def _retire(conn: _Connection) -> None:
        """Take the turn for good (the dispatcher may still hold it, or hand us a last request we
        drop: the peer is gone or the server stops), so nothing serves the connection again."""
        while not conn.turn.acquire(timeout=0.05):
            if conn.pending is not None:  # handed over: the turn is ours already
                conn.pending = None
                break
        conn.close()

    def _take_over(self, conn: _Connection) -> None:
        """Serve what the dispatcher handed over (it holds the turn for us), then give it back."""
        pending, conn.pending = conn.pending, None
        if pending is None:
            return
        try:
            if conn.handoff is not None:
                raise conn.handoff
            if pending is _READ_FRAME:
                releases, call = conn.channel.take_request(*conn.transport.recv())
                conn.channel.run(releases, *(call or (None, None, None)))
            elif isinstance(pending, RingFull):
                conn.transport.send(*pending.frame)  # a reply the dispatcher could not send without waiting
            else:
                conn.channel.run(*pending)
        finally:
            conn.turn.release()
            self.bell.ring()  # the dispatcher may sleep and not know the ring is its again

    # -- the dispatcher's thread ----------------------------------------------------------------
    def _run(self) -> None:
        spin, bell = self._spin, self.bell
        safety = SAFETY_MS / 1000
        while not self._stopping():
            if self._serve_round():
                continue
            if spin.begin():
                caught = False
                try:
                    deadline = _now() + spin.window
                    while _now() < deadline:
                        if self._anything():
                            caught = True
                            break
                finally:
                    spin.end(caught)
                if caught:
                    continue
            bell.prepare()
            try:
                if not self._anything() and not self._stopping():
                    bell.sleep(safety)
            finally:
                bell.awake()

    def _anything(self) -> bool:
        for conn in self._connections:
            try:
                if conn.transport.frame_ready() is not None and not conn.turn.locked():
                    return True
            except ValueError:  # unmapped by its thread just now: it is leaving
                continue
        return False

    def _serve_round(self) -> bool:
        """One request from every connection that has one; True if any was found."""
        served = False
        for conn in self._connections:
            transport = conn.transport
            try:
                if transport.frame_ready() is None or not conn.turn.acquire(False):
                    continue
            except ValueError:  # unmapped by its thread just now: it is leaving
                continue
            served = True
            try:
                ready = transport.frame_ready()  # again, now that the turn is ours
                if ready is None:
                    conn.turn.release()
                elif not ready:
                    self._hand_over(conn, _READ_FRAME)  # a large or split frame: its thread may wait
                else:
                    self._serve_one(conn)
            except BaseException as exc:  # this connection's failure (garbage, a vanished peer)
                conn.handoff = exc if isinstance(exc, Exception) else ReflectmgrError(repr(exc))
                self._hand_over(conn, _READ_FRAME)
        return served

    def _serve_one(self, conn: _Connection) -> None:
        channel = conn.channel
        releases, call = channel.take_request(*conn.transport.recv())
        op, oid, args = call or (None, None, ())
        handle = inline_handler(channel.peer, releases, op, oid, args)
        if handle is not None:
            conn.transport.refuse_wait = True
            try:
                done = channel.run(releases, op, oid, args, handle)
            except RingFull as full:
                conn.transport.refuse_wait = False  # before its thread may run
                self._hand_over(conn, full)
                return
            finally:
                conn.transport.refuse_wait = False
            if done:
                conn.turn.release()
                return
            releases = ()  # applied: what is handed over is the call alone
        self._hand_over(conn, (releases, op, oid, args))

    def _hand_over(self, conn: _Connection, pending: Any) -> None:
        conn.pending = pending
        try:
            os.write(conn.wake_w, b"!")
        except OSError:  # its thread is gone (and closed the pipe): nothing left to serve
            conn.pending = None
            conn.turn.release()
