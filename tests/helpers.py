"""Shared helpers for the tests: named timeouts and polling instead of sleeping."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

# Named timeouts, in seconds: generous for a loaded 2-core CI machine, far below pytest-timeout.
PROMPT = 10.0  # something that should happen "at once" (a release flush, a child exiting)
DEATH = 15.0  # noticing that a process died (watchdog polling, socket EOF)
CHILD = 30.0  # a spawned child process doing a small job end to end


def wait_until(predicate: Callable[[], Any], timeout: float = PROMPT, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message or predicate}")
        time.sleep(delay)  # polling interval, not synchronisation: the predicate decides
        delay = min(delay * 2, 0.05)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended: it no longer exists, or is a zombie (ended, not reaped
    yet). Whoever reaps it (a manager's template does at once) may do so between two looks."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def baseline_objects(m: Any) -> int:
    """Objects the manager holds for clients once every released proxy has been flushed."""
    import gc

    gc.collect()
    return int(m.stats().objects)


def second_session(m: Any) -> Any:
    """A connection with its own session, as another process would have (closed by the caller).

    ``reflectmgr.connect`` inside one process returns that process's existing connection; tests
    that need a second, independent client in the same process build one directly.
    """
    from reflectmgr import Connection
    from reflectmgr._manager.client import Client

    return Connection(Client(m.address, m.authkey))


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a daemon thread; its result, or the exception it raised, lands in the list
    (for the test to assert on) once the thread has ended."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the test, which asserts on it
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def until_dropped(t: Any, *recv_args: Any) -> list[Any]:
    """What the raw transport ``t`` receives until its peer closes the connection (EOF or a
    reset). A timeout fails the test: the peer kept the connection open. (A socket timeout is an
    ``OSError`` too, so ``pytest.raises((EOFError, OSError))`` would take it for a drop.)"""
    received = []
    while True:
        try:
            received.append(t.recv(*recv_args))
        except TimeoutError:
            raise AssertionError(f"the peer kept the connection open; it sent {received!r}") from None
        except (EOFError, ConnectionError):
            return received


def untraced_env(**extra: str) -> dict[str, str]:
    """This process's environment without coverage's subprocess measurement, for a process that
    runs none of reflectmgr's lines worth measuring (a tool, a benchmark): coverage's start-up
    and its tracer made mypy 20% slower, mkdocs 50% (16.8 s against 19.9, 3.7 against 5.6)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE_PROCESS_", "COV_CORE_"))}
    env.update(extra)
    return env
