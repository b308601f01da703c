"""asyncio: await proxies without blocking the event loop.

    async with reflectmgr.AsyncManager() as m:
        d = await m.dict(a=1)
        await d.aset("b", [1])               # d["b"] = [1]
        inner = await d.aget("b")            # an AsyncProxy of the list in the manager
        await inner.append(2)                # a method call
        async for x in inner: ...            # fetched in batches
        async with await m.Lock(): ...       # acquired and released on the same connection
    conn = await reflectmgr.aconnect(address, authkey)

How: calls run on a pool of *lanes*, threads of this process that each hold their own connection
to the manager (a reflectmgr client gives every thread its own). A call takes an idle lane, runs
the blocking call there and gives the lane back; the loop only awaits. So up to ``lanes`` calls
(16 by default) are in flight at once and the rest wait their turn: 1 000 concurrent awaits on one
loop work, at most ``lanes`` at a time. ``async with`` keeps its lane until it exits, and the
task's calls inside the block use that lane, because an ``RLock`` or a ``Condition`` belongs to
the connection that acquired it.

Cancellation: the awaiting task is cancelled at once, and its lane's connection is closed
(_Lanes.call_on): the lane's call returns at once, raising, and the lane goes back to the pool.
The manager sees its client leave the call: a call that waits there (``Queue.get``, an
``acquire``, ``async with`` on a lock) is undone when it returns, as for a client that died
(_owner/waits.py), so ``asyncio.wait_for(q.get(), 1)`` loses no item. Another call runs to its
end in the manager (a request cannot be taken back) and its result is dropped (a proxy in it is
released like any other).

Not reflected: a remote object's own async protocol (``__aiter__``, ``__anext__``,
``__aenter__``, ``__aexit__``, ``__await__``). A coroutine belongs to an event loop, and the
manager runs no loop for its objects; ``async for``/``async with`` on an AsyncProxy use the
object's synchronous protocol (``__iter__``, ``__enter__``), run in a lane.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import TYPE_CHECKING, Any

from ._manager.lifecycle import Connection, Factories, Manager, connect
from ._proxy.proxy import is_proxy

if TYPE_CHECKING:
    from ._manager.client import Client

LANES = 16
BATCH = 64  # items fetched per lane hop by ``async for``

__all__ = ["AsyncConnection", "AsyncManager", "AsyncProxy", "aconnect"]

# The lane this task holds (inside ``async with``): its calls go there, not to the pool. And the
# task's open ``async with`` blocks, innermost last: (the lane it took, or None, and the token
# that restores ``_held``). Per task, since one lock proxy may be entered by many tasks at once.
_held: contextvars.ContextVar[_Lane | None] = contextvars.ContextVar("reflectmgr_lane", default=None)
_entered: contextvars.ContextVar[tuple[tuple[_Lane | None, Any], ...]] = contextvars.ContextVar(
    "reflectmgr_entered", default=()
)


class _Lane:
    """One thread, with its own connection to the manager, running one call at a time."""

    def __init__(self, name: str) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self.channel: Any = None  # the connection of the call it runs (see _Lanes.call_on)


class _Lanes:
    """The pool of lanes of one async manager or connection; ``client()``: the client whose
    proxies its calls use."""

    def __init__(self, count: int, client: Callable[[], Client]) -> None:
        if count < 1:
            raise ValueError("lanes must be at least 1")
        self._all = [_Lane(f"reflectmgr-lane-{i}") for i in range(count)]
        self._idle: asyncio.Queue[_Lane] | None = None
        self._closed = False
        self._client = client

    async def call_on(self, lane: _Lane, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on ``lane``, which the caller took and keeps if this returns. If it
        raises, the lane goes back to the pool; if the awaiting task is cancelled meanwhile, once
        the call has returned: its connection is closed now, so that the call returns at once
        (raising, dropped) and the manager sees the client leave it. A call that waits there
        (``Queue.get``, ``acquire``) is then undone when it returns: the item goes back, the lock
        is released (_owner/waits.py)."""
        client = self._client

        def on_lane() -> Any:
            lane.channel = client().own_channel()  # noted first, so that it can be closed
            return fn(*args)

        future = asyncio.get_running_loop().run_in_executor(lane.executor, on_lane)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                self.give(lane)
            else:
                if lane.channel is not None:
                    lane.channel.transport.close()  # safe from any thread: it wakes the lane's wait
                future.add_done_callback(lambda f: self._free(f, lane))
            raise
        except BaseException:
            self.give(lane)
            raise

    def _queue(self) -> asyncio.Queue[_Lane]:
        if self._idle is None:  # made on first use, in the loop that uses it
            self._idle = asyncio.Queue()
            for lane in self._all:
                self._idle.put_nowait(lane)
        return self._idle

    async def take(self) -> _Lane:
        if self._closed:
            raise RuntimeError("this async manager or connection is closed")
        return await self._queue().get()

    def give(self, lane: _Lane) -> None:
        self._queue().put_nowait(lane)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a lane (the task's own inside ``async with``), without blocking the loop."""
        loop = asyncio.get_running_loop()
        held = _held.get()
        if held is not None:
            return await loop.run_in_executor(held.executor, fn, *args)
        lane = await self.take()
        result = await self.call_on(lane, fn, *args)
        self.give(lane)
        return result

    def _free(self, future: asyncio.Future[Any], lane: _Lane) -> None:
        """An abandoned call has returned: drop its result (or error), free its lane."""
        if not future.cancelled():
            future.exception()  # retrieved, so asyncio does not report it as lost
        self.give(lane)

    def close(self) -> None:
        self._closed = True
        for lane in self._all:
            lane.executor.shutdown(wait=False, cancel_futures=True)


def _wrap(result: Any, lanes: _Lanes) -> Any:
    return AsyncProxy(result, lanes) if is_proxy(result) else result


class _Awaitable:
    """``obj.name``: awaited, the attribute's value; called, the method's result (both in a lane)."""

    __slots__ = ("_lanes", "_name", "_target")

    def __init__(self, target: Any, name: str, lanes: _Lanes) -> None:
        self._target, self._name, self._lanes = target, name, lanes

    def __await__(self) -> Generator[Any, None, Any]:
        return self._get().__await__()

    async def _get(self) -> Any:
        return _wrap(await self._lanes.run(getattr, self._target, self._name), self._lanes)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        target, name = self._target, self._name

        def call() -> Any:
            return getattr(target, name)(*args, **kwargs)

        return _wrap(await self._lanes.run(call), self._lanes)


class AsyncProxy:
    """The async face of a proxy: ``await p.method(...)``, ``await p.attr``, ``await p.aget(k)``,
    ``async for``, ``async with``. ``p.sync`` is the proxy itself, for synchronous use."""

    __slots__ = ("_rm_lanes", "sync")

    def __init__(self, proxy: Any, lanes: _Lanes) -> None:
        self.sync = proxy
        self._rm_lanes = lanes

    def __getattr__(self, name: str) -> _Awaitable:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Awaitable(self.sync, name, self._rm_lanes)

    def __repr__(self) -> str:
        return f"<AsyncProxy of {object.__repr__(self.sync)}>"

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return _wrap(await self._rm_lanes.run(fn, *args), self._rm_lanes)

    # -- items, length, membership, value ----------------------------------------------------
    async def aget(self, key: Any) -> Any:
        """``p[key]``"""
        return await self._run(lambda: self.sync[key])

    async def aset(self, key: Any, value: Any) -> None:
        """``p[key] = value``"""

        def setitem() -> None:
            self.sync[key] = value

        await self._rm_lanes.run(setitem)

    async def adel(self, key: Any) -> None:
        """``del p[key]``"""

        def delitem() -> None:
            del self.sync[key]

        await self._rm_lanes.run(delitem)

    async def alen(self) -> int:
        return int(await self._rm_lanes.run(len, self.sync))

    async def acontains(self, item: Any) -> bool:
        return bool(await self._rm_lanes.run(lambda: item in self.sync))

    async def avalue(self) -> Any:
        """A plain local deep copy (``reflectmgr.value``)."""
        from . import value

        return await self._rm_lanes.run(value, self.sync)

    # -- async for, async with -----------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        lanes = self._rm_lanes
        it = await lanes.run(iter, self.sync)
        while True:
            batch = await lanes.run(lambda: list(islice(it, BATCH)))
            if not batch:
                return
            for item in batch:
                yield _wrap(item, lanes)

    async def __aenter__(self) -> Any:
        held = _held.get()
        lane = await self._rm_lanes.take() if held is None else None
        enter = type(self.sync).__enter__
        if lane is None:
            assert held is not None
            entered = await asyncio.get_running_loop().run_in_executor(held.executor, enter, self.sync)
        else:
            entered = await self._rm_lanes.call_on(lane, enter, self.sync)  # kept for the block
        token = _held.set(lane) if lane is not None else None
        _entered.set((*_entered.get(), (lane, token)))
        return _wrap(entered, self._rm_lanes)

    async def __aexit__(self, *exc: Any) -> Any:
        entries = _entered.get()
        lane, token = entries[-1]
        _entered.set(entries[:-1])
        target = lane or _held.get()
        assert target is not None
        future = asyncio.get_running_loop().run_in_executor(
            target.executor, lambda: type(self.sync).__exit__(self.sync, *exc)
        )
        try:
            return await asyncio.shield(future)  # released even if this task is cancelled meanwhile
        finally:
            if lane is not None:
                _held.reset(token)
                future.add_done_callback(lambda _: self._rm_lanes.give(lane))


class _AsyncFactories:
    """``await m.dict()``, ``await m.new(cls)``, ``await m.Lock()``, ``await m.root``, ``await
    m.stats()``: every factory of a Manager or Connection, run in a lane."""

    _factories: Factories
    _lanes: _Lanes

    def __getattr__(self, name: str) -> _Awaitable:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Awaitable(self._factories, name, self._lanes)


class AsyncManager(_AsyncFactories):
    """``async with AsyncManager(...) as m``: a :class:`~reflectmgr.Manager` (same arguments), started
    and shut down without blocking the loop; ``lanes``: how many calls may be in flight at once."""

    def __init__(self, *args: Any, lanes: int = LANES, **kwargs: Any) -> None:
        self.manager = Manager(*args, **kwargs)
        self._factories = self.manager
        self._lanes = _Lanes(lanes, lambda: self.manager.client)

    async def __aenter__(self) -> AsyncManager:
        await asyncio.to_thread(self.manager.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._lanes.close()
        await asyncio.to_thread(self.manager.shutdown)

    @property
    def address(self) -> Any:
        return self.manager.address

    @property
    def authkey(self) -> bytes:
        return self.manager.authkey


class AsyncConnection(_AsyncFactories):
    """What :func:`aconnect` returns; ``await conn.close()`` or ``async with``."""

    def __init__(self, connection: Connection, lanes: int = LANES) -> None:
        self.connection = connection
        self._factories = connection
        self._lanes = _Lanes(lanes, lambda: connection.client)

    async def close(self) -> None:
        self._lanes.close()
        await asyncio.to_thread(self.connection.close)

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def aconnect(address: Any, authkey: bytes | None = None, *, lanes: int = LANES, **kwargs: Any) -> AsyncConnection:
    """:func:`reflectmgr.connect` without blocking the loop (same keyword arguments)."""
    connection = await asyncio.to_thread(connect, address, authkey, **kwargs)
    return AsyncConnection(connection, lanes)
