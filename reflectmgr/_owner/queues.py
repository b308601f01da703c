"""The manager's ``Queue``: ``queue.Queue`` with a short way for the calls that need not wait.

``queue.Queue.put`` and ``get`` always go through its conditions (``with self.not_full``,
``notify()``), five Python calls of ``threading``'s around one deque operation: about as much
work as the rest of a call's manager side. Here a ``put`` with room and a ``get`` with an item
take the mutex, move the item and notify only when a thread waits; any other call (full, empty,
a timeout given, shut down on 3.13) is ``queue.Queue``'s own, unchanged. Same semantics, same
exceptions (``Full``, ``Empty``, ``ShutDown``, ``ValueError`` for a negative timeout, which is
why a call with a timeout takes the full path), and an instance of ``queue.Queue``.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

# Condition._waiters: the sleepers notify() would wake. If a Python ever lacks it, always notify.
_WAITERS = hasattr(threading.Condition(), "_waiters")
_SHUTDOWN = hasattr(queue.Queue(), "is_shutdown")  # 3.13+: Queue.shutdown()


class Queue(queue.Queue):  # type: ignore[type-arg]
    """``queue.Queue`` (FIFO, ``maxsize``, ``task_done``/``join``), cheaper when nobody waits."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if timeout is None or not block:
            with self.mutex:
                shut = _SHUTDOWN and self.is_shutdown  # type: ignore[attr-defined,unused-ignore]
                if not shut and (self.maxsize <= 0 or len(self.queue) < self.maxsize):
                    self.queue.append(item)
                    self.unfinished_tasks += 1
                    if not _WAITERS or self.not_empty._waiters:  # type: ignore[attr-defined]
                        self.not_empty.notify()
                    return
        super().put(item, block, timeout)  # full, or shut down: it waits or raises

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if timeout is None or not block:
            with self.mutex:
                if self.queue:
                    item = self.queue.popleft()
                    if not _WAITERS or self.not_full._waiters:  # type: ignore[attr-defined]
                        self.not_full.notify()
                    return item
        return super().get(block, timeout)  # empty: it waits, or raises Empty or ShutDown
