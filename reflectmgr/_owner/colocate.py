"""Keep the manager's serving threads on one CPU while several clients keep it busy (Linux).

The threads of a manager share one GIL: only one of them runs Python at a time. Spread over
CPUs, every hand-off of the GIL is a wake-up across CPUs (on a virtual machine often of a halted
virtual CPU: tens of microseconds). With clients calling back to back, the scheduler tends to put
each connection's thread next to its client; then each waits on the other and on the GIL through
the kernel at every request (measured on 2 cores, 2 clients: 25-35k calls/s, against 120k for one
client). Kept on one CPU, the threads hand the GIL over where they are, and the clients have the
other CPUs: 114-125k calls/s for 2 clients, 89-109k for 4.

So while the serving threads used between ``HIGH`` and ``MAX_BUSY`` of a CPU over the last
``PERIOD_NS`` (more means that calls releasing the GIL ran in parallel, which one CPU would
serialize) and at least two connections were served in it, they are pinned to the CPU of the
thread that decides. Below ``LOW``, or with one connection left, they get their affinity back
(with none left, at once: the next connection starts free); and every ``REPROBE`` periods they
are freed for one period, to look again. Freed, they get the CPUs the main thread may use now
(it serves nothing), so a confinement made while they were pinned (``taskset -a``) holds. A
manager under CPU-bound workers stays below ``HIGH`` (its clients compute between calls, and
the CPU a waiting client leaves is the best place for its answer), so it is never pinned.

Under CPU-bound workers the opposite placement pays: while no core is free and the serving
threads are mostly idle (their clients compute between calls), or one alone served in the last
period (one client calling back to back), each connection's thread *follows* its client, pinned
to the CPU the client last waited on (its transport's ``peer_cpu``: shared memory, unix sockets),
so that the client's wake-up puts it there rather than behind another worker (``follow``;
FOLLOW_NS, FOLLOW_AFTER; "no core free" means a look saw it within CROWDED_NS, or for a client
calling back to back, two of its thread's last three looks, none at a pause: BURSTS). Never
while the threads are pinned together.

With cores free and one client calling back to back, a connection's thread that a wake-up put on
its client's CPU is kept off that CPU (APART), so that both spin on CPUs of their own instead of
taking turns on one; freed once its client calls only now and then, and at once when another
client is served or no core is free.

A process forked from a pinned (following, kept apart) thread (``multiprocessing``, ``os.fork``)
gets the manager's whole affinity back at once. A thread, or a process started without a fork
handler (``subprocess``), that user code starts from a call while the threads are pinned inherits
the one-CPU affinity until it sets its own (from a thread kept apart: every CPU but its client's).
``REFLECTMGR_COLOCATE=0`` turns the whole thing off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .._transport import waiting

_now = time.perf_counter_ns
PERIOD_NS = 50_000_000  # how often the serving threads look at the manager's CPU use
HIGH = 0.75  # pin at or above this share of one CPU...
LOW = 0.4  # ...and unpin below this one: the hysteresis keeps a busy manager from flapping
# Above this, the process ran on more than one CPU at once: calls that release the GIL (numpy,
# hashing, I/O) run in parallel, and one CPU would serialize them. Never pinned then; and since
# a pinned process cannot show it, pinned threads are freed every REPROBE periods to look again.
MAX_BUSY = 1.25
REPROBE = 20
# Under load (no core free), while the serving threads are mostly idle (their clients work
# between calls: CPU-bound workers), a connection's thread follows its client (shared memory,
# where the client says where it waits; a unix socket, where /proc says the peer last ran):
# pinned to that CPU, so that the client's wake-up puts it there, where the client sleeps or
# yields (and the caches are warm), not on another CPU, behind that CPU's task (the other worker,
# or a second client's call). Never while several serving threads are busy (clients calling back
# to back: each pair would take turns on one CPU, where colocation does better; one alone does
# follow: with every core busy, its client and it apart each waited behind a busy loop, p99 in
# milliseconds) nor before a period has measured them. It looks every FOLLOW_NS at most, and
# follows once that has held on FOLLOW_AFTER more looks than not (one busy moment is not load);
# it is freed when the looks even out again, or at once when the threads are pinned together.
FOLLOW_NS = 1_000_000
FOLLOW_AFTER = 3
# "No core free" holds while any serving thread's look saw more runnable tasks than cores within
# this long. A look comes right after a reply, when the other workers may be waiting on the
# manager themselves (not runnable): with two workers on two cores, a thread that did not follow
# saw that in one look in three or fewer, so judged look by look it could stay unfollowed for a
# whole run (3 runs in 36 with a call's median at 25-28 us instead of 9: benchmarks/README.md).
CROWDED_NS = 20_000_000
# BURSTS. That judgment misled a client calling back to back in bursts, woken by another process
# between them (a parent handing it work; the benchmark's runner between two systems): the looks
# at a burst's start and end saw that process runnable, and a third of the quiet table's bursts
# ran with the thread pinned to its client's CPU, 10-17 us a call instead of 3-5. So a thread that
# served APART_CALLS or more since its last look is judged on its own last three looks instead:
# two of them must see no core free (with every core busy, all do), and a look that comes
# PAUSE_NS or more after the one before starts the count again (it and the look before it are a
# burst's edges). Clients that work between their calls (APART_CALLS is 16 a millisecond) keep
# the judgment above.
PAUSE_NS = 5_000_000
# With cores free and one client calling back to back, the opposite again: its thread kept off
# the client's CPU (APART). Spinning, each side waits on a CPU of its own, a call in 3-5 us; but a
# kernel that packs tasks (this VM's) puts a woken thread on its waker's CPU, where the two take
# turns through the scheduler at every call (10-14 us: benchmarks/placement.py, "bursts"). So a
# look that finds the thread on its client's CPU after at least APART_CALLS requests since the
# last look keeps it off that CPU; after APART_AFTER looks in a row with fewer (a client calling
# now and then, where a wake-up on the same CPU is cheaper than one of an idle virtual CPU), it is
# freed.
APART_CALLS = 16
APART_AFTER = 3


def _available() -> bool:
    return (
        sys.platform == "linux"
        and hasattr(os, "sched_setaffinity")
        and hasattr(time, "pthread_getcpuclockid")
        and waiting.CORES > 1
        and waiting.gil_enabled()  # free-threaded: threads run at once
        and os.environ.get("REFLECTMGR_COLOCATE", "1") != "0"
    )


class Colocation:
    """The serving threads of one server, and whether they are pinned now."""

    def __init__(self) -> None:
        self.enabled = _available()
        if self.enabled:
            _all.add(self)
        self._mask: set[int] = set(os.sched_getaffinity(0)) if self.enabled else set()
        self._lock = threading.Lock()
        # The threads registered with serve()/hold(): native id -> (CPU clock, its time at joining)
        self._threads: dict[int, tuple[int, int]] = {}
        self._gone = 0  # CPU time of the threads that have left, while they were registered
        self.pinned = -1  # the CPU they are pinned to, or -1
        self._held = 0  # periods pinned since the last decision to pin
        self._at = _now()
        self._cpu = 0
        self._seen: set[int] = set()  # the threads that served a request in this period
        self._main_serves = False  # the main thread registered once (a test's, an embedding's)
        self._followers: dict[int, _Follower] = {}  # native id -> its pin to its client's CPU
        self.busy = 1.0  # the serving threads' CPU use over the last period (busy until measured)
        self.active: int | None = None  # the threads that served a request in it (None: not measured)
        self._crowded_at = -(1 << 62)  # when a look last saw more runnable tasks than cores

    def serve(
        self,
        channel: Any,
        stopping: Callable[[], bool],
        client_cpu: Callable[[], int] | None = None,
        leaving_cpu: Callable[[], None] | None = None,
    ) -> None:
        """``channel.serve_forever(stopping)`` on this thread, counted for the decision;
        ``client_cpu``: where its client last waited (-1: unknown), for following it under load
        and keeping apart from it when quiet; ``leaving_cpu``: tells the client that this thread
        moves off the CPU where it last waited (its transport's)."""
        if not self.enabled:
            channel.serve_forever(stopping)
            return
        tid = threading.get_native_id()
        follower = _Follower(tid, client_cpu, leaving_cpu) if client_cpu is not None else None

        def more() -> bool:
            return not stopping()

        def done(_msg: Any) -> bool:
            now = _now()
            if now - self._at >= PERIOD_NS:
                self.decide(now, self.cpu_time())
            self._seen.add(tid)
            if follower is None:
                return False
            follower.served += 1
            if now - follower.looked >= FOLLOW_NS:
                self.follow(follower, now)
            return False

        with self.hold(follower):
            channel.serve_while(more, done)

    @contextlib.contextmanager
    def hold(self, follower: _Follower | None = None) -> Iterator[None]:
        """A context in which this thread is one of the serving threads (pinned with them)."""
        if not self.enabled:
            yield
            return
        tid = threading.get_native_id()
        self._join(tid, follower)
        try:
            yield
        finally:
            self._leave(tid)

    def follow(self, follower: _Follower, now: int) -> None:
        """A look of ``follower``'s (on its own thread): pin it to its client's CPU under load
        while the serving threads are mostly idle; free it when either goes, or keep it apart
        from its client (:meth:`_settle`); never while the threads are pinned together."""
        paused, follower.looked = now - follower.looked >= PAUSE_NS, now
        served, follower.served = follower.served, 0
        full = not waiting.load.cores_free()  # neither this nor busy needs the lock
        if full:
            self._crowded_at = now
        # A client calling back to back (APART_CALLS) is judged on its thread's own last looks, none
        # right after a pause (BURSTS).
        follower.seen = 0 if paused else (follower.seen << 1 | full) & 7
        if served >= APART_CALLS:
            crowded = follower.seen in (3, 5, 6, 7)  # two of the last three
        else:
            crowded = now - self._crowded_at < CROWDED_NS
        # Busy serving threads follow only when one alone is (one client calling back to back):
        # with several, colocation pins them together instead.
        alone = self.active is not None and self.active <= 1
        worth = (self.busy < LOW or alone) and crowded
        with self._lock:  # against decide(): pinned together, or not, and the affinities with it
            if self.pinned >= 0:  # pinned together: that pin rules (and reset the count)
                follower.cpu, follower.load, follower.apart = -1, 0, -1
                return
            if not worth:
                follower.load = max(0, follower.load - 1)
                if follower.load == 0:
                    self._settle(follower, alone and not crowded, served)
                return
            follower.load = min(FOLLOW_AFTER, follower.load + 1)
            cpu = follower.client_cpu()
            if follower.load < FOLLOW_AFTER or cpu < 0 or cpu == follower.cpu or cpu not in self._free_mask():
                return
            follower.cpu, follower.apart = cpu, -1
            _set_affinity(follower.tid, {cpu})

    def _settle(self, follower: _Follower, quiet: bool, served: int) -> None:
        """A look of a thread that does not follow (``self._lock`` held), which has ``served``
        requests since its last: free it, or keep it apart from its client (APART_CALLS)."""
        apart = follower.apart
        if not quiet:
            apart = -1
        elif served >= APART_CALLS:
            follower.slow = 0
            client = follower.client_cpu()
            if client >= 0 and client != apart and client == waiting.current_cpu():
                apart = client  # a wake-up put us on its CPU: off it
        elif apart >= 0:
            follower.slow += 1
            if follower.slow >= APART_AFTER:  # its client calls now and then: wake-ups are cheaper here
                apart = -1
        if follower.cpu < 0 and apart == follower.apart:
            return  # nothing to change: no system call
        mask = self._free_mask()
        if apart >= 0 and not mask - {apart}:  # the only CPU we may use: stay
            apart = -1
            if follower.cpu < 0 and follower.apart < 0:
                return
        follower.cpu, follower.apart, follower.slow = -1, apart, 0
        if apart >= 0 and follower.leaving_cpu is not None:
            follower.leaving_cpu()  # before we move: the client must not yield its CPU to us
        _set_affinity(follower.tid, mask - {apart})

    def cpu_time(self) -> int:
        """CPU time (ns) the serving threads have used while registered: theirs, not the rest of
        the process's (an in-process owner's own work, the release flusher)."""
        total = self._gone
        for clock, start in list(self._threads.values()):
            try:
                total += time.clock_gettime_ns(clock) - start
            except OSError:  # ended just now: counted in _gone by its _leave
                continue
        return total

    def _join(self, tid: int, follower: _Follower | None = None) -> None:
        clock = time.pthread_getcpuclockid(threading.get_ident())
        with self._lock:
            if tid == threading.main_thread().native_id:
                self._main_serves = True
            self._threads[tid] = (clock, time.clock_gettime_ns(clock))
            if follower is not None:
                self._followers[tid] = follower
            if self.pinned >= 0:
                _set_affinity(tid, {self.pinned})

    def _leave(self, tid: int) -> None:
        with self._lock:
            entry = self._threads.pop(tid, None)
            follower = self._followers.pop(tid, None)
            if entry is None:  # a forked child leaving its parent's block: nothing of it is here
                return
            clock, start = entry
            self._gone += time.clock_gettime_ns(clock) - start
            if self.pinned >= 0 or (follower is not None and follower.pinned()):
                _set_affinity(tid, self._free_mask())  # a thread that goes on (the dispatcher's) is freed
                if self.pinned >= 0 and not self._threads:  # the last one: the next connection starts free
                    self.pinned = -1

    def _free_mask(self) -> set[int]:
        """The CPUs a freed thread gets: the main thread's now (it serves nothing, so it shows
        what the process may use, confined since we pinned or not), else what we saw then."""
        main = threading.main_thread().native_id
        if not main or self._main_serves:
            return self._mask
        try:
            return os.sched_getaffinity(main) or self._mask
        except OSError:  # the main thread has ended (a daemon manager thread outlives it)
            return self._mask

    def decide(self, now: int, cpu: int) -> None:
        """End a period at ``now`` (perf_counter_ns) with the serving threads' CPU time ``cpu``
        (:meth:`cpu_time`): pin or unpin them."""
        if not self._lock.acquire(False):
            return  # another thread is deciding
        try:
            elapsed = now - self._at
            if elapsed < PERIOD_NS:
                return  # decided just now by another thread
            busy = (cpu - self._cpu) / elapsed
            active = len(self._seen)
            self._at, self._cpu, self._seen, self.busy, self.active = now, cpu, set(), busy, active
            if self.pinned < 0:
                if HIGH <= busy <= MAX_BUSY and active >= 2:
                    self._mask = os.sched_getaffinity(0)  # unpinned now: what to give back later
                    here = waiting.current_cpu()
                    if here in self._mask:
                        self.pinned, self._held = here, 0
                        for tid in self._threads:
                            _set_affinity(tid, {here})
                        for follower in self._followers.values():  # the pin together replaces theirs
                            follower.cpu, follower.load, follower.apart = -1, 0, -1
            else:
                self._held += 1
                if busy < LOW or active < 2 or self._held >= REPROBE:
                    self.pinned = -1
                    mask = self._free_mask()
                    for tid in self._threads:
                        _set_affinity(tid, mask)
        finally:
            self._lock.release()


class _Follower:
    """A serving thread's pin to its client's CPU (:meth:`Colocation.follow`)."""

    __slots__ = ("apart", "client_cpu", "cpu", "leaving_cpu", "load", "looked", "seen", "served", "slow", "tid")

    def __init__(self, tid: int, client_cpu: Callable[[], int], leaving_cpu: Callable[[], None] | None = None) -> None:
        self.tid = tid
        self.client_cpu = client_cpu
        self.leaving_cpu = leaving_cpu
        self.cpu = -1  # the CPU it is pinned to now, or -1
        self.apart = -1  # the CPU it is kept off now (its client's, while quiet), or -1
        self.served = 0  # requests served since it last looked
        self.slow = 0  # looks in a row, while apart, that found fewer than APART_CALLS served
        self.load = 0  # looks that saw it worth following, less those that did not (0..FOLLOW_AFTER)
        self.looked = _now()  # when it last looked (perf_counter_ns)
        self.seen = 0  # its last three looks, newest in bit 0: which saw no core free (BURSTS)

    def pinned(self) -> bool:
        """Whether its affinity is not the free one (following, or kept apart)."""
        return self.cpu >= 0 or self.apart >= 0


def _set_affinity(tid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError:  # the thread has just ended, or a container forbids it: nothing to keep
        pass


# -- a process forked from a pinned thread gets the whole affinity back ------------------------
_all: weakref.WeakSet[Colocation] = weakref.WeakSet()
_forking: list[int] = [0]


def _before_fork() -> None:
    _forking[0] = threading.get_native_id()


def _after_fork_in_child() -> None:
    tid = _forking[0]
    for colocation in list(_all):
        follower = colocation._followers.get(tid)
        if (colocation.pinned >= 0 and tid in colocation._threads) or (follower is not None and follower.pinned()):
            _set_affinity(0, colocation._mask)
        colocation.pinned = -1  # the child serves nothing of its parent's
        colocation._threads = {}
        colocation._followers = {}
        colocation._lock = threading.Lock()  # another thread of the parent may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
