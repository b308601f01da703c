"""The whole object protocol through a proxy, on every transport."""

from __future__ import annotations

import pytest

import reflectmgr

from .objects import Dynamic, Inventory, Vector


def test_attributes_get_set_delete(manager: reflectmgr.Manager) -> None:
    ns = manager.Namespace(x=1)
    assert ns.x == 1
    ns.y = [1, 2]
    assert ns.y == [1, 2]
    del ns.x
    assert not hasattr(ns, "x")  # AttributeError crosses, so hasattr works
    with pytest.raises(AttributeError):
        ns.x  # noqa: B018
    assert getattr(ns, "missing", "default") == "default"


def test_getattr_based_objects(manager: reflectmgr.Manager) -> None:
    d = manager.new(Dynamic)
    assert d.dyn_hello == "hello"
    assert not hasattr(d, "other")


def test_calls_with_every_argument_kind(manager: reflectmgr.Manager) -> None:
    v = manager.new(Vector, 1, 2)
    args = (1, 2)
    kwargs = {"k": 3}
    assert v() == ((), {})
    assert v(*args, **kwargs) == ((1, 2), {"k": 3})
    assert v(0, *args, z=1, **kwargs) == ((0, 1, 2), {"z": 1, "k": 3})
    inv = manager.new(Inventory)
    inv.add("apple", 3, tags=("fruit",))
    assert inv.add("apple", qty=2)["qty"] == 5


def test_items_slices_len_contains_bool(manager: reflectmgr.Manager) -> None:
    lst = manager.list(range(10))
    assert lst[3] == 3 and lst[-1] == 9
    assert lst[2:5] == [2, 3, 4] and lst[::-3] == [9, 6, 3, 0]
    lst[0] = 100
    lst[1:3] = ["a", "b"]
    del lst[-1]
    assert len(lst) == 9 and 100 in lst and 9 not in lst
    assert bool(lst) and not bool(manager.list())
    with pytest.raises(IndexError):
        lst[99]
    d = manager.dict(a=1)
    with pytest.raises(KeyError):
        d["b"]
    assert d.get("b", 7) == 7


def test_iteration_and_next(manager: reflectmgr.Manager) -> None:
    lst = manager.list(range(1000))
    assert list(lst) == list(range(1000))
    assert [x for x in lst if x % 500 == 0] == [0, 500]
    assert list(reversed(lst))[:3] == [999, 998, 997]
    d = manager.dict({str(i): i for i in range(5)})
    assert sorted(d) == [str(i) for i in range(5)]
    assert dict(d.items()) == {str(i): i for i in range(5)}
    it = iter(lst)
    assert next(it) == 0 and next(it) == 1
    gen = manager.new(iter, [1, 2])  # a remote iterator: stepped one item at a time
    assert next(gen) == 1 and next(gen) == 2
    with pytest.raises(StopIteration):
        next(gen)


def test_an_iterator_sees_changes_made_before_its_first_next(manager: reflectmgr.Manager) -> None:
    # As a local iterator would (CPython's test_dict_iter / test_list_iter): the remote iterator
    # exists from iter(), its first batch is fetched at the first next().
    d = manager.dict(a=1, b=2)
    it = iter(d)
    d.clear()
    with pytest.raises(RuntimeError, match="changed size"):
        next(it)
    lst = manager.list(range(5))
    it = iter(lst)
    lst[0] = 100
    assert next(it) == 100
    empty = iter(manager.list())
    with pytest.raises(StopIteration):
        next(empty)


def test_a_change_while_a_batch_is_consumed_is_seen_at_the_next_batch(manager: reflectmgr.Manager) -> None:
    from reflectmgr._proxy.proxy import FIRST_BATCH

    lst = manager.list(range(FIRST_BATCH + 10))
    it = iter(lst)
    assert next(it) == 0  # the first batch: items 0..FIRST_BATCH-1, as they were
    lst[1] = "late"
    lst[FIRST_BATCH] = "seen"
    rest = list(it)
    assert rest[0] == 1  # inside the batch already fetched: the old value
    assert rest[FIRST_BATCH - 1] == "seen"  # in the next batch: the new one
    d = manager.dict({i: i for i in range(FIRST_BATCH + 10)})
    it = iter(d)
    next(it)
    d["new"] = 1
    with pytest.raises(RuntimeError, match="changed size"):
        list(it)


def test_repr_str_format_dir(manager: reflectmgr.Manager) -> None:
    v = manager.new(Vector, 1.5, 2)
    assert repr(v) == "Vector(1.5, 2)"
    assert str(v) == "Vector(1.5, 2)"
    assert f"{v:.1f}" == "<1.5,2.0>"
    assert "xs" in dir(v) and "__add__" in dir(v)


def test_comparisons_and_hash(manager: reflectmgr.Manager) -> None:
    a = manager.new(Vector, 1, 2)
    b = manager.new(Vector, 3, 4)
    assert a == Vector(1, 2) and a != b
    assert a < b and b > a and not (a > b)
    assert hash(a) == hash(Vector(1, 2))
    with pytest.raises(TypeError):
        hash(manager.list())  # unhashable remotely, unhashable here


def test_arithmetic_reflected_inplace(manager: reflectmgr.Manager) -> None:
    v = manager.new(Vector, 1, 2)
    assert v + 1 == Vector(2, 3)
    assert 10 + v == Vector(11, 12)  # __radd__
    assert 10 - v == Vector(9, 8)  # __rsub__
    assert v * 2 == Vector(2, 4) and -v == Vector(-1, -2) and abs(manager.new(Vector, 3, 4)) == 5.0
    w = v
    v += 10  # remote __iadd__ returns the same object: still the same proxy
    assert v is w and v.xs == [11, 12]
    lst = manager.list([1])
    alias = lst
    lst += [2, 3]
    assert lst is alias and list(lst) == [1, 2, 3]
    n = manager.Namespace(count=1)
    n.count += 5  # read, add locally, write back
    assert n.count == 6


def test_number_protocols(manager: reflectmgr.Manager) -> None:
    v = manager.new(Vector, 1, 2, 3)
    assert [10, 20, 30, 40][v] == 40  # __index__
    assert int(v) == 6 and float(v) == 6.0
    assert operator_index(v) == 3


def operator_index(x: object) -> int:
    import operator

    return operator.index(x)


def test_with_statement(manager: reflectmgr.Manager) -> None:
    v = manager.new(Vector, 1)
    with v as inside:
        assert inside.entered == 1
    assert v.entered == 0
    with v:
        raise KeyError("swallowed by the remote __exit__")
    with pytest.raises(ValueError):
        with v:
            raise ValueError("not swallowed")
    assert v.entered == 0


def test_isinstance_and_is_proxy(manager: reflectmgr.Manager) -> None:
    d = manager.dict()
    assert isinstance(d, dict) and reflectmgr.is_proxy(d)
    assert isinstance(manager.new(Inventory), Inventory)
    assert not reflectmgr.is_proxy({}) and callable(manager.new(Vector)) and not callable(d)


def test_a_bound_method_is_the_remote_method_wherever_it_goes(manager: reflectmgr.Manager) -> None:
    import pickle

    q = manager.Queue()
    put = q.put
    assert put.__self__ is q and put.__name__ == "put" and callable(put)
    assert q.put is not put and q.put == put  # bound anew each time, equal as Python's are
    put(1)
    assert q.get() == 1
    # Sent home as an argument (the codec's cloudpickle path): the real queue's own method there,
    # not a function that calls through a proxy the manager does not have.
    held = manager.list()
    held.append(put)
    held[0](2)
    assert q.get() == 2
    # Plain pickle (a multiprocessing child's): by name, as getattr(proxy, "put").
    again = pickle.loads(pickle.dumps(put))
    again(3)
    assert q.get() == 3
    with pytest.raises(AttributeError):
        q.no_such_method  # noqa: B018


def test_match_statement_patterns(manager: reflectmgr.Manager) -> None:
    # Sequence and mapping patterns look at the type's flags, which isinstance does not set.
    lst, d = manager.list([1, 2, 3]), manager.dict(kind="point", at={"x": 1})
    match lst:
        case [first, *rest]:
            assert (first, rest) == (1, [2, 3])
        case _:
            pytest.fail("a list proxy does not match a sequence pattern")
    match d:
        case {"kind": "point", "at": {"x": x}}:
            assert x == 1
        case _:
            pytest.fail("a dict proxy does not match a mapping pattern")
    match manager.new(bytearray, b"ab"):
        case [*_]:
            pytest.fail("a bytearray matched a sequence pattern")  # as locally: it does not
        case bytearray():
            pass
