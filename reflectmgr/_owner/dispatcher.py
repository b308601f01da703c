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
over request keeps the turn with the thread.

A thread that was handed a request keeps its ring for a while (*direct* mode, the ring's flag
tells the client to wake that thread instead of ringing the bell): a client calling methods of
its own objects, one after the other, is then served with no hand-over at all, as by a thread
per connection. The thread gives the ring back when it has been idle for DIRECT_IDLE, or when
DIRECT_STREAK requests in a row were of the kind the dispatcher serves itself; it then rings the
bell in case a request came in meanwhile.
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
from .._transport.shm import Bell, RingFull, ShmTransport
from ..errors import ReflectmgrError
from .channel import Channel
from .colocate import Colocation
from .dispatch import NO_CALL
from .inline import inline_handler

log = logging.getLogger("reflectmgr.server")

_now = time.perf_counter_ns
# A connection's own thread keeps its ring (direct mode) until idle this long...
DIRECT_IDLE = 0.05
# ...or until this many requests in a row could have been served by the dispatcher, while the
# dispatcher served other connections within OTHERS_NS (alone, a thread serves its ring best).
DIRECT_STREAK = 32
OTHERS_NS = 1_000_000
IDLE_SAFETY = 2.0
# After this many rounds in a row with requests from one connection only, and none served from
# another connection (by the dispatcher or by its own thread) for OTHERS_NS, the dispatcher hands
# that connection to its thread (one active client: no dispatcher between it and its thread).
# Without the second condition, two active clients ended up each on its own thread, taking turns
# at the GIL (a client waiting for its wake-up leaves the other alone for dozens of rounds):
# 23-27k calls/s against 41-49k.
SOLO_ROUNDS = 64
# What the dispatcher hands over: a decoded request (op, oid, args), or a whole frame to read.
_READ_FRAME = object()


class _Connection:
    __slots__ = ("channel", "handoff", "mine", "pending", "served_at", "transport", "turn", "wake_r", "wake_w")

    def __init__(self, channel: Channel, transport: ShmTransport) -> None:
        self.channel = channel
        self.transport = transport
        self.turn = threading.Lock()
        self.pending: Any = None  # set by the dispatcher, with the turn, before it writes the pipe
        self.wake_r, self.wake_w = os.pipe()
        self.handoff: BaseException | None = None  # a failure of this connection seen by the dispatcher
        self.mine = False  # the connection's thread holds the turn
        self.served_at = 0  # when a request of this connection was last served, by either thread

    def close(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


class Dispatcher:
    """Serves the shared-memory connections registered with :meth:`serve`."""

    def __init__(self, stopping: Callable[[], bool], colocation: Colocation | None = None) -> None:
        self.bell = Bell.create()
        self._colocation = colocation or Colocation()
        self._stopping = stopping
        self._connections: tuple[_Connection, ...] = ()  # replaced, never mutated: iterated unlocked
        self._lock = threading.Lock()
        self._spin = waiting.SpinPolicy(True)
        self._handed = 0  # connections whose thread holds the turn: the dispatcher then never spins
        self._served_at = 0  # when the dispatcher last served a request
        self._solo: _Connection | None = None  # the only connection served in the last rounds
        self._solo_rounds = 0
        self._thread = threading.Thread(target=self._run, name="reflectmgr-dispatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Wake the dispatcher so that it sees ``stopping()`` (the server calls it when stopping)."""
        self.bell.wake()

    # -- the connection's thread ---------------------------------------------------------------
    def serve(self, channel: Channel, transport: ShmTransport) -> None:
        """Run by the connection's thread until the peer is gone (EOFError, OSError) or the server
        stops: the dispatcher serves the connection, this thread what it hands over."""
        conn = _Connection(channel, transport)
        transport.spin_only_when(self._alone)
        poll = select.poll()
        poll.register(transport.fileno(), select.POLLIN)
        poll.register(conn.wake_r, select.POLLIN)
        with self._lock:
            self._connections += (conn,)
        self.bell.ring()  # a request may be in the ring already
        try:
            with self._colocation.hold():
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

    def _retire(self, conn: _Connection) -> None:
        """Take the turn for good (the dispatcher may still hold it, or hand us a last request we
        drop: the peer is gone or the server stops), so nothing serves the connection again."""
        if conn.mine:
            self._handed -= 1
        else:
            while not conn.turn.acquire(timeout=0.05):
                if conn.pending is not None:  # handed over: the turn is ours already
                    conn.pending = None
                    break
        conn.close()

    def _take_over(self, conn: _Connection) -> None:
        """Serve what the dispatcher handed over (with the turn), keep serving the ring directly
        while that pays, then give the turn back."""
        pending, conn.pending = conn.pending, None
        if pending is None:
            return
        conn.mine = True
        if conn.handoff is not None:
            raise conn.handoff  # the connection failed: the thread ends it (and keeps the turn)
        channel, transport = conn.channel, conn.transport
        _serve_pending(conn, pending)
        pending = None  # served: its arguments must not live on while this thread serves the ring
        streak = 0

        def more() -> bool:
            return not self._stopping() and transport.wait_data(DIRECT_IDLE)

        def done(msg: tuple[Any, ...]) -> bool:
            nonlocal streak
            conn.served_at = now = _now()
            if not self._others_active(conn, now):
                streak = 0  # no other client is active: this thread serves its ring best
                return False
            streak = streak + 1 if inline_handler(channel.peer, (), msg[2], msg[3], msg[4]) else 0
            return streak >= DIRECT_STREAK

        channel.serve_while(more, done)
        transport.set_direct(False)
        conn.mine = False
        self._handed -= 1
        conn.turn.release()
        self.bell.ring()  # a request that came after the last look (the dispatcher may sleep)

    def _others_active(self, conn: _Connection, now: int) -> bool:
        """Has a connection other than ``conn`` been served (by the dispatcher or by its own
        thread) within OTHERS_NS?"""
        return any(other is not conn and now - other.served_at < OTHERS_NS for other in self._connections)

    def _alone(self) -> bool:
        """May a connection's thread spin? Only if it is the one holding a ring and the dispatcher
        is idle: a spinning thread holds the GIL, which they would need."""
        return self._handed == 1 and _now() - self._served_at > OTHERS_NS

    # -- the dispatcher's thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            with self._colocation.hold():  # one of the serving threads: pinned with them
                while not self._stopping():
                    try:
                        self._loop()
                    except Exception:  # a bug here must not leave every client without a server
                        log.exception("the dispatcher failed; it goes on")
        finally:
            self.bell.close()  # the connections' threads end too: nothing rings it after this

    def _loop(self) -> None:
        spin, bell = self._spin, self.bell
        # Every wake-up is direct (a client's ring, stop(), a thread giving a ring back): the
        # timeout is a safety net only, long enough that an idle manager costs nothing.
        safety = IDLE_SAFETY
        while not self._stopping():
            if self._serve_round():
                continue
            window = 0 if self._handed else spin.begin()  # never while a connection's thread needs the GIL
            if window:
                bell.mark_cpu()
                caught = False
                try:
                    deadline = _now() + window
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
            # A request soon after the sleep began reopens the window (without this, five misses
            # in a row closed it for good, and every request then cost a wake-up).
            spin.slept(bell.arrival())

    def _anything(self) -> bool:
        for conn in self._connections:
            try:
                if conn.transport.has_data() and not conn.turn.locked():
                    return True
            except ValueError:  # unmapped by its thread just now: it is leaving
                continue
        return False

    def _serve_round(self) -> bool:
        """One request from every connection that has one; True if any was found."""
        served = 0
        now = _now()
        solo = None
        if self._solo_rounds >= SOLO_ROUNDS and self._solo is not None:
            if not self._others_active(self._solo, now):
                solo = self._solo
        last: _Connection | None = None
        for conn in self._connections:
            transport = conn.transport
            try:
                if not transport.has_data() or not conn.turn.acquire(False):
                    continue
            except ValueError:  # unmapped by its thread just now: it is leaving
                continue
            served += 1
            last = conn
            conn.served_at = now
            try:
                ready = transport.frame_ready()  # again, now that the turn is ours
                if ready is None:
                    conn.turn.release()
                elif not ready:
                    self._hand_over(conn, _READ_FRAME)  # a large or split frame: its thread may wait
                else:
                    self._serve_one(conn, conn is solo)
            except BaseException as exc:  # this connection's failure (garbage, a vanished peer)
                conn.handoff = exc if isinstance(exc, Exception) else ReflectmgrError(repr(exc))
                self._hand_over(conn, _READ_FRAME)
        if served:
            self._served_at = now
            if served == 1 and last is self._solo:
                self._solo_rounds += 1
            else:
                self._solo, self._solo_rounds = (last, 1) if served == 1 else (None, 0)
        return bool(served)

    def _serve_one(self, conn: _Connection, solo: bool) -> None:
        """Serve one whole request, or hand it over: to run where it may block, or because its
        connection is the only one with requests (``solo``: its thread then keeps the ring)."""
        channel = conn.channel
        releases, call = channel.take_request(*conn.transport.recv())
        op, oid, args = call or (NO_CALL, None, ())
        if solo:
            self._solo, self._solo_rounds = None, 0
            self._hand_over(conn, (releases, op, oid, args))
            return
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
        conn.transport.set_direct(True)  # the client's next request wakes the thread, not the bell
        self._handed += 1
        conn.pending = pending
        try:
            os.write(conn.wake_w, b"!")
        except OSError:  # its thread is gone (and closed the pipe): nothing left to serve
            conn.pending = None
            self._handed -= 1
            conn.turn.release()


def _serve_pending(conn: _Connection, pending: Any) -> None:
    """Serve what the dispatcher handed over; a function of its own, so that nothing of the
    request (its arguments) outlives it in the frame of the thread that goes on serving."""
    channel, transport = conn.channel, conn.transport
    if pending is _READ_FRAME:
        releases, call = channel.take_request(*transport.recv())
        channel.run(releases, *(call or (NO_CALL, None, ())))
    elif isinstance(pending, RingFull):
        transport.send(*pending.frame)  # a reply the dispatcher could not send without waiting
    else:
        channel.run(*pending)
