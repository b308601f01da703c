"""The owner's object table: ids never reused, per-account counts, pins, no user code under the lock."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from reflectmgr._owner.table import Account, ObjectTable
from reflectmgr.errors import ProtocolError, ReentrantCallError, ReleasedError


class Obj:
    """A weak-referenceable, hashable stand-in for a managed object."""


def test_release_crossing_a_resend_keeps_the_object() -> None:
    table, client = ObjectTable(), Account("c")
    obj = Obj()
    oid = table.export(client, obj)  # sent once; the client's proxy dies and releases 1 ...
    assert table.export(client, obj) == oid  # ... while a reply to another thread sends it again
    table.release(client, [(oid, 1)])
    assert table.resolve(oid) is obj
    table.release(client, [(oid, 1)])
    with pytest.raises(ReleasedError):
        table.resolve(oid)


def test_ids_are_never_reused_even_when_addresses_are() -> None:
    table, client = ObjectTable(), Account("c")
    seen: set[int] = set()
    for _ in range(200):
        obj = Obj()  # CPython hands the freed address straight back to the next object
        oid = table.export(client, obj)
        assert oid not in seen
        seen.add(oid)
        table.release(client, [(oid, 1)])
        del obj
    stale = min(seen)
    with pytest.raises(ReleasedError):
        table.resolve(stale)
    assert len(table) == 0


def test_the_same_object_sent_again_after_leaving_gets_a_new_id() -> None:
    table, client = ObjectTable(), Account("c")
    obj = Obj()
    first = table.export(client, obj)
    table.release(client, [(first, 1)])
    second = table.export(client, obj)
    assert second != first and table.resolve(second) is obj
    with pytest.raises(ReleasedError):
        table.resolve(first)


def test_holders_are_independent_and_release_all() -> None:
    table, a, b = ObjectTable(), Account("a"), Account("b")
    obj = Obj()
    oid = table.export(a, obj)
    assert table.export(b, obj) == oid
    table.release_all(a)
    assert table.resolve(oid) is obj
    table.release(b, [(oid, 5)])  # over-release is clamped to what b holds
    assert len(table) == 0


def test_borrowed_reference_is_acquired_with_a_negative_count() -> None:
    table, submitter, worker = ObjectTable(), Account("s"), Account("w")
    oid = table.export(submitter, Obj())
    table.release(worker, [(oid, -1)])  # the worker takes over a reference it was lent
    table.release(submitter, [(oid, 1)])
    assert worker.held == {oid: 1} and len(table) == 1
    table.release(worker, [(oid, 1)])
    assert len(table) == 0
    table.release(worker, [(oid, -1)])  # acquiring an id that is gone changes nothing
    assert worker.held == {} and len(table) == 0


def test_pin_outlives_its_sender_until_claimed() -> None:
    table, sender = ObjectTable(), Account("s")
    obj = Obj()
    oid = table.export(sender, obj)
    token = table.pin([oid])
    table.release_all(sender)  # the sender exits while the pickle travels
    assert table.claim(token, oid) is obj  # still there; the claimer's reply counts it
    assert len(table) == 0  # the pin is given up; nobody holds the object now
    with pytest.raises(ReleasedError):
        table.claim(token, oid)  # the same pickle loaded again after the object left


def test_pickle_loaded_twice_while_the_object_lives() -> None:
    table, sender = ObjectTable(), Account("s")
    obj = Obj()
    oid = table.export(sender, obj)
    token = table.pin([oid])
    assert table.claim(token, oid) is obj
    assert table.claim(token, oid) is obj  # the sender still holds it


def test_pin_lapses_after_its_lease() -> None:
    table, sender = ObjectTable(pin_lease=0.0), Account("s")
    oid = table.export(sender, Obj())
    table.pin([oid])
    table.release_all(sender)
    assert len(table) == 1
    table.expire_pins()
    assert len(table) == 0 and table.pins == {}


def test_pin_skips_ids_that_are_gone() -> None:
    table, sender = ObjectTable(), Account("s")
    oid = table.export(sender, Obj())
    token = table.pin([oid, 12345])
    assert table.pins[token][0] == (oid,)


def test_adopt_counts_the_live_inherited_ids_and_unpins() -> None:
    table, parent, child = ObjectTable(), Account("p"), Account("c")
    live, gone = Obj(), Obj()
    oid = table.export(parent, live)
    gone_oid = table.export(parent, gone)
    token = table.pin([oid])
    table.release_all(parent)  # the parent drops everything right after fork
    assert table.adopt(child, token, [oid, gone_oid]) == [oid]
    assert child.held == {oid: 1} and table.pins == {} and len(table) == 1


def test_last_reference_is_dropped_outside_the_lock() -> None:
    """A __del__ that uses the table (user code calling back into the manager) must not deadlock."""
    table, client = ObjectTable(), Account("c")
    seen: list[Any] = []

    class CallsBack:
        def __del__(self) -> None:
            seen.append(table.lock._is_owned())  # type: ignore[attr-defined]
            table.export(client, Obj())  # refused inside the lock (see the tests at the end)

    oid = table.export(client, CallsBack())
    done = threading.Event()

    def release() -> None:
        table.release(client, [(oid, 1)])
        done.set()

    t = threading.Thread(target=release, daemon=True)
    t.start()
    assert done.wait(10), "release deadlocked in __del__"
    assert seen == [False] and len(table) == 1


def test_release_of_an_id_the_holder_never_received_changes_nothing() -> None:
    table, a, b = ObjectTable(), Account("a"), Account("b")
    oid = table.export(a, Obj())
    table.release(b, [(oid, 1), (999, 1)])  # b never received oid; 999 was never issued
    assert a.held == {oid: 1} and len(table) == 1


def test_adopt_without_a_fork_pin() -> None:
    """A child whose parent could not pin (its manager was unreachable at fork) adopts what lives."""
    table, parent, child = ObjectTable(), Account("p"), Account("c")
    oid = table.export(parent, Obj())
    assert table.adopt(child, None, [oid]) == [oid]
    assert child.held == {oid: 1} and parent.held == {oid: 1}


@pytest.mark.parametrize("bad", [[(1.5, 1)], [("x", 1)], [(1, "2")], [(1, 0.5)], [(1, 1, 1)], [None], ["ab"]], ids=repr)
def test_a_malformed_release_is_refused_whole_and_changes_nothing(bad: list[Any]) -> None:
    table, client = ObjectTable(), Account("c")
    obj = Obj()
    oid = table.export(client, obj)
    with pytest.raises(ProtocolError):
        table.release(client, [(oid, 1), *bad])  # the good entry before it is not applied either
    assert table.resolve(oid) is obj and client.held == {oid: 1}


# -- code a collection runs inside an update (a __del__ whose calls reach the table again) -----


def _inside_next_export(table: ObjectTable, run: Any) -> None:
    """Make ``run()`` happen inside the table's next export, with its lock held: where an
    allocation there may start a collection that runs a ``__del__`` on this thread."""
    next_oid = table._next_oid

    def inside() -> int:
        run()
        return next_oid()

    table._next_oid = inside  # type: ignore[method-assign]


def test_releases_arriving_inside_an_update_are_applied_when_it_ends() -> None:
    table, a, b = ObjectTable(), Account("a"), Account("b")
    first, second = Obj(), Obj()
    oid1, oid2 = table.export(a, first), table.export(b, second)
    kept_inside: list[bool] = []

    def a_reply_carries_releases() -> None:
        table.release(a, [(oid1, 1)])
        table.release_all(b)
        kept_inside.append(table.resolve(oid1) is first and table.resolve(oid2) is second)

    _inside_next_export(table, a_reply_carries_releases)
    third = Obj()
    oid3 = table.export(a, third)  # no hang; the counts it updates are not touched meanwhile
    assert kept_inside == [True]  # not while the export was halfway
    for gone in (oid1, oid2):  # both applied as it ended
        with pytest.raises(ReleasedError):
            table.resolve(gone)
    assert table.resolve(oid3) is third and a.held == {oid3: 1} and b.held == {}


def test_no_reference_can_be_sent_from_inside_an_update() -> None:
    table, client = ObjectTable(), Account("c")
    kept = Obj()
    oid = table.export(client, kept)
    token = table.pin([oid])
    refused: list[str] = []

    def sends() -> None:
        for send in (
            lambda: table.export(client, Obj()),
            lambda: table.pin([oid]),
            lambda: table.claim(token, oid),
            lambda: table.adopt(client, None, [oid]),
        ):
            with pytest.raises(ReentrantCallError, match="garbage collection"):
                send()
            refused.append("refused")
        table.expire_pins()  # not when re-entered: the next one does it

    _inside_next_export(table, sends)
    table.export(client, Obj())
    assert refused == ["refused"] * 4
    assert client.held[oid] == 1 and table.objects[oid][1] == 2  # one reception and the pin: unchanged
    assert table.claim(token, oid) is kept
