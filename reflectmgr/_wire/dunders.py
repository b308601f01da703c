"""The one table of special methods that a proxy forwards.

Each entry says what the owner runs (``remote(obj, *args)``) and when a type supports it (it has
one of the ``needs`` attributes, not set to None; an empty ``needs`` means every object does).
The owner describes a type by the indices of the entries it supports; the proxy layer generates one
proxy class per remote type from those indices. Both sides import this table, so an index means
the same operation on both ends.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dunder:
    name: str
    remote: Callable[..., Any]
    needs: tuple[str, ...] = ()

    def supported_by(self, cls: type) -> bool:
        if not self.needs:
            return True
        return any(lookup(cls, n) is not None for n in self.needs)


def lookup(cls: type, name: str) -> Any:
    """``name`` as instances of ``cls`` see it (the class's MRO, never its metaclass)."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


def _reflected(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def remote(obj: Any, other: Any) -> Any:
        return fn(other, obj)

    return remote


def _enter(obj: Any) -> Any:
    return type(obj).__enter__(obj)


def _exit(obj: Any, *exc: Any) -> Any:
    return type(obj).__exit__(obj, *exc)


_BINARY: dict[str, Callable[..., Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "matmul": operator.matmul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "divmod": divmod,
    "pow": pow,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
    "and": operator.and_,
    "xor": operator.xor,
    "or": operator.or_,
}
_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.iadd,
    "sub": operator.isub,
    "mul": operator.imul,
    "matmul": operator.imatmul,
    "truediv": operator.itruediv,
    "floordiv": operator.ifloordiv,
    "mod": operator.imod,
    "pow": operator.ipow,
    "lshift": operator.ilshift,
    "rshift": operator.irshift,
    "and": operator.iand,
    "xor": operator.ixor,
    "or": operator.ior,
}


def _table() -> tuple[Dunder, ...]:
    rows = [
        Dunder("__repr__", repr),
        Dunder("__str__", str),
        Dunder("__format__", format),
        Dunder("__bytes__", bytes, ("__bytes__",)),
        Dunder("__hash__", hash, ("__hash__",)),
        Dunder("__bool__", bool, ("__bool__",)),
        Dunder("__len__", len, ("__len__",)),
        Dunder("__length_hint__", operator.length_hint, ("__length_hint__",)),
        Dunder("__index__", operator.index, ("__index__",)),
        Dunder("__int__", int, ("__int__",)),
        Dunder("__float__", float, ("__float__",)),
        Dunder("__complex__", complex, ("__complex__",)),
        Dunder("__neg__", operator.neg, ("__neg__",)),
        Dunder("__pos__", operator.pos, ("__pos__",)),
        Dunder("__abs__", abs, ("__abs__",)),
        Dunder("__invert__", operator.invert, ("__invert__",)),
        Dunder("__round__", round, ("__round__",)),
        Dunder("__trunc__", math.trunc, ("__trunc__",)),
        Dunder("__floor__", math.floor, ("__floor__",)),
        Dunder("__ceil__", math.ceil, ("__ceil__",)),
        Dunder("__fspath__", os.fspath, ("__fspath__",)),
        Dunder("__eq__", operator.eq),
        Dunder("__ne__", operator.ne),
        Dunder("__lt__", operator.lt),
        Dunder("__le__", operator.le),
        Dunder("__gt__", operator.gt),
        Dunder("__ge__", operator.ge),
        Dunder("__contains__", operator.contains, ("__contains__", "__iter__", "__getitem__")),
        Dunder("__getitem__", operator.getitem, ("__getitem__",)),
        Dunder("__setitem__", operator.setitem, ("__setitem__",)),
        Dunder("__delitem__", operator.delitem, ("__delitem__",)),
        Dunder("__next__", next, ("__next__",)),
        Dunder("__enter__", _enter, ("__enter__",)),
        Dunder("__exit__", _exit, ("__exit__",)),
        # Not forwarded one-to-one (the proxy layer implements them with their own ops), listed so
        # a type's description says whether it supports them.
        Dunder("__iter__", iter, ("__iter__", "__getitem__")),
        Dunder("__reversed__", reversed, ("__reversed__",)),
        Dunder("__call__", operator.call if hasattr(operator, "call") else _call, ("__call__",)),
        # numpy's conversion (np.asarray(p)): the proxy's __array__ fetches a copy made here. The
        # two attributes are refused by the proxy instead (their data is an address in the
        # manager's memory: read in the client, a crash or another object's bytes).
        Dunder("__array__", _array_copy, ("__array__", "__array_interface__", "__array_struct__")),
        # The buffer protocol from Python (3.12+, PEP 688: memoryview(p), f.write(p), hashing):
        # the proxy's __buffer__ returns a read-only view of a copy of the manager's buffer.
        Dunder("__buffer__", memoryview, ("__buffer__",)),
    ]
    for name, fn in _BINARY.items():
        rows.append(Dunder(f"__{name}__", fn, (f"__{name}__",)))
        rows.append(Dunder(f"__r{name}__", _reflected(fn), (f"__r{name}__",)))
        if name in _INPLACE:
            rows.append(Dunder(f"__i{name}__", _INPLACE[name], (f"__i{name}__",)))
    return tuple(rows)


def _call(obj: Any, *args: Any, **kwargs: Any) -> Any:
    return obj(*args, **kwargs)


def _array_copy(obj: Any) -> Any:
    import numpy  # the object has an array protocol: numpy is in the process that made it

    return numpy.array(obj, copy=True)  # fresh: travels by value


DUNDERS: tuple[Dunder, ...] = _table()
INDEX: dict[str, int] = {d.name: i for i, d in enumerate(DUNDERS)}


def supported(cls: type) -> frozenset[int]:
    """Indices of the table entries that instances of ``cls`` support."""
    return frozenset(i for i, d in enumerate(DUNDERS) if d.supported_by(cls))
