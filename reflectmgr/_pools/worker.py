"""What an executor's worker process runs: connect first, then run cloudpickled tasks.

Kept small and free of the manager machinery: a worker imports the client side only.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle

from .._manager.client import Client, get_client
from .._wire.codec import plain

_client: Client | None = None


def init_worker(
    address: Any, authkey: bytes, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
) -> None:
    """Executor initializer: connect to the manager before the first task, then the user's one."""
    global _client
    _client = get_client(address, authkey)
    if initializer is not None:
        initializer(*initargs)


def run_task(blob: bytes) -> Any:
    """Run one task shipped with cloudpickle; the result goes back through cloudpickle too."""
    fn, args, kwargs = pickle.loads(blob)
    result = fn(*args, **kwargs)
    if _client is not None and _client.cache.has_acquires:
        # Borrowed proxies that the task never used in a call: register them before the
        # caller's future completes (and its proxies, which keep the objects alive, may go).
        _client.flush()
    if plain(result):
        return result  # the executor's own pickling does it (proxies reduce themselves)
    return _ByCloudpickle(result)


class _ByCloudpickle:
    """Pickles its value with cloudpickle; unpickles as the value itself (no wrapper remains)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (cloudpickle.dumps(self.value, protocol=5),))
