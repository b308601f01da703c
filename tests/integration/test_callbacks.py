"""byref: local objects passed by reference, called back by the manager while the caller waits."""

from __future__ import annotations

import gc
import threading

import pytest

import reflectmgr

from ..helpers import second_session, wait_until
from .objects import EventBus


def test_manager_calls_back_into_the_caller(manager: reflectmgr.Manager) -> None:
    bus = manager.new(EventBus)
    seen: list[object] = []

    def handler(event: object) -> str:
        seen.append((event, threading.get_ident()))
        return f"handled {event}"

    bus.subscribe(reflectmgr.byref(handler))
    assert bus.publish("e1") == ["handled e1"]
    assert seen == [("e1", threading.get_ident())]  # ran here, in the waiting thread


def test_byref_object_methods_and_state(manager: reflectmgr.Manager) -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def bump(self, k: int) -> int:
            self.n += k
            return self.n

    counter = Counter()
    bus = manager.new(EventBus)
    assert bus.apply(reflectmgr.byref(counter.bump), 5) == 5
    assert counter.n == 5


def test_callback_exception_reaches_the_original_caller(manager: reflectmgr.Manager) -> None:
    bus = manager.new(EventBus)

    def bad(event: object) -> None:
        raise LookupError(f"no handler for {event}")

    bus.subscribe(reflectmgr.byref(bad))
    with pytest.raises(LookupError, match="no handler for x"):
        bus.publish("x")
    assert bus.subscribe(reflectmgr.byref(print)) == 2  # the connection is still in step


def test_callback_outside_a_waiting_call_is_a_clear_error(m: reflectmgr.Manager) -> None:
    bus = m.new(EventBus)
    bus.subscribe(reflectmgr.byref(len))
    other = second_session(m)
    other_bus = other.root
    other_bus["bus"] = bus
    # Another client publishing cannot reach our callback: we are not waiting on that call.
    with pytest.raises(reflectmgr.ReflectmgrError, match="waits"):
        other.root["bus"].publish("x")


def test_byref_objects_are_released_when_the_manager_drops_them(m: reflectmgr.Manager) -> None:
    bus = m.new(EventBus)
    bus.subscribe(reflectmgr.byref(len))
    assert len(m.client.table) == 1
    del bus
    gc.collect()
    m.client.flush()  # the bus dies in the manager; its proxy to our object dies with it
    assert wait_until(lambda: (m.stats(), len(m.client.table) == 0)[1], message="the manager's release")


@pytest.mark.parametrize("reply", ["a list", "an error"])
def test_the_release_of_a_byref_object_rides_on_any_reply(m: reflectmgr.Manager, reply: str) -> None:
    # The manager's proxy dies during the call: its release rides on that call's reply, whatever
    # the reply is (it once rode only on scalars and references: a client whose calls return
    # containers or raise kept its byref objects alive for ever).
    bus = m.new(EventBus)
    bus.subscribe(reflectmgr.byref(len))
    assert len(m.client.table) == 1
    if reply == "a list":
        assert bus.drop_handlers() == [1]
    else:
        with pytest.raises(LookupError, match="dropped 1"):
            bus.drop_handlers(True)
    assert len(m.client.table) == 0


def test_byref_outside_a_call_refuses_to_pickle() -> None:
    import pickle

    with pytest.raises(pickle.PicklingError):
        pickle.dumps(reflectmgr.byref(len))


def test_a_served_request_keeps_nothing_alive_while_its_connection_waits(manager: reflectmgr.Manager) -> None:
    # The subscribe call's arguments (the byref proxy) were still referenced by the thread that
    # served it, until that connection's next request: released by another thread's connection,
    # the bus died in the manager but the handler did not, and its release never came back.
    bus = manager.new(EventBus)
    bus.subscribe(reflectmgr.byref(len))
    assert len(manager.client.table) == 1
    del bus
    gc.collect()
    other = threading.Thread(target=manager.client.flush)  # the release goes on the thread's own connection
    other.start()
    other.join()
    assert len(manager.client.table) == 0
