"""Value or reference (DESIGN §2): shared objects come back as proxies, temporaries as values."""

from __future__ import annotations

import pytest

import reflectmgr

from ..helpers import second_session
from .objects import Failing, Inventory, Record, make_pair


def test_nested_mutation_reaches_the_manager(m: reflectmgr.Manager) -> None:
    d = m.dict(a={"b": []})
    d["a"]["b"].append(1)
    d["a"]["c"] = {"x": 1}
    d["a"]["c"]["x"] += 1
    assert reflectmgr.value(d) == {"a": {"b": [1], "c": {"x": 2}}}
    inv = m.new(Inventory)
    rec = inv.add("apple", 3)
    assert reflectmgr.is_proxy(rec)
    rec["qty"] += 1
    assert inv.items["apple"]["qty"] == 4


def test_fresh_temporaries_come_back_as_values(m: reflectmgr.Manager) -> None:
    lst = m.list([[1], [2], 3])
    copy = lst[:]
    assert type(copy) is list and not reflectmgr.is_proxy(copy)
    assert all(reflectmgr.is_proxy(x) for x in copy[:2])  # shared inside: still proxies
    copy[0].append(9)
    assert lst[0] == [1, 9]
    d = m.dict(k=[1, 2])
    fresh = d.copy()
    assert type(fresh) is dict and reflectmgr.is_proxy(fresh["k"])
    assert reflectmgr.is_proxy(m.new(sorted, [3, 1, 2]))  # new() always keeps the object in the manager
    assert m.list([3, 1, 2]).copy() == [3, 1, 2] and type(m.list([1]).copy()) is list
    plain = m.dict(n=5)
    assert type(plain["n"]) is int and type(plain.keys) is not int


def test_a_fresh_result_that_does_not_pickle_stays_in_the_manager(m: reflectmgr.Manager) -> None:
    # It was an error ("message[2] is a _thread.lock object..."), though it lives on in the
    # manager like any object: it comes back as a proxy, as one holding it inside does.
    f = m.new(Failing)
    lock = f.fresh_lock()
    assert reflectmgr.is_proxy(lock)
    assert lock.acquire(False) and lock.locked() and not lock.acquire(False)
    lock.release()
    holder = f.holder()  # a fresh instance with a lock inside
    assert reflectmgr.is_proxy(holder) and holder.name == "holder" and not holder.lock.locked()
    with pytest.raises(reflectmgr.ReflectmgrPicklingError, match="lock"):
        reflectmgr.value(holder)  # asked for by value: still the error


def test_code_that_asks_for_the_real_type_takes_a_local_copy(m: reflectmgr.Manager) -> None:
    # docs/semantics.md, "Code that asks for the real type"
    import json

    d, lst = m.dict(a=[1], b={"c": 2}), m.list([1, 2])
    with pytest.raises(TypeError, match="not JSON serializable"):
        json.dumps(d)  # json's C encoder wants the exact type
    assert json.loads(json.dumps(reflectmgr.value(d))) == {"a": [1], "b": {"c": 2}}
    with pytest.raises(TypeError):
        [0] + lst  # noqa: RUF005 - the point: list's own concatenation refuses the proxy
    with pytest.raises(TypeError, match="must be list, not list proxy"):  # the proxy says so
        __import__("heapq").heappush(lst, 0)
    assert [0] + list(lst) == [0, 1, 2] and lst + [3] == [1, 2, 3]  # noqa: RUF005 - the recipe itself


def test_a_dataclass_proxy_works_with_dataclasses_functions(m: reflectmgr.Manager) -> None:
    # fields(p) answered [] (the remote Fields' sentinel is not this process's), asdict() and
    # replace() refused the proxy: dataclasses looks at type(p), which now carries the local
    # class's fields, and type(p)(...) builds a local object as p.__class__(...) does.
    import dataclasses

    r = m.new(Record, "a", ["x"])
    r.tags.append("y")  # a field living in the manager: its proxy
    assert dataclasses.is_dataclass(r) and [f.name for f in dataclasses.fields(r)] == ["name", "tags", "meta"]
    assert dataclasses.asdict(r) == {"name": "a", "tags": ["x", "y"], "meta": {}}
    assert type(dataclasses.asdict(r)["tags"]) is list and dataclasses.astuple(r) == ("a", ["x", "y"], {})
    other = dataclasses.replace(r, name="b")  # a new, local record, sharing the manager's tags
    assert type(other) is Record and other.name == "b" and r.name == "a"
    other.tags.append("z")
    assert r.tags == ["x", "y", "z"]
    match r:
        case Record(name="a", tags=[*tags]):
            assert tags == ["x", "y", "z"]
        case _:
            pytest.fail("a Record proxy does not match Record(...)")
    assert type(m.list([1]))("ab") == ["a", "b"] and type(type(m.dict())(a=1)) is dict


def test_a_proxy_whose_class_is_not_here_is_no_dataclass_and_builds_nothing(m: reflectmgr.Manager) -> None:
    import dataclasses
    import sys

    module = m.new(__import__("importlib").import_module, "tests.integration.manager_only")
    assert "tests.integration.manager_only" not in sys.modules  # nothing local to mirror
    # module.Unseen itself would come back by name, importing the module here: a proxy of it
    u = m.new(m.new(getattr, module, "Unseen"), 3)
    assert reflectmgr.is_proxy(u) and u.x == 3
    assert not dataclasses.is_dataclass(u)  # not a wrong answer such as fields(u) == ()
    with pytest.raises(TypeError, match="dataclass"):
        dataclasses.fields(u)
    with pytest.raises(TypeError, match="not importable in this process"):
        type(u)()
    assert "tests.integration.manager_only" not in sys.modules


def test_copy_copy_is_a_shallow_copy_not_the_proxy_itself(m: reflectmgr.Manager) -> None:
    # It returned the proxy itself: a "backup" that changed with the original.
    import copy

    d = m.dict(a=[1], b=2)
    backup = copy.copy(d)
    assert type(backup) is dict and not reflectmgr.is_proxy(backup)
    backup["b"] = 3
    backup["a"].append(5)  # shallow: the inner list is the manager's, shared with d
    assert d["b"] == 2 and d["a"] == [1, 5] and reflectmgr.is_proxy(backup["a"])
    inv = m.new(Inventory)
    inv.add("pear")
    twin = copy.copy(inv)
    assert type(twin) is Inventory and twin.items is not None and reflectmgr.is_proxy(twin.items)
    assert copy.copy(m.new(tuple, [1])) == (1,)


def test_a_class_sent_by_value_keeps_its_slots_and_cached_properties(m: reflectmgr.Manager) -> None:
    # Classes defined here (not importable by the manager) travel by value, with cloudpickle,
    # which built them without their __slots__: instances took any attribute, and one sent back
    # by value did not load into the real class. A functools.cached_property (an RLock on 3.11)
    # kept the whole class from pickling.
    import collections
    import copy
    import dataclasses
    import functools

    class Slotted:
        __slots__ = ("a", "b")

        def __init__(self) -> None:
            self.a, self.b = 1, [1]

    s = m.new(Slotted)
    with pytest.raises(AttributeError):
        s.other = 1
    assert reflectmgr.value(s).b == [1] and copy.copy(s).a == 1 and type(reflectmgr.value(s)) is Slotted

    @dataclasses.dataclass(slots=True)
    class Point:
        x: int
        y: int = 0

    assert reflectmgr.value(m.new(Point, 1)) == Point(1)

    class Cached:
        def __init__(self) -> None:
            self.calls = 0

        @functools.cached_property
        def once(self) -> int:
            self.calls += 1
            return self.calls

    c = m.new(Cached)
    assert (c.once, c.once, c.calls) == (1, 1, 1)
    # A namedtuple of atoms is a value wherever it is kept, as a tuple is (its class by value
    # came without its empty __slots__, so it looked like an object with state of its own).
    Pair = collections.namedtuple("Pair", "x y")
    d = m.dict(p=Pair(1, 2), q=Pair([1], 2))
    assert type(d["p"]) is Pair and d["p"] == (1, 2)
    assert reflectmgr.is_proxy(d["q"])  # a list inside: shared state, by reference


def test_value_is_a_deep_local_copy(m: reflectmgr.Manager) -> None:
    d = m.dict(a={"b": [1]})
    v = reflectmgr.value(d)
    assert v == {"a": {"b": [1]}} and type(v["a"]) is dict
    v["a"]["b"].append(2)
    assert d["a"]["b"] == [1]
    assert reflectmgr.value([d, 1]) == [{"a": {"b": [1]}}, 1]


def test_proxies_as_arguments_arrive_as_the_real_object(m: reflectmgr.Manager) -> None:
    a = m.list([1])
    b = m.dict()
    b["a"] = a  # stored as the real list, not a proxy of a proxy
    b["a"].append(2)
    assert list(a) == [1, 2]
    assert b["a"] is a  # the same remote object, so the same proxy
    pair = m.new(make_pair, a, b)
    assert pair[0] is a and pair[1] is b


def test_identity_while_alive(m: reflectmgr.Manager) -> None:
    inv = m.new(Inventory)
    assert inv.items is inv.items
    d = m.dict(x=[1])
    assert d["x"] is d["x"]
    assert m.root is m.root


def test_root_publishes_by_name(m: reflectmgr.Manager) -> None:
    m.root["jobs"] = []
    other = second_session(m)
    assert other.root["jobs"] == []
    other.root["jobs"].append("one")
    assert m.root["jobs"] == ["one"]


def test_share_copies_a_local_object_in(m: reflectmgr.Manager) -> None:
    local = Inventory()
    local.add("pear", 2)
    shared = m.share(local)
    shared.add("pear", 1)
    assert local.items["pear"]["qty"] == 2 and shared.total() == 3


def test_keyword_arguments_arrive_as_given_by_value_or_by_reference(m: reflectmgr.Manager) -> None:
    # Small keyword arguments of atoms take the plain-pickle path; anything else is encoded (a
    # proxy goes home as the real object): both must reach the method as the caller gave them.
    inv = m.new(Inventory)
    inv.add(name="pear", qty=2)
    inv.add(name="pear", qty=1, tags=("ripe",))
    assert inv.items["pear"]["qty"] == 3 and inv.items["pear"]["tags"] == {"ripe"}
    d = m.dict()
    shared = m.list([1])
    d.update(n=1, s="x", b=b"y")
    d.update(shared=shared)
    assert reflectmgr.value(d) == {"n": 1, "s": "x", "b": b"y", "shared": [1]}
    assert d["shared"] is shared  # the manager stored the list itself, not a copy
    q = m.Queue()
    q.put("x", block=True, timeout=5.0)
    assert q.get(timeout=5.0) == "x"
