"""CPython's own process-pool tests (Lib/test/test_concurrent_futures/), run against ``m.executor()``.

The stdlib's test modules are imported as they are. Their abstract test classes are then built
here on executor mixins whose ``executor_type`` is ``m.executor`` of one manager per module, with
``m.executor()``'s default context (workers forked from the manager's template, with spawn's
semantics: its start method is "spawn") and the two other start methods the stdlib tests (fork
and forkserver, which ``mp_context=`` selects): the pool and initializer tests with all three,
the others with the default (SUITES says why). An explicit ``mp_context`` of spawn (the
default's behaviour, started the slow way; what it falls back to where there is no template) is
left to tests/integration: test_executor.py runs every start method, test_executor_workers.py
the fallback. Nothing in the stdlib's code is changed.

The suite ships with Python 3.13 as installed here; the 3.11 build has no
``test.test_concurrent_futures`` package (Debian keeps it in ``libpython3.11-testsuite``, which CI
cannot install without root), so on 3.11 this module skips, saying so. The manager suite
(test_cpython_suite.py) runs on both.

Excluded tests, each with its reason, are listed in EXCLUDED below.
"""

from __future__ import annotations

import importlib
import multiprocessing
import unittest
from typing import Any

import pytest

import reflectmgr
from reflectmgr._pools.forked import WorkerContext

try:
    from test.test_concurrent_futures import util
except ImportError as exc:
    pytest.skip(
        f"CPython's test.test_concurrent_futures is not installed with this Python ({exc}); "
        "it ships with 3.13, where this module runs",
        allow_module_level=True,
    )

_manager: reflectmgr.Manager | None = None


def setUpModule() -> None:
    global _manager
    _manager = reflectmgr.Manager()
    _manager.start()


def tearDownModule() -> None:
    if _manager is not None:
        _manager.shutdown()


def _executor(max_workers: int | None = None, **kwargs: Any) -> Any:
    assert _manager is not None, "setUpModule starts the manager"
    return _manager.executor(max_workers, **kwargs)


class _ManagerPool(util.ExecutorMixin):  # type: ignore[misc,name-defined]
    executor_type = staticmethod(_executor)
    ctx = "spawn"

    def get_context(self) -> Any:
        return multiprocessing.get_context(self.ctx)


class ManagerPoolDefaultMixin(_ManagerPool):
    """m.executor()'s own context: the stdlib's tests ask for it by its start method, "spawn"."""

    def get_context(self) -> Any:
        return WorkerContext()


class ManagerPoolForkMixin(_ManagerPool):
    ctx = "fork"


class ManagerPoolForkserverMixin(_ManagerPool):
    ctx = "forkserver"


EVERY_METHOD = (ManagerPoolDefaultMixin, ManagerPoolForkMixin, ManagerPoolForkserverMixin)
DEFAULT_ONLY = (ManagerPoolDefaultMixin,)

# module -> the abstract test classes in it that take a process-pool mixin, and the start methods
# they run with. The pool's own tests and its initializers run with all three (the start method
# is how those workers come to be). Waiting, as_completed, shutdown and the deadlock tests run
# with the default only: m.executor()'s futures and their failures travel the same way whichever
# method started the workers, and the three runs of everything took a fifth of the suite's time
# on 3.13.
SUITES = {
    "test_as_completed": (("AsCompletedTests",), DEFAULT_ONLY),
    "test_deadlock": (("ExecutorDeadlockTest",), DEFAULT_ONLY),
    "test_init": (("InitializerMixin", "FailingInitializerMixin"), EVERY_METHOD),
    "test_process_pool": (("ProcessPoolExecutorTest",), EVERY_METHOD),
    "test_shutdown": (("ProcessPoolShutdownTest",), DEFAULT_ONLY),
    "test_wait": (("WaitTests",), DEFAULT_ONLY),
}

# Test method (in every start method) -> why it does not apply to m.executor() (each one is in
# docs/differences.md).
_UNPICKLE = (
    "a task whose arguments fail to unpickle in the worker fails its own future with that error "
    "(SystemExit there arrives as ReflectmgrError), and the pool goes on; the stdlib's worker dies "
    "and the pool is broken (BrokenProcessPool)"
)
_AT_SUBMIT = (
    "its tasks carry a multiprocessing Semaphore, which pickles only while a child is being "
    "spawned; m.executor() pickles each task (with cloudpickle) in submit(), so those futures fail "
    "before any worker starts, and the test's count of the private executor._processes is 0 "
    "(the stdlib starts workers first and fails the futures later)"
)
_SCRIPT = (
    "runs a child script that builds the pool as concurrent.futures.<executor_type.__name__>: "
    "that is the stdlib's class, not m.executor(), which needs a manager"
)
EXCLUDED: dict[str, str] = {
    "test_exit_at_task_unpickle": _UNPICKLE,
    "test_error_at_task_unpickle": _UNPICKLE,
    "test_saturation": _AT_SUBMIT,
    "test_processes_terminate": _AT_SUBMIT,
    "test_hang_gh83386": _SCRIPT,
    "test_interpreter_shutdown": _SCRIPT,
    "test_submit_after_interpreter_shutdown": _SCRIPT,
}


def _install() -> None:
    g = globals()
    for module_name, (names, mixins) in SUITES.items():
        module = importlib.import_module(f"test.test_concurrent_futures.{module_name}")
        for name in names:
            before = set(g)
            util.create_executor_tests(g, getattr(module, name), executor_mixins=mixins)
            for cls_name in set(g) - before:
                cls = g[cls_name]
                for test, reason in EXCLUDED.items():
                    if hasattr(cls, test):
                        setattr(cls, test, unittest.skip(reason)(getattr(cls, test)))


_install()

# These tests start pools of processes: give them time, and mark them slow like the manager suite.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
