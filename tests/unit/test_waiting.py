"""How a side waits: the futex, the load sample, and the spin policy's decisions."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from reflectmgr._transport import waiting
from reflectmgr._transport.waiting import BLOCKED_NS, MAX_STRIKES, SHORT_SPIN_NS, SPIN_NS, SpinPolicy

from ..helpers import PROMPT

pytestmark = pytest.mark.timeout(60)


def _futex_implementations() -> list[object]:
    """(wait, wake, address of a u32) for each way this process can reach the futex: the C module
    and ctypes (the fallback where the module was not built)."""
    ways: list[object] = []
    if waiting._native is not None and hasattr(waiting._native, "wake") and waiting.FUTEX:
        ways.append(pytest.param((waiting._native.wait, waiting._native.wake, int), id="native"))
    if waiting._syscall is not None:
        ways.append(
            pytest.param((waiting._ctypes_futex_wait, waiting._ctypes_futex_wake, ctypes.c_void_p), id="ctypes")
        )
    return ways or [pytest.param(None, marks=pytest.mark.skip(reason="no futex here: the doorbell is used"))]


@pytest.fixture(params=_futex_implementations())
def futex(request: pytest.FixtureRequest) -> tuple[Any, Any, Any]:
    wait, wake, as_address = request.param
    return wait, wake, lambda word: as_address(ctypes.addressof(word))


def test_the_futex_calls_are_native_where_the_module_was_built() -> None:
    if waiting._native is None or not waiting.FUTEX:
        pytest.skip("the C module was not built here, or there is no futex: ctypes or the doorbell is used")
    assert waiting.NATIVE is (os.environ.get("REFLECTMGR_NATIVE", "1") != "0")
    wanted = waiting.NATIVE
    assert (waiting.futex_wait is waiting._native.wait) is wanted
    assert (waiting.current_cpu is waiting._native.cpu) is wanted
    assert waiting.current_cpu() in range(os.cpu_count() or 1)


def test_a_futex_sleeper_wakes_on_futex_wake_alone(futex: tuple[Any, Any, Any]) -> None:
    wait, wake, address_of = futex
    word = ctypes.c_uint32(0)
    address = address_of(word)
    began = time.monotonic()
    t = threading.Thread(target=wait, args=(address, 0, 30.0))
    t.start()
    while t.is_alive() and time.monotonic() - began < PROMPT:
        wake(address)  # the word never changes: only a wake-up can end the wait
        t.join(0.01)
    assert not t.is_alive(), "futex_wake did not wake the sleeper"


def test_a_futex_wait_returns_at_once_when_the_word_moved_and_at_its_bound_otherwise(
    futex: tuple[Any, Any, Any],
) -> None:
    wait, _, address_of = futex
    word = ctypes.c_uint32(7)
    started = time.monotonic()
    wait(address_of(word), 6, 30.0)  # not the value we saw: no sleep
    assert time.monotonic() - started < PROMPT
    started = time.monotonic()
    wait(address_of(word), 7, 0.05)
    assert time.monotonic() - started >= 0.04
    # Only the low 32 bits are compared (a ring position's low word): a higher value that matches
    # there sleeps too.
    started = time.monotonic()
    wait(address_of(word), (1 << 32) | 7, 0.05)
    assert time.monotonic() - started >= 0.04


def test_the_load_sample_counts_runnable_tasks() -> None:
    waiting.load.stale()
    free = waiting.load.cores_free()
    # Read at once: a second cores_free() samples again once SAMPLE_NS has passed (a preempted
    # test saw a sample of 4 against its first answer).
    running = waiting.load._running
    assert running >= 1  # this thread at least
    assert free is (running <= waiting.CORES)


@pytest.fixture
def cores(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Whether a core is free, as the policy will see it (the test sets it)."""
    free = [True]
    monkeypatch.setattr(waiting.load, "cores_free", lambda: free[0])
    monkeypatch.setattr(waiting, "CORES", max(2, waiting.CORES))
    yield free


def _spins(policy: SpinPolicy, peer_running: bool = False, peer_here: bool = False) -> int:
    window = policy.begin(peer_running, peer_here)
    if window:
        policy.end(True)  # a probe only: it caught data
    return window


def test_a_disabled_policy_never_spins(cores: list[bool]) -> None:
    assert SpinPolicy(False).begin(True) == 0


def test_the_window_with_a_free_core_and_without(cores: list[bool]) -> None:
    policy = SpinPolicy(True)
    assert _spins(policy) == SPIN_NS
    assert _spins(policy, peer_here=True) == 0, "the peer waits on this CPU: it would queue behind us"
    cores[0] = False
    assert _spins(policy) == 0, "no core free and the peer not known to run: sleep at once"
    assert 0 < _spins(policy, peer_running=True) <= SHORT_SPIN_NS


def test_misses_back_off_to_nothing_and_one_short_wait_brings_the_window_back(cores: list[bool]) -> None:
    policy = SpinPolicy(True)
    windows = []
    while window := policy.begin():
        windows.append(window)
        policy.end(False)  # a spin that caught nothing
    assert windows[0] == SPIN_NS and windows == sorted(windows, reverse=True) and len(windows) > 2
    assert policy.begin() == 0, "backed off: no spin at all"
    policy.slept(SPIN_NS * 3)  # the data came late: still no reason to spin
    assert policy.begin() == 0
    policy.slept(SPIN_NS // 4)  # the data came within a spin's reach (the writer's stamp says)
    assert _spins(policy) == SPIN_NS


def test_a_caught_spin_restores_the_whole_window(cores: list[bool]) -> None:
    policy = SpinPolicy(True)
    policy.begin()
    policy.end(False)
    assert policy.window < SPIN_NS
    policy.begin()
    policy.end(True)
    assert policy.window == SPIN_NS


def _wait(policy: SpinPolicy, arrived_ns: int) -> int:
    """One wait whose spin (if any) catches nothing, then sleeps until data ``arrived_ns`` later;
    the window it spun."""
    window = policy.begin()
    if window:
        policy.end(False)
    policy.slept(arrived_ns)
    return window


def test_a_peer_that_runs_only_once_we_sleep_stops_the_spinning(cores: list[bool]) -> None:
    # The peer queued on our CPU behind the spin: every spin misses, and the data comes just after
    # the sleep begins. Reopening the window on that short sleep spun it away on every call.
    policy = SpinPolicy(True)
    spun = [_wait(policy, BLOCKED_NS // 3) for _ in range(1000)]
    assert spun[0] == SPIN_NS
    # Each spin doubles the short sleeps the next one waits for, up to MAX_STRIKES (64): about 20
    # spins in 1000 waits, where reopening on every short sleep spun on all of them.
    assert spun.count(SPIN_NS) <= 1000 // MAX_STRIKES + 8, f"spun {sum(spun) / 1000:.0f} ns a call"
    assert spun[-500:].count(SPIN_NS) <= 500 // MAX_STRIKES + 1
    assert policy.strikes == MAX_STRIKES


def test_after_that_short_sleeps_in_a_row_reopen_the_window_and_a_catch_forgives(cores: list[bool]) -> None:
    policy = SpinPolicy(True)
    assert _wait(policy, BLOCKED_NS // 3) == SPIN_NS
    assert policy.strikes == 2 and policy.window == 0
    assert _wait(policy, SPIN_NS // 4) == 0  # no spin (the window is closed): a short sleep
    assert _wait(policy, SPIN_NS // 4) == 0
    assert _wait(policy, BLOCKED_NS // 3) == SPIN_NS, "two short sleeps in a row reopened it"
    assert policy.strikes == 4 and policy.window == 0
    _wait(policy, SPIN_NS // 4)
    _wait(policy, SPIN_NS * 2)  # a long one breaks the run
    for _ in range(4):
        assert _wait(policy, SPIN_NS // 4) == 0
    assert _spins(policy) == SPIN_NS, "the fourth short sleep in a row reopened it"
    assert policy.strikes == 1, "a spin that caught data: the peer runs elsewhere again"


def test_a_peer_just_slower_than_the_window_reopens_it(cores: list[bool]) -> None:
    policy = SpinPolicy(True)
    policy.window = SPIN_NS // 4
    assert _wait(policy, BLOCKED_NS * 2) == SPIN_NS // 4  # answered SPIN_NS / 4 + 60 us after the wait began
    assert policy.window == SPIN_NS and policy.strikes == 1
    assert _wait(policy, SPIN_NS * 2) == SPIN_NS  # slow now: the halving stands
    assert policy.window == SPIN_NS // 2


def test_the_owner_can_forbid_spinning(cores: list[bool]) -> None:
    policy = SpinPolicy(True)
    policy.allowed = lambda: False  # e.g. another thread of the manager needs the GIL
    assert policy.begin(True) == 0


def test_one_spinner_per_interpreter(cores: list[bool]) -> None:
    first, second = SpinPolicy(True), SpinPolicy(True)
    assert first.begin()
    try:
        assert second.begin() == 0, "a second thread spinning at once would fight over the GIL"
    finally:
        first.end(True)
    assert _spins(second) > 0
