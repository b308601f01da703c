"""The owner's object table: per-holder counts make crossing releases safe."""

from __future__ import annotations

import pytest

from reflectmgr._owner.table import Holder, ObjectTable
from reflectmgr.errors import ReleasedError


def test_release_crossing_a_resend_keeps_the_object() -> None:
    table, client = ObjectTable(), Holder("c")
    obj = object()
    table.add(client, [obj])  # sent once; the client's proxy dies and releases 1 ...
    table.add(client, [obj])  # ... while a reply to another thread sends it again
    table.release(client, [(id(obj), 1)])
    assert table.resolve(id(obj)) is obj
    table.release(client, [(id(obj), 1)])
    with pytest.raises(ReleasedError):
        table.resolve(id(obj))


def test_holders_are_independent_and_release_all() -> None:
    table, a, b = ObjectTable(), Holder("a"), Holder("b")
    obj = object()
    table.add(a, [obj])
    table.add(b, [obj])
    table.release_all(a)
    assert table.resolve(id(obj)) is obj
    table.release(b, [(id(obj), 5)])  # over-release is clamped to what b holds
    assert len(table) == 0


def test_pin_and_claim_transfer_a_reference() -> None:
    table, sender, receiver = ObjectTable(), Holder("s"), Holder("r")
    obj = object()
    table.add(sender, [obj])
    token = table.pin(sender, id(obj))
    table.release(sender, [(id(obj), 1)])  # the sender drops its proxy while the pickle travels
    claimed = table.claim(token, id(obj))  # the claimer holds it while replying ...
    assert claimed is obj and sender.held == {}
    table.add(receiver, [claimed])  # ... and the reply counts it for the receiver
    assert receiver.held == {id(obj): 1}
    table.release(receiver, [(id(obj), 1)])
    assert len(table) == 0
