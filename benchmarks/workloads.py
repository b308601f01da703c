"""The workloads every adapter runs, and how they are timed.

An adapter builds, in ``setup``, the same shared state on its system: a dict ``d`` with a key
``"k"``, a list ``lst``, a namespace ``ns`` with attribute ``x``, a ``Counter`` object ``obj``, a
nested dict ``nested`` (``nested["a"]`` is itself shared) and a 100 000-item list ``big``. Then it
returns one zero-argument callable per operation it supports.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

BIG = 100_000


class Counter:
    """The object behind the "method call" workload (registered with every manager)."""

    def __init__(self) -> None:
        self.n = 0

    def incr(self, k: int = 1) -> int:
        self.n += k
        return self.n


MISS = "d[missing]: KeyError"


def missing_key(d: Any) -> Callable[[], None]:
    """A lookup that raises in the manager and is caught here: what a remote exception costs."""

    def miss() -> None:
        try:
            d["missing"]
        except KeyError:
            return
        raise AssertionError("d['missing'] did not raise KeyError")

    return miss


def client_ops(d: Any, q: Any = None) -> dict[str, Callable[[], Any]]:
    """What a client process runs in the field scenarios (field.py), on the shared dict and queue."""

    def queue_cycle() -> None:
        q.put(1)
        q.get()

    ops: dict[str, Callable[[], Any]] = {
        "d[k]": lambda: d["k"],
        "d[k] = v": lambda: d.__setitem__("k", 1),
        MISS: missing_key(d),
    }
    if q is not None:
        ops["Queue put+get"] = queue_cycle
    return ops


def sync_ops(lock: Any, q: Any, event: Any) -> dict[str, Callable[[], Any]]:
    """Synchronisation round trips through the stdlib factories (Lock, Queue, Event)."""

    def lock_cycle() -> None:
        lock.acquire()
        lock.release()

    def queue_cycle() -> None:
        q.put(1)
        q.get()

    def event_cycle() -> None:
        event.set()
        event.wait()

    return {"Lock acquire+release": lock_cycle, "Queue put+get": queue_cycle, "Event set+wait": event_cycle}


def small_ops(d: Any, lst: Any, ns: Any, obj: Any, nested: Any) -> dict[str, Callable[[], Any]]:
    """The small operations, written once for every system that can express them."""
    return {
        "d[k] = v": lambda: d.__setitem__("k", 1),
        "d[k]": lambda: d["k"],
        "lst.append(x)": lambda: lst.append(1),
        "len(d)": lambda: len(d),
        "method(k=1)": lambda: obj.incr(k=1),
        "ns.x": lambda: ns.x,
        'nested["a"]["b"] = x': lambda: nested["a"].__setitem__("b", 1),
        MISS: missing_key(d),
    }


MIB = 1 << 20
LARGE = {"1 MiB": MIB, "64 MiB": 64 * MIB}


def large_ops(d: Any) -> dict[str, Callable[[], Any]]:
    """Large bytes values into and out of a shared dict (throughput = size / time)."""
    ops: dict[str, Callable[[], Any]] = {}
    for label, size in LARGE.items():
        blob = b"x" * size
        key = f"blob{size}"
        d[key] = blob
        ops[f"{label} in"] = lambda d=d, key=key, blob=blob: d.__setitem__(key, blob)
        ops[f"{label} out"] = lambda d=d, key=key: d[key]
    return ops


def standard_ops(s: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """Every workload, from an adapter's state: d, lst, ns, obj, nested, big, sync=(lock, q, event)."""
    ops = small_ops(s["d"], s["lst"], s["ns"], s["obj"], s["nested"])
    ops.update(sync_ops(*s["sync"]))
    ops.update(large_ops(s["d"]))
    ops["iterate 100k list"] = lambda: sum(1 for _ in s["big"])
    return ops


def sync_manager_state(manager_class: Any) -> dict[str, Any]:
    """The shared state on a started multiprocessing-style SyncManager (stdlib or multiprocess)."""
    m = manager_class()
    m.start()
    nested = m.dict()
    nested["a"] = m.dict()  # these managers nest proxies only when you build them this way
    return {
        "m": m,
        "d": m.dict(k=0),
        "lst": m.list(),
        "ns": m.Namespace(x=1),
        "obj": m.Counter(),
        "nested": nested,
        "big": m.list(range(BIG)),
        "sync": (m.Lock(), m.Queue(), m.Event()),
    }


# Operations that take seconds per call on some systems: fewer repetitions.
SLOW = ("iterate", "64 MiB")


def time_op(fn: Callable[[], Any], repeat: int, number: int) -> list[float]:
    """Seconds per call, one sample per batch of ``number`` calls."""
    fn()  # warm: connections opened, caches filled
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return samples


def summarize(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=4) if len(samples) >= 4 else [min(samples), 0.0, max(samples)]
    return {"median": statistics.median(samples), "q1": q[0], "q3": q[-1], "n": len(samples)}
