"""Issue 13: asyncio (reflectmgr/aio.py), run with anyio's pytest plugin on the asyncio backend:
proxies awaited without blocking the loop, items, methods, attributes, batched ``async for``,
``async with`` on locks (an RLock too, which belongs to the connection that took it), 1 000
concurrent awaits on one loop, and cancellation that leaks nothing."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import reflectmgr
from reflectmgr.aio import AsyncManager, AsyncProxy

from ..helpers import PROMPT

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def am() -> AsyncIterator[AsyncManager]:
    async with reflectmgr.AsyncManager(lanes=8) as m:
        yield m


class Slow:
    """Lives in the manager: a call that takes a while, and what it hands out by reference."""

    def __init__(self) -> None:
        self.kept: dict[str, list[int]] = {"items": [1, 2, 3]}
        self.started = 0

    def wait(self, seconds: float) -> dict[str, list[int]]:
        self.started += 1
        time.sleep(seconds)  # the manager's thread for this connection is busy: the loop must not be
        return self.kept


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """Await ``predicate()`` until it holds (each look is a call to the manager), PROMPT at most."""
    deadline = time.monotonic() + PROMPT
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"


async def test_items_methods_and_attributes(am: AsyncManager) -> None:
    d = await am.dict(a=1)
    assert isinstance(d, AsyncProxy)
    await d.aset("nested", {"log": []})
    log = await (await d.aget("nested")).get("log")  # a method of a nested proxy
    assert isinstance(log, AsyncProxy)
    await log.append(5)
    assert await d.aget("nested") is not None and (await d.avalue()) == {"a": 1, "nested": {"log": [5]}}
    assert await d.alen() == 2 and await d.acontains("a") and not await d.acontains("zz")
    await d.adel("a")
    with pytest.raises(KeyError):
        await d.aget("a")
    ns = await am.Namespace(x=1)
    assert await ns.x == 1  # an attribute, awaited
    assert (await am.stats()).objects >= 3
    root = await am.root
    await root.aset("d", d.sync)
    assert (await am.root).sync["d"] == {"nested": {"log": [5]}}


async def test_async_for_is_batched_and_complete(am: AsyncManager) -> None:
    lst = await am.list(range(1000))
    seen = [x async for x in lst]
    assert seen == list(range(1000))
    nested = await am.list([[1], [2]])
    inner = [x async for x in nested]
    assert all(isinstance(x, AsyncProxy) for x in inner)  # items that live in the manager
    await inner[0].append(9)
    assert nested.sync[0] == [1, 9]


async def test_async_with_holds_an_rlock_on_one_connection_across_tasks(am: AsyncManager) -> None:
    rlock, lock, d = await am.RLock(), await am.Lock(), await am.dict(n=0)

    async def bump() -> None:
        async with rlock:
            async with rlock:  # re-entrant: the same connection holds it
                n = await d.aget("n")
                await asyncio.sleep(0)  # let other tasks try to get in
                await d.aset("n", n + 1)
        async with lock:
            pass

    await asyncio.gather(*(bump() for _ in range(50)))  # more tasks than lanes
    assert await d.aget("n") == 50
    assert lock.sync.acquire(False)  # both were released
    lock.sync.release()
    async with rlock:
        pass  # free again for a new owner


@pytest.mark.slow
async def test_a_thousand_concurrent_awaits_on_one_loop(am: AsyncManager) -> None:
    counter = await am.dict(n=0)
    lock = await am.Lock()

    async def inc(i: int) -> int:
        async with lock:
            n = await counter.aget("n")
            await counter.aset("n", n + 1)
        return i

    results = await asyncio.gather(*(inc(i) for i in range(1000)))
    assert sorted(results) == list(range(1000)) and await counter.aget("n") == 1000


async def test_a_slow_call_does_not_block_the_loop(am: AsyncManager) -> None:
    slow = await am.new(Slow)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        kept = await slow.wait(0.5)
    finally:
        task.cancel()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > 10 and max(gaps) < 0.25, max(gaps)  # the loop kept running meanwhile
    assert await kept.aget("items") is not None


async def test_cancelling_a_call_is_prompt_and_leaks_nothing(am: AsyncManager) -> None:
    slow = await am.new(Slow)
    objects = (await am.stats()).objects
    task = asyncio.create_task(slow.wait(0.4))
    await until(lambda: slow.started, "the call to reach the manager")
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.2  # cancelled at once; the call ends on its own
    d = await am.dict()  # the pool goes on serving
    await d.aset("k", 1)

    async def settled() -> bool:
        gc.collect()  # the dropped result's proxy goes; its release is flushed with the next call
        await am.stats()
        return (await am.stats()).objects == objects + 1  # only d is new

    deadline = time.monotonic() + PROMPT
    while not await settled():
        assert time.monotonic() < deadline, "the cancelled call's result was never released"
        await asyncio.sleep(0.05)  # polling the manager's own count


async def test_a_get_cancelled_while_it_waits_takes_no_item_and_frees_its_lane(am: AsyncManager) -> None:
    # asyncio.wait_for(q.get(), timeout) in a consumer loop: each timeout left its lane blocked in
    # the manager's get for good, so that after `lanes` of them every call hung, and the next
    # item put went to an abandoned get and was lost.
    q = await am.Queue()
    # The manager's deque of waiting threads (a private name: through the proxy itself)
    sleepers = await asyncio.to_thread(getattr, q.sync.not_empty, "_waiters")
    for i in range(10):  # more than the 8 lanes
        task = asyncio.create_task(q.get())
        await until(lambda i=i: _count(sleepers, i + 1), "the get to wait in the manager")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await q.put("item")  # taken by an abandoned get, which puts it back for the next, ...
    assert await asyncio.wait_for(q.get(), PROMPT) == "item"
    assert await q.qsize() == 0


async def _count(sleepers: Any, n: int) -> bool:
    return await asyncio.to_thread(len, sleepers) == n


async def test_an_async_with_cancelled_while_it_acquires_takes_nothing(am: AsyncManager) -> None:
    sem = await am.Semaphore(0)
    sleepers = await asyncio.to_thread(getattr, sem.sync._cond, "_waiters")

    async def enter() -> None:
        async with sem:
            pytest.fail("entered a semaphore nobody released")

    task = asyncio.create_task(enter())
    await until(lambda: _count(sleepers, 1), "the acquire to wait in the manager")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sem.release()  # the abandoned acquire, woken, gives it back
    assert await sem.acquire(timeout=PROMPT)


async def test_aconnect_is_another_client(am: AsyncManager) -> None:
    d = await am.dict(a=1)
    await (await am.root).aset("shared", d.sync)
    async with await reflectmgr.aconnect(am.address, am.authkey) as conn:
        shared = await (await conn.root).aget("shared")
        await shared.aset("b", 2)
    assert await d.avalue() == {"a": 1, "b": 2}


async def test_a_closed_async_manager_refuses_calls() -> None:
    async with reflectmgr.AsyncManager(lanes=2) as m:
        d = await m.dict()
    with pytest.raises(RuntimeError, match="closed"):
        await d.aset("k", 1)


def test_lanes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lanes"):
        reflectmgr.AsyncManager(lanes=0)
