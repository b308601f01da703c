"""Checked by mypy (``[tool.mypy] files``, run by tests/test_static.py), never run: every factory
keeps the type of the object it builds, so a type checker sees the object's methods on the proxy.
A factory that loses its type (back to ``Any``) fails ``assert_type`` here."""

from __future__ import annotations

import _thread
import array
import queue
import threading
from concurrent.futures import Executor
from multiprocessing.pool import Pool
from typing import Any, assert_type

import reflectmgr
from reflectmgr import Namespace


class Order:
    def __init__(self, item: str, qty: int) -> None:
        self.item, self.qty = item, qty

    def total(self, price: float) -> float:
        return self.qty * price


def factories(m: reflectmgr.Manager, c: reflectmgr.Connection) -> None:
    for f in (m, c):
        assert_type(f.new(Order, "bolt", 3), Order)
        assert_type(f.new(Order, "bolt", 3).total(0.5), float)
        assert_type(f.share({"a": 1}), dict[str, int])
        assert_type(f.dict(), dict[Any, Any])
        assert_type(f.list([1, 2]), list[Any])
        assert_type(f.Namespace(x=1), Namespace)
        assert_type(f.Lock(), threading.Lock)
        assert_type(f.Lock(robust=True).acquire(), bool)
        assert_type(f.RLock(), _thread.RLock)
        assert_type(f.Semaphore(2), threading.Semaphore)
        assert_type(f.BoundedSemaphore(2), threading.BoundedSemaphore)
        assert_type(f.Condition(), threading.Condition)
        assert_type(f.Event(), threading.Event)
        assert_type(f.Barrier(2), threading.Barrier)
        assert_type(f.Queue(), queue.Queue[Any])
        assert_type(f.JoinableQueue(), queue.Queue[Any])
        assert_type(f.Array("i", [1, 2]), array.array[Any])
        assert_type(f.Pool(2), Pool)
        assert_type(f.root, dict[str, Any])
        assert_type(f.executor(2), Executor)
        assert_type(f.stats(), reflectmgr.Stats)
