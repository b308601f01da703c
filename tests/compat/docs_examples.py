"""The examples of the multiprocessing documentation's "Managers" section, written once against
an injected implementation (``mp``: the stdlib or reflectmgr), so any difference fails a test.

Functions at module level so that children (fork or spawn) can import them.
"""

from __future__ import annotations

import operator
import queue as queue_module
from typing import Any


def f(d: Any, lst: Any) -> None:
    d[1] = "1"
    d["2"] = 2
    d[0.25] = None
    lst.reverse()


class MathsClass:
    def add(self, x: int, y: int) -> int:
        return x + y

    def mul(self, x: int, y: int) -> int:
        return x * y


class Foo:
    def f(self) -> str:
        return "you called Foo.f()"

    def g(self) -> str:
        return "you called Foo.g()"

    def _h(self) -> str:
        return "you called Foo._h()"


def baz() -> Any:
    for i in range(10):
        yield i * i


def get_operator_module() -> Any:
    return operator


_served_queue: queue_module.Queue[Any] = queue_module.Queue()


def get_queue() -> Any:
    return _served_queue


def run_queue_server(implementation: str, port_report: Any) -> None:
    """The remote-manager example's server: serve a queue until killed."""
    import importlib

    managers = importlib.import_module(implementation)

    class QueueManager(managers.BaseManager):
        pass

    QueueManager.register("get_queue", callable=get_queue)
    m = QueueManager(address=("127.0.0.1", 0), authkey=b"abracadabra")
    s = m.get_server()
    port_report.put(s.address)
    s.serve_forever()
