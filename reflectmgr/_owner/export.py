"""The value-or-reference rule, applied to everything the owner sends back.

    result --atom-----------------------------------------------> by value
           --Ref(obj) (forced: new, root, iterators)-------------> by reference
           --always-ref type (bound method, generator, module...)-> by reference
           --refcount says shared (held by managed state)--------> by reference
           --fresh--> walk its children: shared ones become references, the rest travels by value
                      (if it then fails to pickle, the whole result goes by reference)

"Fresh" is decided with ``sys.getrefcount``: a result that only the dispatcher's local variable
holds is a temporary nobody else can observe (``lst[:]``, ``d.copy()``, ``sorted(...)``). The
baselines are calibrated at import by running the same code shapes on known-fresh objects, so a
Python whose reference counting differs (3.12 immortals, 3.14 borrowed stack refs) still gets
the right answer.
"""

from __future__ import annotations

import enum
import sys
import types
from typing import Any

from .._wire import dunders
from .._wire.codec import ATOMS

_getrefcount = sys.getrefcount

# Type descriptions travel as plain tuples: (tid, module, qualname, name, dunders, methods).
TypeDesc = tuple[int, str, str, str, frozenset[int], frozenset[str]]


class Ref:
    """Marks a handler's result that must go by reference whatever its refcount says."""

    __slots__ = ("target",)

    def __init__(self, target: Any) -> None:
        self.target = target


class Value:
    """Marks a handler's result that must go wholly by value (``reflectmgr.value``)."""

    __slots__ = ("target",)

    def __init__(self, target: Any) -> None:
        self.target = target


_ALWAYS_REF: frozenset[type] = frozenset(
    {
        types.MethodType,
        types.BuiltinMethodType,
        types.MethodWrapperType,
        types.FunctionType,
        types.GeneratorType,
        types.CoroutineType,
        types.AsyncGeneratorType,
        types.ModuleType,
        types.FrameType,
        types.TracebackType,
        type({}.keys()),
        type({}.values()),
        type({}.items()),
    }
)
# Walk into these (and into plain instances' __dict__) when the container itself is fresh.
_CONTAINERS: frozenset[type] = frozenset({list, tuple, set, frozenset, dict})


def always_ref(t: type) -> bool:
    return t in _ALWAYS_REF or (hasattr(t, "__next__") and not issubclass(t, BaseException))


def _local_rc() -> int:
    x: list[Any] = []
    return _getrefcount(x)  # the variable and the argument


def _child_rc() -> int:
    probe: list[list[Any]] = [[]]
    for x in probe:
        return _getrefcount(x)
    raise AssertionError


# A local variable plus getrefcount's argument; a container's slot plus loop variable plus argument.
LOCAL_BASE = _local_rc()
CHILD_BASE = _child_rc()


def is_shared(result_rc: int) -> bool:
    """``result_rc`` is ``sys.getrefcount(result)`` taken right where the dispatcher holds ``result``."""
    return result_rc > LOCAL_BASE


def plan(result: Any, shared: bool) -> dict[int, Any] | None:
    """Decide what of ``result`` goes by reference.

    Returns ``None`` when everything goes by value (plain pickling), otherwise a map from the
    ``id`` of each object to replace by a reference to the object itself. ``shared`` is the
    top-level verdict of :func:`is_shared`.
    """
    t = type(result)
    if t in ATOMS:
        return None
    if t is Ref:
        return {id(result): result.target}
    if t is Value:
        return None
    if shared and not _by_value_anyway(result):
        return {id(result): result}
    if always_ref(t):
        return {id(result): result}
    refs: dict[int, Any] = {}
    _walk(result, refs)
    return refs or None


def _by_value_anyway(obj: Any) -> bool:
    # Shared but immutable, or named: classes and enum members pickle by name, tuples of atoms copy
    # (a namedtuple's too: a tuple subclass with no attributes of its own; a namedtuple class sent
    # by value has an empty __dict__, cloudpickle dropping its empty __slots__).
    if isinstance(obj, (type, enum.Enum)):
        return True
    t = type(obj)
    if t is tuple or t is frozenset or (isinstance(obj, tuple) and not getattr(obj, "__dict__", None)):
        return all(type(x) in ATOMS for x in obj)
    return False


def _walk(root: Any, refs: dict[int, Any]) -> None:
    stack = [root]
    seen = {id(root)}
    while stack:
        obj = stack.pop()
        t = type(obj)
        if t is dict:
            children: Any = obj.values()
            _keys(obj, refs)
        elif t in _CONTAINERS:
            children = obj
        elif t is Ref:
            refs[id(obj)] = obj.target
            continue
        else:
            d = getattr(obj, "__dict__", None)
            if type(d) is not dict:
                continue
            children = d.values()
        for x in children:
            tx = type(x)
            if tx in ATOMS or id(x) in seen:
                continue
            if tx is tuple:  # a row, a dict's item: by value if it holds atoms only, shared or not
                for y in x:
                    if type(y) not in ATOMS:
                        break
                else:
                    continue
            if tx is Ref:
                refs[id(x)] = x.target
            elif _getrefcount(x) > CHILD_BASE:
                if not _by_value_anyway(x):
                    refs[id(x)] = x
            elif tx not in _CONTAINERS and always_ref(tx):  # (a container is not: no hasattr for it)
                refs[id(x)] = x
            else:
                seen.add(id(x))
                stack.append(x)


def _keys(d: dict[Any, Any], refs: dict[int, Any]) -> None:
    for k in d:
        tk = type(k)
        if tk in ATOMS or tk is tuple or tk is frozenset:
            continue
        if _getrefcount(k) > CHILD_BASE or always_ref(tk):
            refs[id(k)] = k


class Describer:
    """Type descriptions for proxies, each sent once per connection (then only its id)."""

    def __init__(self) -> None:
        self._cache: dict[type, TypeDesc] = {}
        self.types: dict[int, type] = {}  # keeps described types alive, so their ids stay unique

    def describe(self, t: type) -> TypeDesc:
        desc = self._cache.get(t)
        if desc is None:
            desc = (
                id(t),
                getattr(t, "__module__", "builtins") or "builtins",
                getattr(t, "__qualname__", t.__name__),
                t.__name__,
                dunders.supported(t),
                _methods(t),
            )
            self._cache[t] = desc
            self.types[id(t)] = t
        return desc


_FUNCTIONLIKE = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
    classmethod,
    staticmethod,
)


def _methods(t: type) -> frozenset[str]:
    """Names that are plainly methods of ``t``: the proxy calls them in one round trip."""
    if not isinstance(dunders.lookup(t, "__getattribute__"), types.WrapperDescriptorType):
        return frozenset()  # custom attribute lookup: every access must go through it
    names: set[str] = set()
    for klass in reversed(t.__mro__):
        for name, attr in vars(klass).items():
            if name.startswith("__"):
                continue
            if isinstance(attr, _FUNCTIONLIKE):
                names.add(name)
            else:
                names.discard(name)
    return frozenset(names)
