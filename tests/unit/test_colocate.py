"""Colocation of the manager's serving threads: when they are pinned to one CPU, when they get
their affinity back, and what a forked child inherits. Real threads, decisions fed by hand."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from reflectmgr._owner import colocate
from reflectmgr._owner.colocate import HIGH, LOW, MAX_BUSY, PERIOD_NS, REPROBE, Colocation
from reflectmgr._transport import waiting

from ..helpers import PROMPT

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not hasattr(os, "sched_setaffinity") or waiting.current_cpu() < 0 or waiting.CORES < 2,
        reason="colocation needs Linux thread affinity, sched_getcpu and two usable cores",
    ),
]


class _Thread:
    """A thread registered as a serving thread until the test ends."""

    def __init__(self, colocation: Colocation) -> None:
        self.ready, self.stop = threading.Event(), threading.Event()
        self.tid = 0
        self._t = threading.Thread(target=self._run, args=(colocation,), daemon=True)
        self._t.start()
        assert self.ready.wait(PROMPT)

    def _run(self, colocation: Colocation) -> None:
        self.tid = threading.get_native_id()
        with colocation.hold():
            self.ready.set()
            self.stop.wait()

    def affinity(self) -> set[int]:
        return os.sched_getaffinity(self.tid)

    def end(self) -> None:
        self.stop.set()
        self._t.join(PROMPT)
        assert not self._t.is_alive()


@pytest.fixture
def colocation(monkeypatch: pytest.MonkeyPatch) -> Iterator[Colocation]:
    monkeypatch.delenv("REFLECTMGR_COLOCATE", raising=False)
    mask = os.sched_getaffinity(0)
    c = Colocation()
    assert c.enabled
    yield c
    os.sched_setaffinity(0, mask)  # whatever a failing test left on this thread


@pytest.fixture
def threads(colocation: Colocation) -> Iterator[tuple[_Thread, _Thread]]:
    """Two serving threads (as two busy connections would have), ended after the test."""
    a, b = _Thread(colocation), _Thread(colocation)
    yield a, b
    a.end()
    b.end()


def _period(c: Colocation, busy: float, *active: int) -> None:
    """One period of ``busy`` CPUs' worth of process time, with requests served by ``active``."""
    now = c._at + PERIOD_NS
    c._seen.update(active)
    c.decide(now, c._cpu + int(busy * PERIOD_NS))


def _pin(c: Colocation, *active: int) -> int:
    """A busy period served by ``active``: they are pinned; returns the CPU."""
    _period(c, 1.0, *active)
    assert c.pinned >= 0
    return c.pinned


def test_two_busy_serving_threads_are_pinned_to_one_cpu_and_freed_when_quiet(
    colocation: Colocation, threads: tuple[_Thread, _Thread]
) -> None:
    mask = os.sched_getaffinity(0)
    a, b = threads
    _period(colocation, HIGH, a.tid, b.tid)
    cpu = colocation.pinned
    assert cpu in mask
    assert a.affinity() == b.affinity() == {cpu}
    _period(colocation, (HIGH + LOW) / 2, a.tid, b.tid)  # between the thresholds: no change
    assert a.affinity() == {cpu}
    late = _Thread(colocation)  # a connection that comes while they are pinned joins them
    assert late.affinity() == {cpu}
    late.end()
    _period(colocation, LOW / 2, a.tid, b.tid)
    assert colocation.pinned == -1
    assert a.affinity() == b.affinity() == mask


def test_one_busy_thread_alone_is_never_pinned(colocation: Colocation, threads: tuple[_Thread, _Thread]) -> None:
    # One client's thread hands the GIL to nobody: nothing to gain, and its client may be
    # the CPU-bound one whose CPU the answer should use.
    a, _ = threads
    _period(colocation, 1.0, a.tid)
    assert colocation.pinned == -1
    assert a.affinity() == os.sched_getaffinity(0)


def test_several_clients_that_leave_the_manager_mostly_idle_are_not_pinned(
    colocation: Colocation, threads: tuple[_Thread, _Thread]
) -> None:
    # CPU-bound workers calling between slices of work: the manager is far from busy.
    a, b = threads
    _period(colocation, 0.25, a.tid, b.tid)
    assert colocation.pinned == -1


def test_calls_that_run_in_parallel_are_never_put_on_one_cpu(
    colocation: Colocation, threads: tuple[_Thread, _Thread]
) -> None:
    # More than one CPU's worth of process time: calls release the GIL (numpy, hashing, I/O)
    # and run at once; one CPU would serialize them.
    a, b = threads
    _period(colocation, MAX_BUSY + 0.25, a.tid, b.tid)
    assert colocation.pinned == -1
    assert a.affinity() == os.sched_getaffinity(0)


def test_pinned_threads_are_freed_now_and_then_to_look_again(
    colocation: Colocation, threads: tuple[_Thread, _Thread]
) -> None:
    # Pinned, a process cannot show that its calls would run in parallel: it is freed for a
    # period every REPROBE periods, and pinned again if it still looks GIL-bound.
    mask = os.sched_getaffinity(0)
    a, b = threads
    _period(colocation, 1.0, a.tid, b.tid)
    for _ in range(REPROBE - 1):
        _period(colocation, 1.0, a.tid, b.tid)
        assert colocation.pinned >= 0
    _period(colocation, 1.0, a.tid, b.tid)
    assert colocation.pinned == -1
    assert a.affinity() == mask
    _period(colocation, 1.0, a.tid, b.tid)
    assert colocation.pinned >= 0
    assert a.affinity() == {colocation.pinned}


def test_pinned_threads_go_back_to_one_client_and_are_freed(
    colocation: Colocation, threads: tuple[_Thread, _Thread]
) -> None:
    a, b = threads
    _pin(colocation, a.tid, b.tid)
    _period(colocation, 1.0, a.tid)  # the other client stopped calling
    assert colocation.pinned == -1
    assert b.affinity() == os.sched_getaffinity(0)


def test_a_thread_leaving_while_pinned_gets_its_affinity_back(colocation: Colocation) -> None:
    mask = os.sched_getaffinity(0)
    a = _Thread(colocation)
    try:
        with colocation.hold():
            me = threading.get_native_id()
            _period(colocation, 1.0, a.tid, me)
            assert os.sched_getaffinity(0) == {colocation.pinned}
        assert os.sched_getaffinity(0) == mask
    finally:
        a.end()


def test_when_the_last_pinned_thread_leaves_the_next_connection_starts_free(colocation: Colocation) -> None:
    mask = os.sched_getaffinity(0)
    a, b = _Thread(colocation), _Thread(colocation)
    _pin(colocation, a.tid, b.tid)
    a.end()
    assert colocation.pinned >= 0, "one connection left: its next period decides"
    b.end()
    assert colocation.pinned == -1
    late = _Thread(colocation)  # one client alone, later (with its CPU of choice)
    try:
        assert late.affinity() == mask
    finally:
        late.end()


def test_freed_threads_get_what_the_process_may_use_now(
    colocation: Colocation, threads: tuple[_Thread, _Thread]
) -> None:
    # The process was confined while they were pinned (taskset -a, a benchmark): freeing them
    # must not undo that by giving back the CPUs they had before.
    a, b = threads
    _pin(colocation, a.tid, b.tid)
    confined = {min(os.sched_getaffinity(0))}
    os.sched_setaffinity(0, confined)  # this test's thread is the main one (the fixture restores it)
    _period(colocation, LOW / 2, a.tid, b.tid)
    assert colocation.pinned == -1
    assert a.affinity() == b.affinity() == confined


def test_a_process_forked_from_a_pinned_thread_gets_the_whole_affinity(colocation: Colocation) -> None:
    mask = os.sched_getaffinity(0)
    a = _Thread(colocation)
    try:
        with colocation.hold():
            _period(colocation, 1.0, a.tid, threading.get_native_id())
            assert os.sched_getaffinity(0) == {colocation.pinned}
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: report its affinity and whether it thinks it is pinned
                try:
                    os.write(w, json.dumps([sorted(os.sched_getaffinity(0)), colocation.pinned]).encode())
                finally:
                    os._exit(0)
            os.close(w)
            with os.fdopen(r) as f:
                cpus, pinned = json.loads(f.read())
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        assert cpus == sorted(mask)
        assert pinned == -1
    finally:
        a.end()


def test_a_free_threaded_python_never_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a GIL the serving threads do run at once: one CPU would serialize them.
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert Colocation().enabled is False


def test_a_forked_child_leaving_a_pinned_block_goes_on(colocation: Colocation) -> None:
    # User code that forks from a call: the child returns through the serving thread's block,
    # where nothing of its parent's registration is left; it must not fail there.
    r, w = os.pipe()
    block = contextlib.ExitStack()
    block.enter_context(colocation.hold())
    pid = os.fork()
    if pid == 0:  # the child always ends here, whatever leaving the block does
        try:
            block.close()
            os.write(w, json.dumps([colocation.pinned, len(colocation._threads)]).encode())
        except BaseException as exc:
            os.write(w, json.dumps(repr(exc)).encode())
        finally:
            os._exit(0)
    block.close()
    os.close(w)
    with os.fdopen(r) as f:
        report = json.loads(f.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == [-1, 0]
    assert colocation._threads == {}  # the parent left its block as well


def test_the_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFLECTMGR_COLOCATE", "0")
    c = Colocation()
    assert not c.enabled
    served: list[Any] = []

    class _Channel:
        def serve_forever(self, stopping: Any) -> None:
            served.append(stopping)

    c.serve(_Channel(), lambda: True)
    assert len(served) == 1  # served as before, with nothing counted
    assert colocate._available() is False


def test_the_cpu_counted_is_the_serving_threads_own_and_never_goes_back(colocation: Colocation) -> None:
    def burn(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    before = colocation.cpu_time()
    burn(0.02)  # this thread is not a serving thread: not counted
    assert colocation.cpu_time() - before < 10_000_000
    with colocation.hold():
        burn(0.05)
        during = colocation.cpu_time()
        assert during - before >= 40_000_000
    assert colocation.cpu_time() >= during  # a thread that left keeps what it used


# -- under load, a connection's thread follows its client ----------------------------------------
class _Load:
    """What ``waiting.load.cores_free()`` says, set by the test."""

    def __init__(self) -> None:
        self.free = False

    def cores_free(self) -> bool:
        return self.free


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch, colocation: Colocation) -> _Load:
    """No core free, and serving threads measured mostly idle (clients working between calls)."""
    fake = _Load()
    monkeypatch.setattr(waiting, "load", fake)
    _period(colocation, LOW / 4)
    return fake


class _Client:
    """Where the client last waited, set by the test (-1: it has not waited yet)."""

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu

    def __call__(self) -> int:
        return self.cpu


def _looks(c: Colocation, follower: Any, n: int) -> None:
    """``n`` looks of the follower's, each FOLLOW_NS after the one before."""
    for _ in range(n):
        c.follow(follower, follower.looked + colocate.FOLLOW_NS)


def test_under_load_a_serving_thread_follows_its_client_and_is_freed_when_the_load_goes(
    colocation: Colocation, load: _Load
) -> None:
    mask = os.sched_getaffinity(0)
    first, last = min(mask), max(mask)
    client = _Client(last)
    with colocation.hold(follower := colocate._Follower(threading.get_native_id(), client)):
        _looks(colocation, follower, colocate.FOLLOW_AFTER - 1)
        assert os.sched_getaffinity(0) == mask, "a moment without a free core is not load"
        _looks(colocation, follower, 1)
        assert os.sched_getaffinity(0) == {last}
        client.cpu = first  # the client moved: the thread goes with it
        _looks(colocation, follower, 1)
        assert os.sched_getaffinity(0) == {first}
        load.free = True
        _looks(colocation, follower, colocate.CROWDED_NS // colocate.FOLLOW_NS - 1)
        assert os.sched_getaffinity(0) == {first}, "the load is judged over CROWDED_NS, not look by look"
        _looks(colocation, follower, colocate.FOLLOW_AFTER - 1)
        assert os.sched_getaffinity(0) == {first}, "freed once the looks even out, not at the first free one"
        _looks(colocation, follower, 1)
        assert os.sched_getaffinity(0) == mask
        assert follower.cpu == -1


def test_a_thread_follows_when_only_some_looks_find_no_core_free(colocation: Colocation, load: _Load) -> None:
    """Two workers on two cores: a look right after a reply often finds the other worker waiting
    on the manager too (not runnable), so a core looks free; one look in three sees the load."""
    mask = os.sched_getaffinity(0)
    with colocation.hold(follower := colocate._Follower(threading.get_native_id(), _Client(max(mask)))):
        for _ in range(colocate.FOLLOW_AFTER):
            load.free = False
            _looks(colocation, follower, 1)
            load.free = True
            _looks(colocation, follower, 2)
        assert os.sched_getaffinity(0) == {max(mask)}


def test_a_thread_whose_client_never_waited_or_waits_elsewhere_stays_free(colocation: Colocation, load: _Load) -> None:
    mask = os.sched_getaffinity(0)
    client = _Client(-1)
    with colocation.hold(follower := colocate._Follower(threading.get_native_id(), client)):
        _looks(colocation, follower, colocate.FOLLOW_AFTER + 2)
        assert os.sched_getaffinity(0) == mask
        client.cpu = max(mask) + 1000  # a CPU this process may not use (another cpuset)
        _looks(colocation, follower, 2)
        assert os.sched_getaffinity(0) == mask


def test_pinned_together_the_followers_stand_down(colocation: Colocation, load: _Load) -> None:
    mask = os.sched_getaffinity(0)
    other = _Thread(colocation)
    try:
        with colocation.hold(follower := colocate._Follower(threading.get_native_id(), _Client(max(mask)))):
            _looks(colocation, follower, colocate.FOLLOW_AFTER)
            assert os.sched_getaffinity(0) == {max(mask)}
            here = _pin(colocation, other.tid, threading.get_native_id())
            assert follower.cpu == -1
            assert os.sched_getaffinity(0) == other.affinity() == {here}
            _looks(colocation, follower, colocate.FOLLOW_AFTER)  # no look moves it off the shared CPU
            assert os.sched_getaffinity(0) == {here}
    finally:
        other.end()


def test_a_following_thread_leaving_gets_its_affinity_back(colocation: Colocation, load: _Load) -> None:
    mask = os.sched_getaffinity(0)
    with colocation.hold(follower := colocate._Follower(threading.get_native_id(), _Client(max(mask)))):
        _looks(colocation, follower, colocate.FOLLOW_AFTER)
        assert os.sched_getaffinity(0) == {max(mask)}
    assert os.sched_getaffinity(0) == mask
    assert not colocation._followers


def _affinity_of_a_forked_child() -> list[int]:
    """The CPUs a process forked from this thread may use, as it sees them."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, json.dumps(sorted(os.sched_getaffinity(0))).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        cpus: list[int] = json.loads(f.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return cpus


def test_a_process_forked_from_a_following_thread_gets_the_whole_affinity(colocation: Colocation, load: _Load) -> None:
    mask = os.sched_getaffinity(0)
    with colocation.hold(follower := colocate._Follower(threading.get_native_id(), _Client(max(mask)))):
        _looks(colocation, follower, colocate.FOLLOW_AFTER)
        assert os.sched_getaffinity(0) == {max(mask)}
        cpus = _affinity_of_a_forked_child()
    assert cpus == sorted(mask)


def test_busy_serving_threads_are_not_followers(colocation: Colocation, load: _Load) -> None:
    # Several clients calling back to back: each thread with its client would take turns on one
    # CPU (colocation puts the serving threads together instead). And before a period has
    # measured them, they count as busy.
    mask = os.sched_getaffinity(0)
    assert Colocation().busy >= LOW and Colocation().active is None  # nor alone
    me = threading.get_native_id()
    with colocation.hold(follower := colocate._Follower(me, _Client(max(mask)))):
        _period(colocation, (HIGH + LOW) / 2, me, me + 1)  # busy, but not enough to be pinned together
        _looks(colocation, follower, colocate.FOLLOW_AFTER + 2)
        assert os.sched_getaffinity(0) == mask
        _period(colocation, LOW / 4, me, me + 1)  # the clients work between their calls again
        _looks(colocation, follower, colocate.FOLLOW_AFTER)
        assert os.sched_getaffinity(0) == {max(mask)}
        _period(colocation, (HIGH + LOW) / 2, me, me + 1)
        _looks(colocation, follower, colocate.FOLLOW_AFTER)
        assert os.sched_getaffinity(0) == mask


def test_a_busy_serving_thread_alone_follows_its_client(colocation: Colocation, load: _Load) -> None:
    # One client calling back to back with every core busy: its thread and it take turns, best on
    # one CPU (apart, each wake-up waits behind another CPU's task: p99 in milliseconds).
    mask = os.sched_getaffinity(0)
    me = threading.get_native_id()
    with colocation.hold(follower := colocate._Follower(me, _Client(max(mask)))):
        _period(colocation, (HIGH + LOW) / 2, me)
        _looks(colocation, follower, colocate.FOLLOW_AFTER)
        assert os.sched_getaffinity(0) == {max(mask)}
        _period(colocation, (HIGH + LOW) / 2, me, me + 1)  # a second client: no longer alone
        _looks(colocation, follower, colocate.FOLLOW_AFTER)
        assert os.sched_getaffinity(0) == mask


# -- quiet, one client calling back to back: its thread is kept off the client's CPU -------------
def _busy_looks(c: Colocation, follower: Any, n: int, served: int) -> None:
    """``n`` looks of the follower's, each after ``served`` requests."""
    for _ in range(n):
        follower.served = served
        c.follow(follower, follower.looked + colocate.FOLLOW_NS)


@pytest.fixture
def quiet(load: _Load) -> _Load:
    """Cores free, and the serving threads measured mostly idle, one connection at most."""
    load.free = True
    return load


@contextlib.contextmanager
def _beside_its_client(c: Colocation, leaving: Any = None) -> Iterator[tuple[set[int], int, Any]]:
    """This thread as a serving thread that a wake-up put on its client's CPU: (the CPUs it may
    use, that CPU, its follower)."""
    mask = os.sched_getaffinity(0)
    here = max(mask)
    os.sched_setaffinity(0, {here})
    with c.hold(follower := colocate._Follower(threading.get_native_id(), _Client(here), leaving)):
        yield mask, here, follower


def test_quiet_a_thread_woken_on_its_clients_cpu_is_kept_off_it_while_the_client_calls_back_to_back(
    colocation: Colocation, quiet: _Load
) -> None:
    left: list[int] = []
    with _beside_its_client(colocation, lambda: left.append(1)) as (mask, here, follower):
        _busy_looks(colocation, follower, 1, colocate.APART_CALLS)
        assert os.sched_getaffinity(0) == mask - {here}
        assert follower.apart == here
        assert left == [1], "the client was told before the thread moved"
        _busy_looks(colocation, follower, 3, colocate.APART_CALLS)  # elsewhere now: nothing changes
        assert os.sched_getaffinity(0) == mask - {here}
        _busy_looks(colocation, follower, colocate.APART_AFTER - 1, 1)
        assert os.sched_getaffinity(0) == mask - {here}, "one quiet moment does not free it"
        _busy_looks(colocation, follower, 1, 1)  # the client calls now and then: freed
        assert os.sched_getaffinity(0) == mask
        assert follower.apart == -1
    assert left == [1], "freed, it moves nowhere in particular: nothing to tell"


def test_quiet_a_client_calling_now_and_then_keeps_its_thread_where_it_woke(
    colocation: Colocation, quiet: _Load
) -> None:
    # There a wake-up on the same CPU costs less than one of an idle (virtual) CPU.
    with _beside_its_client(colocation) as (_, here, follower):
        _busy_looks(colocation, follower, colocate.APART_AFTER + 2, colocate.APART_CALLS - 1)
        assert os.sched_getaffinity(0) == {here}
        assert follower.apart == -1


def test_a_thread_apart_from_its_client_follows_it_once_no_core_is_free(colocation: Colocation, quiet: _Load) -> None:
    with _beside_its_client(colocation) as (mask, here, follower):
        _busy_looks(colocation, follower, 1, colocate.APART_CALLS)
        assert os.sched_getaffinity(0) == mask - {here}
        quiet.free = False
        _busy_looks(colocation, follower, 1, colocate.APART_CALLS)
        assert os.sched_getaffinity(0) == mask - {here}, "a client back to back: one look is not load"
        _busy_looks(colocation, follower, colocate.FOLLOW_AFTER, colocate.APART_CALLS)
        assert os.sched_getaffinity(0) == {here}
        assert (follower.cpu, follower.apart) == (here, -1)


def test_a_client_in_bursts_woken_by_another_process_keeps_its_thread_apart(
    colocation: Colocation, quiet: _Load
) -> None:
    """The looks at a burst's start and end see the process that woke the client, or that it
    wakes as it stops, runnable (a parent handing it work, a benchmark's runner): not load."""
    with _beside_its_client(colocation) as (mask, here, follower):
        for _ in range(10):
            for i, full in enumerate((True, False, True)):  # its looks: the first and the last see another process
                quiet.free = not full
                follower.served = colocate.APART_CALLS
                # the first after a pause (the one before it was the last burst's end)
                colocation.follow(follower, follower.looked + (2 * colocate.PAUSE_NS if i == 0 else colocate.FOLLOW_NS))
            assert os.sched_getaffinity(0) == mask - {here} and follower.cpu == -1
            assert follower.load == 0, "one look in a burst that sees no core free is not load"
        quiet.free = False  # then every core taken, with no pause: followed
        _busy_looks(colocation, follower, colocate.FOLLOW_AFTER + 1, colocate.APART_CALLS)
        assert os.sched_getaffinity(0) == {here} and follower.cpu == here


def test_with_several_clients_no_thread_is_kept_apart(colocation: Colocation, quiet: _Load) -> None:
    me = threading.get_native_id()
    with _beside_its_client(colocation) as (mask, here, follower):
        _busy_looks(colocation, follower, 1, colocate.APART_CALLS)
        assert os.sched_getaffinity(0) == mask - {here}
        _period(colocation, LOW / 4, me, me + 1)  # a second client: the kernel's placement again
        _busy_looks(colocation, follower, 1, colocate.APART_CALLS)
        assert os.sched_getaffinity(0) == mask
        os.sched_setaffinity(0, {here})
        _busy_looks(colocation, follower, 2, colocate.APART_CALLS)
        assert os.sched_getaffinity(0) == {here}


def test_a_thread_kept_apart_gets_its_affinity_back_when_it_leaves_and_in_a_forked_child(
    colocation: Colocation, quiet: _Load
) -> None:
    with _beside_its_client(colocation) as (mask, here, follower):
        _busy_looks(colocation, follower, 1, colocate.APART_CALLS)
        assert os.sched_getaffinity(0) == mask - {here}
        cpus = _affinity_of_a_forked_child()
    assert cpus == sorted(mask)
    assert os.sched_getaffinity(0) == mask


def test_a_thread_confined_to_its_clients_cpu_stays_there(colocation: Colocation, quiet: _Load) -> None:
    # Client and manager on one CPU (taskset, a container's cpuset): nowhere else to go.
    with _beside_its_client(colocation) as (_, here, follower):
        colocation._mask = {here}
        _busy_looks(colocation, follower, colocate.APART_AFTER + 1, colocate.APART_CALLS)
        assert os.sched_getaffinity(0) == {here}
        assert follower.apart == -1
