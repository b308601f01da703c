"""The value-or-reference rule, on the owner side, without processes."""

from __future__ import annotations

import sys
from typing import Any

from reflectmgr._owner.export import Ref, is_shared, plan


def verdict(make: Any) -> dict[int, Any] | None:
    result = make()
    shared = is_shared(sys.getrefcount(result))  # as the dispatcher does: nothing else on the stack
    return plan(result, shared)


def test_atoms_and_fresh_values_go_by_value() -> None:
    assert verdict(lambda: 5) is None
    assert verdict(lambda: "s") is None
    assert verdict(lambda: [1, 2, 3]) is None
    assert verdict(lambda: {"a": [1, {"b": 2}]}) is None


def test_shared_objects_go_by_reference() -> None:
    state = {"inner": [1]}
    refs = verdict(lambda: state["inner"])
    assert refs is not None and list(refs.values()) == [state["inner"]]


def test_fresh_container_of_shared_items_references_the_items() -> None:
    state = {"a": [1], "b": [2]}
    refs = verdict(lambda: state.copy())  # a fresh dict; its values are the shared lists
    assert refs is not None
    assert sorted(map(id, refs.values())) == sorted([id(state["a"]), id(state["b"])])


def test_forced_and_always_by_reference() -> None:
    obj: list[int] = []
    refs = verdict(lambda: Ref(obj))
    assert refs is not None and list(refs.values()) == [obj]
    refs = verdict(lambda: iter([1, 2]))
    assert refs is not None  # a fresh iterator is state: it goes by reference
    refs = verdict(lambda: [].append)
    assert refs is not None  # a bound method must run where its object lives
