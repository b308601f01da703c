"""The dunder table covers Python's data model, and proxy classes follow the remote type."""

from __future__ import annotations

import operator

from reflectmgr._owner.export import Describer
from reflectmgr._proxy.proxy import proxy_class
from reflectmgr._wire.dunders import DUNDERS, INDEX, lookup, supported

# The data model's special methods that a proxy must forward (Python reference, "Data model").
DATA_MODEL = {
    "__repr__", "__str__", "__bytes__", "__format__", "__hash__", "__bool__", "__len__",
    "__length_hint__", "__getitem__", "__setitem__", "__delitem__", "__iter__", "__reversed__",
    "__contains__", "__call__", "__enter__", "__exit__", "__next__", "__index__", "__int__",
    "__float__", "__complex__", "__round__", "__trunc__", "__floor__", "__ceil__", "__neg__",
    "__pos__", "__abs__", "__invert__", "__fspath__",
    "__lt__", "__le__", "__eq__", "__ne__", "__gt__", "__ge__",
}  # fmt: skip
for _op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "lshift", "rshift", "and", "xor", "or"):
    DATA_MODEL |= {f"__{_op}__", f"__r{_op}__", f"__i{_op}__"}
DATA_MODEL |= {"__divmod__", "__rdivmod__"}
# Handled by the Proxy base class itself rather than by the table.
BASE_HANDLED = {"__getattr__", "__setattr__", "__delattr__", "__dir__"}


def test_table_covers_the_data_model() -> None:
    names = {d.name for d in DUNDERS}
    assert DATA_MODEL - names == set()
    assert len(names) == len(DUNDERS), "a dunder is listed twice"


def test_base_handles_attribute_protocol() -> None:
    from reflectmgr import Proxy

    for name in BASE_HANDLED:
        assert name in vars(Proxy), name


def test_reflected_operators_swap_operands() -> None:
    assert DUNDERS[INDEX["__rsub__"]].remote(10, 3) == 3 - 10
    assert DUNDERS[INDEX["__sub__"]].remote(10, 3) == 7
    assert DUNDERS[INDEX["__iadd__"]].remote([1], [2]) == [1, 2]
    assert DUNDERS[INDEX["__contains__"]].remote([1, 2], 2) is True
    assert DUNDERS[INDEX["__getitem__"]].remote({"k": 1}, "k") == 1
    assert DUNDERS[INDEX["__lt__"]].remote(1, 2) is operator.lt(1, 2)


def test_proxy_class_follows_remote_type() -> None:
    desc = Describer()
    list_proxy = proxy_class(desc.describe(list))
    assert list_proxy.__hash__ is None  # lists are unhashable: so are their proxies
    assert hasattr(list_proxy, "__len__") and hasattr(list_proxy, "__iadd__")
    assert "__call__" not in vars(list_proxy) and "__call__" in vars(proxy_class(desc.describe(type(len))))
    assert "append" in vars(list_proxy)  # a method: one CALLMETHOD round trip

    class Plain:
        def method(self) -> int:
            return 1

    plain_proxy = proxy_class(desc.describe(Plain))
    assert plain_proxy.__hash__ is not None
    assert not hasattr(plain_proxy, "__len__")
    assert not hasattr(plain_proxy, "__iter__")
    assert "method" in vars(plain_proxy)


def test_supported_matches_hasattr() -> None:
    for cls in (int, str, list, dict, set, object, type(len)):
        for i in supported(cls):
            d = DUNDERS[i]
            assert not d.needs or any(lookup(cls, n) is not None for n in d.needs), (cls, d.name)
    assert DUNDERS[INDEX["__call__"]] not in [DUNDERS[i] for i in supported(list)]
