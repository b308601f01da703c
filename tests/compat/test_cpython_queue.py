"""CPython's own queue tests (Lib/test/test_queue.py), run against the manager's ``Queue``.

``m.Queue()`` builds ``reflectmgr._owner.queues.Queue``, a ``queue.Queue`` whose put with room
and get with an item take a shorter way. The stdlib's ``BaseQueueTestMixin`` (FIFO order,
``maxsize``, ``Full``/``Empty``, negative timeouts, ``task_done``/``join``, threads blocked in
``put`` and ``get`` and woken, and on 3.13 ``shutdown``) runs here on that class, unchanged, next
to the stdlib's own ``Queue`` as the control. The classes run in this process: what the proxy
adds is the manager suite's (test_cpython_suite.py) and our own tests'.
"""

from __future__ import annotations

import queue
import unittest

import pytest

from reflectmgr._owner.queues import Queue

try:
    from test import test_queue
except ImportError as exc:  # a Python built without its test package
    pytest.skip(f"CPython's test package is not installed: {exc}", allow_module_level=True)

pytestmark = pytest.mark.timeout(120)


class ManagerQueueTest(test_queue.BaseQueueTestMixin, unittest.TestCase):  # type: ignore[misc,name-defined]
    # The real module: its Full and Empty are the ones Queue raises (the stdlib's test classes use
    # fresh copies of the module, with their own exception classes).
    queue = queue

    def setUp(self) -> None:
        self.type2test = Queue
        super().setUp()


class StdlibQueueTest(test_queue.BaseQueueTestMixin, unittest.TestCase):  # type: ignore[misc,name-defined]
    """The control: the same tests on queue.Queue, in the same run."""

    queue = queue

    def setUp(self) -> None:
        self.type2test = queue.Queue
        super().setUp()


def test_the_mixin_runs_the_tests_that_matter() -> None:
    """The mixin still has its blocking and join tests (a renamed stdlib test would skip them)."""
    names = set(dir(test_queue.BaseQueueTestMixin))
    assert {"test_basic", "test_queue_task_done", "test_queue_join", "test_negative_timeout_raises_exception"} <= names
    assert {"do_blocking_test", "do_exceptional_blocking_test"} <= names
