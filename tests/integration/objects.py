"""Importable test classes: the manager (a spawned process) imports them by name."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from typing import Any


class Inventory:
    def __init__(self) -> None:
        self.items: dict[str, Any] = {}

    def add(self, name: str, qty: int = 1, *, tags: tuple[str, ...] = ()) -> dict[str, Any]:
        rec = self.items.setdefault(name, {"qty": 0, "tags": set()})
        rec["qty"] += qty
        rec["tags"].update(tags)
        return rec

    def total(self) -> int:
        return sum(r["qty"] for r in self.items.values())


@dataclasses.dataclass
class Record:
    name: str
    tags: list[str] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


class Vector:
    """Arithmetic, reflected and in-place operators, comparisons, hashing, index, context."""

    def __init__(self, *xs: float) -> None:
        self.xs = list(xs)
        self.entered = 0

    def __add__(self, other: Any) -> Vector:
        if isinstance(other, Vector):
            return Vector(*(a + b for a, b in zip(self.xs, other.xs, strict=True)))
        return Vector(*(a + other for a in self.xs))

    def __radd__(self, other: Any) -> Vector:
        return Vector(*(other + a for a in self.xs))

    def __iadd__(self, other: Any) -> Vector:
        self.xs = [a + other for a in self.xs]
        return self

    def __sub__(self, other: Any) -> Vector:
        return Vector(*(a - other for a in self.xs))

    def __rsub__(self, other: Any) -> Vector:
        return Vector(*(other - a for a in self.xs))

    def __mul__(self, k: float) -> Vector:
        return Vector(*(a * k for a in self.xs))

    def __neg__(self) -> Vector:
        return Vector(*(-a for a in self.xs))

    def __abs__(self) -> float:
        return float(sum(a * a for a in self.xs) ** 0.5)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vector) and self.xs == other.xs

    def __lt__(self, other: Vector) -> bool:
        return abs(self) < abs(other)

    def __hash__(self) -> int:
        return hash(tuple(self.xs))

    def __len__(self) -> int:
        return len(self.xs)

    def __getitem__(self, i: Any) -> Any:
        return self.xs[i]

    def __index__(self) -> int:
        return len(self.xs)

    def __int__(self) -> int:
        return int(sum(self.xs))

    def __float__(self) -> float:
        return float(sum(self.xs))

    def __bool__(self) -> bool:
        return any(self.xs)

    def __repr__(self) -> str:
        return f"Vector{tuple(self.xs)!r}"

    def __format__(self, spec: str) -> str:
        return "<" + ",".join(format(a, spec) for a in self.xs) + ">"

    def __enter__(self) -> Vector:
        self.entered += 1
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.entered -= 1
        return exc[0] is KeyError  # swallow KeyError only

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return (args, kwargs)


class Dynamic:
    """Attributes made up by __getattr__."""

    def __getattr__(self, name: str) -> str:
        if name.startswith("dyn_"):
            return name[4:]
        raise AttributeError(name)


class Failing:
    def boom(self, kind: str) -> None:
        if kind == "value":
            raise ValueError("bad value 42")
        if kind == "key":
            raise KeyError("missing")
        if kind == "unpicklable":
            raise UnpicklableError("cannot travel", lambda: None)
        if kind == "file":
            open("/nonexistent-dir-of-reflectmgr/file")
        if kind == "timeout":
            raise TimeoutError("the remote call timed out")
        if kind == "eof":
            raise EOFError("remote end of file")
        if kind == "custom":
            raise CodedError(404, "not found")
        if kind == "reduced":
            raise ReducedError("built by a factory")
        if kind == "narrow":
            raise NarrowInitError(409, "conflict")

    def counter(self) -> Any:
        yield from range(3)

    def fresh_lock(self) -> Any:
        return threading.Lock()  # a temporary that does not pickle

    def holder(self) -> Any:
        return LockHolder()

    # Built-in functions as methods: what they raise comes from C, with no frame of this class's.
    stat = staticmethod(os.stat)
    exit = staticmethod(sys.exit)


class NarrowInitError(Exception):
    """Passes its base the message alone, as many do: it pickles, but loading it calls the class
    with ``("conflict",)``, which its ``__init__`` refuses."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class CodedError(Exception):
    """An exception with its own __init__ signature and attributes (one named ``message``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


def _make_reduced(text: str) -> ReducedError:
    return ReducedError(text)


class ReducedError(Exception):
    """An exception whose __reduce__ names a factory function instead of its class."""

    def __reduce__(self) -> Any:
        return (_make_reduced, self.args)


class LockHolder:
    def __init__(self) -> None:
        self.name = "holder"
        self.lock = threading.Lock()


class UnpicklableError(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("this exception refuses to pickle")


def make_pair(a: Any, b: Any) -> tuple[Any, Any]:
    return (a, b)


def child_work(d: Any, inv: Any, manager: Any) -> None:
    """Runs in a child process that received proxies (and a Manager) by pickling or by fork."""
    import os

    d["child"] = os.getpid()
    d["clients_seen_by_child"] = manager.stats().clients
    inv.add("from-child", 2)
    d["nested"]["list"].append("child")


def pool_task(d: Any, i: int) -> Any:
    import os

    d[str(i)] = os.getpid()
    return d["nested"]  # a proxy goes back to the parent as a proxy


class EventBus:
    """Calls back into clients: handlers arrive as byref proxies."""

    def __init__(self) -> None:
        self.handlers: list[Any] = []

    def subscribe(self, handler: Any) -> int:
        self.handlers.append(handler)
        return len(self.handlers)

    def publish(self, event: Any) -> list[Any]:
        return [h(event) for h in self.handlers]

    def apply(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    def drop_handlers(self, fail: bool = False) -> list[int]:
        """Forget every handler (the byref proxies die here, now); returns a list, or raises."""
        count = len(self.handlers)
        self.handlers.clear()
        if fail:
            raise LookupError(f"dropped {count}")
        return [count]


def slow_echo(x: Any, seconds: float) -> Any:
    import time

    time.sleep(seconds)  # stands for a long computation in the manager
    return x


class BufferProbe:
    """Reports how a buffer arrived in the manager, and hands out buffers of its own."""

    def describe(self, x: Any) -> tuple[str, str, tuple[int, ...], bool, bytes]:
        view = memoryview(x)
        return type(x).__name__, view.format, tuple(view.shape or ()), view.readonly, view.tobytes()

    def view(self, data: bytes, fmt: str) -> memoryview:
        return memoryview(bytearray(data)).cast(fmt)

    def double(self, x: Any) -> Any:
        return x * 2  # a fresh object: it comes back by value


class ArrayInterface:
    """An array-like that exposes only numpy's __array_interface__ (as PIL images and many wrappers
    of foreign memory do): its data pointer is an address in the manager's memory."""

    def __init__(self, n: int) -> None:
        import numpy

        self.data = numpy.arange(n, dtype=numpy.int64)

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return dict(self.data.__array_interface__)


class RaisesOnLoad:
    """Pickles fine; unpickling it (in the manager, or a worker) raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> Any:
        return (raise_error, (self.error,))


def raise_error(error: BaseException) -> Any:
    raise error


class InterruptsIn:
    """Unpickling it in the process ``pid`` raises KeyboardInterrupt there, as a Ctrl-C landing
    at that moment would; anywhere else it loads."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self) -> Any:
        return (interrupt_in, (self.pid,))

    def fresh(self) -> InterruptsIn:
        return InterruptsIn(self.pid)  # a fresh object: it comes back by value


def interrupt_in(pid: int) -> InterruptsIn:
    if os.getpid() == pid:
        raise KeyboardInterrupt
    return InterruptsIn(pid)


class CallsBackOnDel:
    """Holds a byref callback of a client and calls it when the manager frees this object."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback

    def __del__(self) -> None:
        self.callback()


def read_after_churn(inherited: Any, go: Any, results: Any) -> None:
    """A forked child: wait until the parent dropped the object and made new ones, then read it."""
    go.wait(60)
    try:
        results.put(("ok", dict(inherited)))
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def send_own_proxy_and_exit(address: Any, authkey: bytes, out: Any) -> None:
    """A spawned child: make an object only it holds, send a pickled proxy to it, exit at once."""
    import pickle

    import reflectmgr

    conn = reflectmgr.connect(address, authkey)
    mine = conn.list(["made", "by", "the", "child"])
    out.put(pickle.dumps(mine))
    conn.close()


stash: list[Any] = []


def keep_and_raise(proxy: Any) -> Any:
    """An executor task that keeps a borrowed proxy for later tasks, makes no call, and raises."""
    stash.append(proxy)
    raise ValueError("task failed after keeping its proxy")


def read_kept() -> Any:
    return list(stash[0])


def load_after_connect_then_close(address: Any, authkey: bytes, blob: bytes, out: Any) -> None:
    """A spawned child that, like a library, connects and closes, with a proxy unpickled meanwhile."""
    import pickle

    import reflectmgr

    conn = reflectmgr.connect(address, authkey)
    received = pickle.loads(blob)  # rebuilt through the session that connect() opened
    conn.close()
    try:
        out.put(("ok", list(received)))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))
