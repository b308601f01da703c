"""The dispatcher's two adaptive decisions, run against fakes in one process: when it spins
again after sleeping on the bell, and when one client counts as alone (handed to its thread)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from reflectmgr._owner import dispatcher as dispatcher_module
from reflectmgr._owner.dispatcher import OTHERS_NS, SOLO_ROUNDS, Dispatcher
from reflectmgr._transport import shm, waiting

from ..helpers import PROMPT, wait_until

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not waiting.FUTEX, reason="the dispatcher's bell is a futex word (Linux)"),
]


class _NeverSpins:
    """A spin policy that records what the dispatcher tells it after each sleep."""

    def __init__(self, enabled: bool) -> None:
        self.arrivals: list[int] = []

    def begin(self, peer_running: bool = False, peer_here: bool = False) -> int:
        return 0

    def end(self, caught: bool) -> None:
        raise AssertionError("never asked to spin")

    def slept(self, arrived_ns: int) -> None:
        self.arrivals.append(arrived_ns)


def test_a_ring_soon_after_the_bell_sleep_began_is_reported_to_the_spin_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The dispatcher learned only from its spins: five misses closed its window for good, and
    # every request then paid a kernel wake-up. A sleep must tell the policy how soon the
    # request came, from the ringer's stamp (not from when the dispatcher woke).
    monkeypatch.setattr(waiting, "SpinPolicy", _NeverSpins)
    stop = threading.Event()
    d = Dispatcher(stop.is_set)
    policy = d._spin
    assert isinstance(policy, _NeverSpins)
    words = d.bell.words
    try:
        wait_until(lambda: words[shm._BELL_ASLEEP], message="the dispatcher never slept on its bell")
        seen = len(policy.arrivals)
        # A client's ring, stamped 1234 ns after the sleep began (written as Bell.ring does).
        words[shm._BELL_RUNG_AT] = words[shm._BELL_SINCE] + 1234
        words[shm._BELL_WORD] = 1
        waiting.futex_wake(d.bell.address)
        wait_until(lambda: len(policy.arrivals) > seen, message="the sleep was not reported")
        assert policy.arrivals[seen] == 1234
    finally:
        stop.set()
        d.stop()
        d._thread.join(PROMPT)
    assert not d._thread.is_alive()


def test_the_bell_reports_how_soon_it_was_rung() -> None:
    bell = shm.Bell.create()
    try:
        bell.prepare()
        assert bell.arrival() >= 0  # nobody rang: how long ago the sleep began
        bell.ring()  # a client that finds it asleep stamps the ring
        arrival = bell.arrival()
        time.sleep(0.01)
        assert bell.arrival() == arrival  # the ring's stamp, not the time of the look
        bell.awake()
        bell.prepare()  # a new sleep: the old ring does not count
        assert bell.arrival() < arrival + 10_000_000
    finally:
        bell.close()


class _Transport:
    def __init__(self) -> None:
        self.pending = 0

    def has_data(self) -> bool:
        return self.pending > 0

    def frame_ready(self) -> bool:
        return True


class _Conn:
    """The parts of a connection that the dispatcher's round looks at."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.turn = threading.Lock()
        self.served_at = 0


@pytest.fixture
def idle_dispatcher() -> Any:
    """A dispatcher whose own thread has ended (its rounds are run by the test)."""
    d = Dispatcher(lambda: True)
    d._thread.join(PROMPT)
    assert not d._thread.is_alive()
    served: list[tuple[_Conn, bool]] = []

    def serve_one(conn: _Conn, solo: bool) -> None:
        conn.transport.pending -= 1
        served.append((conn, solo))
        conn.turn.release()

    d._serve_one = serve_one  # type: ignore[method-assign]
    return d, served


def _rounds(d: Dispatcher, conn: _Conn, n: int) -> None:
    for _ in range(n):
        conn.transport.pending += 1
        assert d._serve_round()


def test_one_client_alone_for_many_rounds_is_handed_to_its_thread(idle_dispatcher: Any) -> None:
    d, served = idle_dispatcher
    a, b = _Conn(), _Conn()
    d._connections = (a, b)
    _rounds(d, a, SOLO_ROUNDS + 1)
    assert [solo for _, solo in served[:SOLO_ROUNDS]] == [False] * SOLO_ROUNDS
    assert served[SOLO_ROUNDS] == (a, True)


def test_a_client_is_not_alone_while_another_is_served_by_its_own_thread(
    idle_dispatcher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two busy clients: b is on its thread (direct mode), so the dispatcher sees a alone in
    # every round. Handing a over too put both on their threads, taking turns at one GIL.
    d, served = idle_dispatcher
    a, b = _Conn(), _Conn()
    d._connections = (a, b)
    b.served_at = time.perf_counter_ns()  # what b's thread records for each request it serves
    clock = [b.served_at]
    monkeypatch.setattr(dispatcher_module, "_now", lambda: clock[0])
    _rounds(d, a, SOLO_ROUNDS + 5)
    assert not any(solo for _, solo in served)
    clock[0] += OTHERS_NS + 1  # b falls quiet: a is alone now
    _rounds(d, a, 1)
    assert served[-1] == (a, True)
